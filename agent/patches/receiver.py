"""aiortc's RTCRtpReceiver and aioice's Connection: receivers that count RTP without decoding it.

aiortc starts a decoder thread per received track, queues every reassembled frame to it, and the
thread hands each decoded frame back to the event loop. With a hundred tracks that is thousands
of thread wake-ups a second, each taking the GIL from the event loop; and a participant that
never reads a track still pays for decoding it (and the decoded frames pile up in the track).
Many participants only need to know that media arrived, which getStats counts before any of that.

Patch `counting_receivers`: `count_only(pc)` makes the receivers `pc` creates from then on count
packets and stop there (their decoder queue drops frames, their jitter buffer never completes
one): no frame reassembly (so no keyframe requests either), no decoder thread; their tracks yield
nothing and end when the receiver stops, as aiortc's do. RTCP (receiver reports, so RTT and loss)
flows as usual. Other connections are untouched. It is made per connection through the instance
attribute that aiortc's name-mangled `self.__createTransceiver(...)` finds first, and aiortc's
receiver module gets a `threading` whose `Thread` is a stand-in for counting receivers only.

Patch `counting_path`: once such a connection is up, its audio RTP does not even queue. aioice
hands every datagram to a queue that the DTLS transport's task reads, one task wake-up and a chain
of coroutines per packet; here the connection's `data_received` takes the SRTP packets of counting
audio receivers straight from the socket's callback: unprotect, then the receiver's statistics
(what getStats and the receiver reports read), nothing else. Everything else (DTLS, RTCP, STUN,
packets of an SSRC not yet routed, video with its NACK and bandwidth feedback) still takes
aiortc's path.
"""

from __future__ import annotations

import asyncio
import datetime
import struct
import threading
import types
from collections.abc import Callable
from typing import Any

import aioice.ice
import aiortc.rtcrtpreceiver as _receiver
import pylibsrtp
from aiortc import RTCPeerConnection, RTCRtpTransceiver, clock
from aiortc.codecs import is_rtx
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtp import RtpPacket

from agent.patches._patch import Patch


class _DroppingQueue:
    """Stands in for a receiver's decoder queue: frames are dropped, None ends the track."""

    def __init__(self) -> None:
        self.end_track: Callable[[], None] = lambda: None

    def put(self, item: Any) -> None:
        if item is None:  # the receiver stops its decoder: end the track, as aiortc's worker does
            self.end_track()


class _NoJitterBuffer:
    """Stands in for a counting receiver's jitter buffer: no frame is ever reassembled."""

    def add(self, packet: Any) -> tuple[bool, None]:
        return False, None  # no picture loss to report, no frame to decode


class _NoDecoderThread:
    """Stands in for a counting receiver's decoder thread; starting it links queue and track."""

    def __init__(self, decoder_queue: _DroppingQueue, track_queue: asyncio.Queue[Any]) -> None:
        self._decoder_queue = decoder_queue
        self._track_queue = track_queue

    def start(self) -> None:
        # the receiver stops its decoder from the event loop's thread
        self._decoder_queue.end_track = lambda: self._track_queue.put_nowait(None)

    def join(self, timeout: float | None = None) -> None:
        pass


def _decoder_thread(target: Any, name: str, args: tuple[Any, ...]) -> Any:
    """aiortc's receivers create their decoder thread here: a real one unless counting."""
    _loop, decoder_queue, track_queue, _error = args
    if isinstance(decoder_queue, _DroppingQueue):
        return _NoDecoderThread(decoder_queue, track_queue)
    return threading.Thread(target=target, name=name, args=args)


def count_only(pc: RTCPeerConnection) -> bool:
    """Receivers `pc` creates from now on count RTP (in getStats) but neither decode nor queue.

    False when nothing was changed (`counting_receivers` is not installed): the receivers decode,
    as aiortc's do.
    """
    if not COUNTING_RECEIVERS.installed:
        return False
    create = pc._RTCPeerConnection__createTransceiver  # type: ignore[attr-defined]

    def create_counting(*args: Any, **kwargs: Any) -> RTCRtpTransceiver:
        transceiver: RTCRtpTransceiver = create(*args, **kwargs)
        # in time: aiortc starts a receiver only once ICE and DTLS are up
        receiver: Any = transceiver.receiver
        receiver._RTCRtpReceiver__decoder_queue = _DroppingQueue()
        # nothing will decode: reassembling frames (and asking for keyframes) is wasted work
        receiver._RTCRtpReceiver__jitter_buffer = _NoJitterBuffer()
        return transceiver

    # the name-mangled `self.__createTransceiver(...)` finds the instance attribute first
    pc._RTCPeerConnection__createTransceiver = create_counting  # type: ignore[attr-defined]

    @pc.on("connectionstatechange")
    def _on_state() -> None:
        if pc.connectionState == "connected" and COUNTING_PATH.installed:
            for transceiver in pc.getTransceivers():
                _CountingPath.install(transceiver.receiver.transport)

    return True


_saved: dict[str, Any] = {}


def _apply_counting_receivers() -> str | None:
    if getattr(_receiver, "threading", None) is not threading:
        return "aiortc.rtcrtpreceiver no longer uses the threading module"
    if not hasattr(RTCPeerConnection, "_RTCPeerConnection__createTransceiver"):
        return "RTCPeerConnection has no __createTransceiver"
    # a receiver that is never started: are its decoder queue and jitter buffer where we expect?
    probe = _receiver.RTCRtpReceiver("audio", types.SimpleNamespace(state="new"))  # type: ignore[arg-type]
    if not all(
        hasattr(probe, f"_RTCRtpReceiver__{name}")
        for name in ("decoder_queue", "jitter_buffer", "decoder_thread")
    ):
        return "RTCRtpReceiver keeps its decoder queue or jitter buffer elsewhere"
    _saved["threading"] = threading
    # aiortc's receiver module looks `threading.Thread` up when a receiver starts; `threading.Event`
    # (its only other use of the module) stays the real one.
    _receiver.threading = types.SimpleNamespace(  # type: ignore[attr-defined,assignment]
        Thread=_decoder_thread, Event=threading.Event
    )
    return None


def _restore_counting_receivers() -> None:
    _receiver.threading = _saved.pop("threading")  # type: ignore[attr-defined]


COUNTING_RECEIVERS = Patch(
    name="counting_receivers",
    replaces=(
        "aiortc.rtcrtpreceiver.threading",
        "aiortc.RTCPeerConnection.__createTransceiver (per counting connection)",
        "aiortc.RTCRtpReceiver.__decoder_queue, __jitter_buffer (per counting receiver)",
    ),
    why=(
        "A decoder thread per received track, woken (and taking the GIL from the event loop) "
        "for every frame, even when nobody reads the track: participants that only count what "
        "they receive (the bot's default `--receive count`, load-test peers) pay for decoding it."
    ),
    fallback=(
        "receivers decode as aiortc's do; the agent reads and discards the frames of tracks "
        "nobody consumes, so that they do not pile up."
    ),
    libraries=("aiortc",),
    apply=_apply_counting_receivers,
    restore=_restore_counting_receivers,
)


_RTP_SEQ_TS_SSRC = struct.Struct("!HLL")


class _CountingPath:
    """Counts the SRTP packets of counting audio receivers as aioice hands them over.

    Installed on a connected DTLS transport's ICE connection (in place of its `data_received`,
    which queues the datagram for the transport's reader task).
    """

    @classmethod
    def install(cls, dtls: RTCDtlsTransport) -> None:
        connection: Any = getattr(dtls.transport, "_connection", None)
        if connection is None or isinstance(connection.__dict__.get("data_received"), cls):
            return
        try:  # the internals used below: if aiortc moved them, its own path stays
            dtls._RTCDtlsTransport__rx_packets  # type: ignore[attr-defined]  # noqa: B018
            dtls._rtp_router.ssrc_table  # noqa: B018
        except AttributeError:
            return
        connection.data_received = cls(dtls, connection.data_received)

    def __init__(self, dtls: RTCDtlsTransport, queue_datagram: Callable[[bytes, int], None]):
        self._dtls = dtls
        self._queue_datagram = queue_datagram
        self._ssrc_table: dict[int, Any] = dtls._rtp_router.ssrc_table
        self._counting: dict[int, bool] = {}  # id(receiver) -> whether this path counts it

    def __call__(self, data: bytes, component: int) -> None:
        # RTP (version 2), not RTCP; the header (so the SSRC) is in the clear in SRTP
        if len(data) >= 12 and 127 < data[0] < 192 and not 192 <= data[1] <= 208:
            receiver = self._ssrc_table.get(int.from_bytes(data[8:12], "big"))
            if receiver is not None and self._counts(receiver, data[1] & 0x7F):
                dtls: Any = self._dtls
                srtp = dtls._rx_srtp
                if srtp is not None and dtls._state == DtlsState.CONNECTED:
                    dtls._RTCDtlsTransport__rx_bytes += len(data)
                    dtls._RTCDtlsTransport__rx_packets += 1
                    try:
                        plain = srtp.unprotect(data)
                    except pylibsrtp.Error:
                        return  # dropped, as aiortc drops it
                    _count(receiver, plain)
                    return
        self._queue_datagram(data, component)

    def _counts(self, receiver: Any, payload_type: int) -> bool:
        counting = self._counting.get(id(receiver))
        if counting is None:
            # a counting receiver (see count_only) with no NACK or bandwidth feedback to give
            try:
                counting = (
                    isinstance(receiver._RTCRtpReceiver__jitter_buffer, _NoJitterBuffer)
                    and receiver._RTCRtpReceiver__nack_generator is None
                    and receiver._RTCRtpReceiver__remote_bitrate_estimator is None
                    and isinstance(receiver._RTCRtpReceiver__codecs, dict)
                    and isinstance(receiver._RTCRtpReceiver__remote_streams, dict)
                    and isinstance(receiver._RTCRtpReceiver__active_ssrc, dict)
                )
            except AttributeError:  # another aiortc: its own path
                counting = False
            self._counting[id(receiver)] = counting
        if not counting:
            return False
        codec = receiver._RTCRtpReceiver__codecs.get(payload_type)
        return codec is not None and not is_rtx(codec)


def _count(receiver: Any, plain: bytes) -> None:
    """What aiortc's receiver does with a packet it will not decode: its statistics."""
    if not receiver._enabled:
        return
    sequence_number, timestamp, ssrc = _RTP_SEQ_TS_SSRC.unpack_from(plain, 2)
    payload_type = plain[1] & 0x7F
    receiver._RTCRtpReceiver__active_ssrc[ssrc] = _now()
    streams = receiver._RTCRtpReceiver__remote_streams
    stats = streams.get(ssrc)
    if stats is None:
        codec = receiver._RTCRtpReceiver__codecs[payload_type]
        stats = streams[ssrc] = _receiver.StreamStatistics(codec.clockRate)
    stats.add(
        RtpPacket(
            payload_type=payload_type,
            sequence_number=sequence_number,
            timestamp=timestamp,
            ssrc=ssrc,
        )
    )


_now_at: tuple[float, datetime.datetime] = (-1.0, datetime.datetime.now(datetime.UTC))


def _now() -> datetime.datetime:
    """aiortc's `clock.current_datetime()`, read once per turn of the event loop."""
    global _now_at
    loop_time = asyncio.get_running_loop().time()  # uvloop's is the turn's cached time
    if _now_at[0] != loop_time:
        _now_at = (loop_time, clock.current_datetime())
    return _now_at[1]


def _apply_counting_path() -> str | None:
    if not callable(getattr(aioice.ice.Connection, "data_received", None)):
        return "aioice.ice.Connection has no data_received"
    if not callable(getattr(_receiver, "StreamStatistics", None)):
        return "aiortc.rtcrtpreceiver has no StreamStatistics"
    return None  # per connection, once it is up (see count_only)


def _restore_counting_path() -> None:
    pass  # connections already given the path keep it until they close


COUNTING_PATH = Patch(
    name="counting_path",
    replaces=(
        "aioice.ice.Connection.data_received (per connected counting connection)",
        "aiortc.RTCDtlsTransport._rx_srtp, _rtp_router, __rx_bytes, __rx_packets",
        "aiortc.RTCRtpReceiver.__codecs, __active_ssrc, __remote_streams, __nack_generator, "
        "__remote_bitrate_estimator",
    ),
    why=(
        "Even a counting receiver's audio RTP went through aioice's queue, the DTLS transport's "
        "reader task and a chain of coroutines per packet, only to be counted."
    ),
    fallback="the packets take aiortc's receive path; counting receivers count them there.",
    libraries=("aiortc", "aioice", "pylibsrtp"),
    requires=("counting_receivers",),
    apply=_apply_counting_path,
    restore=_restore_counting_path,
)
