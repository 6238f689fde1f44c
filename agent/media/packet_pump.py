"""Sends the RTP of many senders that play the same encoded loop from one timer callback.

aiortc runs a task per sender: each 20 ms frame resumes it, then awaits the track, the packetizer
and a chain of four coroutines down to the socket (sender -> DTLS transport -> ICE transport ->
aioice connection -> protocol). With a hundred pre-encoded senders that is 5,000 task wake-ups
and 25,000 coroutine steps a second for what is, per packet, a header, an SRTP protect and one
`sendto`. A `PacketPump` does exactly that, for every sender of its loop, in one callback per
frame time: the same bytes on the wire as aiortc's sender (header, extensions, SRTP), with the
sender's counters (getStats, RTCP sender reports) and the DTLS transport's kept up to date.

`RTCRtpSender._run_rtp` is replaced, for senders whose track has a `pump` (a
`PreencodedAudioTrack`) when the sender starts, by a task that joins the pump and waits for the
stream's end; any other sender runs aiortc's own loop. The fast path reaches into aiortc and
aioice internals (checked when a sender starts: if they moved, aiortc's loop runs instead, with a
warning).
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from typing import Any

from aiortc import clock
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpsender import RTCRtpSender, random_sequence_number
from aiortc.rtp import HeaderExtensions, HeaderExtensionsMap
from aiortc.utils import random32, uint16_add, uint32_add

log = logging.getLogger(__name__)

# After a stall longer than this many frames, the frames missed are dropped, not sent in a burst:
# a real-time sender does not play stale audio (the RTP timestamps still jump by the time lost).
MAX_CATCH_UP_FRAMES = 5

_RTP_HEADER = struct.Struct("!BBHLL")
_ExtKey = tuple[int | None, int | None, str | None]
_EXTENSION_HEADER = struct.Struct("!HH")


class PacketPump:
    """One timer for every stream of one encoded loop: each frame time sends every stream's packet.

    `payloads` is the loop (one payload per frame); `frame_samples` the RTP timestamp step.
    """

    def __init__(self, payloads: list[bytes], period: float, frame_samples: int) -> None:
        self.payloads = payloads
        self.period = period
        self.frame_samples = frame_samples
        self._streams: dict[_Stream, None] = {}  # insertion-ordered set
        self._origin: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.ticks = 0  # timer callbacks run (observable in tests)

    @property
    def streams(self) -> int:
        return len(self._streams)

    def _tick_at(self, now: float) -> int:
        assert self._origin is not None
        return math.floor((now - self._origin) / self.period)

    def _add(self, stream: _Stream) -> None:
        loop = asyncio.get_running_loop()
        if self._origin is None:
            self._origin = loop.time()
        self._streams[stream] = None
        if self._timer is None:
            self._schedule(loop, self._tick_at(loop.time()))

    def _discard(self, stream: _Stream) -> None:
        self._streams.pop(stream, None)
        if not self._streams and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, loop: asyncio.AbstractEventLoop, after_tick: int) -> None:
        assert self._origin is not None
        self._timer = loop.call_at(self._origin + (after_tick + 1) * self.period, self._run)

    def _run(self) -> None:
        self._timer = None
        self.ticks += 1
        loop = asyncio.get_running_loop()
        tick = self._tick_at(loop.time())
        ntp = clock.current_ntp_time()  # one clock reading for every packet of this frame time
        extensions: dict[_ExtKey, bytes] = {}
        for stream in list(self._streams):
            try:
                stream.send_due(tick, ntp, extensions)
            except Exception as exc:  # this stream ends; the others go on
                if not isinstance(exc, ConnectionError):
                    log.warning("pumped RTP stream failed: %r", exc)
                stream.end()
        if self._streams:
            self._schedule(loop, tick)


class _Stream:
    """One sender's RTP state while the pump sends for it."""

    def __init__(self, pump: PacketPump, sender: RTCRtpSender, codec: RTCRtpCodecParameters):
        self.pump = pump
        self.sender = sender
        self.track: Any = sender.track
        assert codec.payloadType is not None  # a negotiated codec has one
        self.payload_type: int = codec.payloadType
        self.sequence_number = random_sequence_number()
        self.timestamp_origin = random32()
        self.first_tick: int | None = None
        self.next_tick = 0
        # True: the track was replaced (see play_replacement); False: the stream is over
        self.ended: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._ext_map: HeaderExtensionsMap = sender._RTCRtpSender__rtp_header_extensions_map  # type: ignore[attr-defined]
        self._mid: str | None = sender._RTCRtpSender__mid  # type: ignore[attr-defined]
        ids = self._ext_map._HeaderExtensionsMap__ids
        # what the packed extensions depend on, besides the frame time's abs-send-time
        self._ext_key = (ids.mid, ids.abs_send_time, self._mid)

    def end(self, *, hand_over: bool = False) -> None:
        self.pump._discard(self)
        if not self.ended.done():
            self.ended.set_result(hand_over)

    def send_due(self, tick: int, ntp: int, extensions: dict[_ExtKey, bytes]) -> None:
        """Send this stream's packets for every frame time up to `tick` (at most a few)."""
        track = self.sender._RTCRtpSender__track  # type: ignore[attr-defined]
        if track is not self.track:
            self.end(hand_over=True)  # replaceTrack(): play_replacement() sends what it is now
            return
        if track.readyState != "live":
            raise ConnectionError("track ended")  # aiortc's loop ends on MediaStreamError
        if self.first_tick is None:
            self.first_tick = self.next_tick = tick
        elif tick - self.next_tick >= MAX_CATCH_UP_FRAMES:
            self.next_tick = tick - MAX_CATCH_UP_FRAMES + 1
        while self.next_tick <= tick:
            self._send(self.next_tick - self.first_tick, ntp, extensions)
            self.next_tick += 1

    def _send(self, frame: int, ntp: int, extensions: dict[_ExtKey, bytes]) -> None:
        pump = self.pump
        # The extensions (mid, abs-send-time) are the same for every stream of a frame time that
        # negotiated the same ids and mid: packed once.
        ext = extensions.get(self._ext_key)
        if ext is None:
            ext = extensions[self._ext_key] = self._extensions(ntp)
        payload = pump.payloads[frame % len(pump.payloads)]
        self.send_packet(payload, frame * pump.frame_samples, ntp, ext)

    def _extensions(self, ntp: int, audio_level: int | None = None) -> bytes:
        values = HeaderExtensions(mid=self._mid, abs_send_time=(ntp >> 14) & 0x00FFFFFF)
        if audio_level is not None:
            values.audio_level = (False, -audio_level)
        profile, value = self._ext_map.set(values)
        return _EXTENSION_HEADER.pack(profile, len(value) >> 2) + value if value else b""

    def send_packet(
        self, payload: bytes, timestamp: int, ntp: int, ext: bytes, *, marker: bool = True
    ) -> None:
        """One RTP packet, as aiortc's loop would send it (`timestamp` from the stream's origin)."""
        sender = self.sender
        dtls: Any = sender.transport
        if dtls._state != DtlsState.CONNECTED:
            raise ConnectionError("DTLS transport not connected")
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            raise ConnectionError("ICE not connected")
        timestamp = uint32_add(self.timestamp_origin, timestamp)
        header = _RTP_HEADER.pack(
            0x80 | (0x10 if ext else 0),  # version 2, extension bit
            (0x80 if marker else 0) | self.payload_type,
            self.sequence_number,
            timestamp,
            sender._ssrc,
        )
        data = dtls._tx_srtp.protect(header + ext + payload)
        pair.protocol.transport.sendto(data, pair.remote_addr)
        # what aiortc's loop and the DTLS transport count: getStats and RTCP sender reports
        dtls._RTCDtlsTransport__tx_bytes += len(data)
        dtls._RTCDtlsTransport__tx_packets += 1
        sender._RTCRtpSender__ntp_timestamp = ntp  # type: ignore[attr-defined]
        sender._RTCRtpSender__rtp_timestamp = timestamp  # type: ignore[attr-defined]
        sender._RTCRtpSender__octet_count += len(payload)  # type: ignore[attr-defined]
        sender._RTCRtpSender__packet_count += 1  # type: ignore[attr-defined]
        self.sequence_number = uint16_add(self.sequence_number, 1)

    async def play_replacement(self, codec: RTCRtpCodecParameters) -> None:
        """After replaceTrack(): whatever track the sender has now, encoded by aiortc, sent here.

        aiortc's own loop cannot take over: it starts from a new random sequence number, and SRTP
        refuses one far behind the last sent with the same key. Ends as aiortc's loop does.
        """
        sender = self.sender
        while True:
            if sender.track is None:
                await asyncio.sleep(0.02)  # as aiortc's loop waits for a track
                continue
            frame = await sender._next_encoded_frame(codec)
            if frame is None:
                continue
            ntp = clock.current_ntp_time()
            for i, payload in enumerate(frame.payloads):
                ext = self._extensions(ntp, frame.audio_level)
                last = i == len(frame.payloads) - 1
                self.send_packet(payload, frame.timestamp, ntp, ext, marker=last)


def _internals_present(sender: RTCRtpSender) -> bool:
    """Whether the private attributes the pump uses are where this version of aiortc keeps them."""
    try:
        dtls: Any = sender.transport
        connection = dtls.transport._connection
        checks = (
            sender._RTCRtpSender__rtp_header_extensions_map._HeaderExtensionsMap__ids,  # type: ignore[attr-defined]
            sender._RTCRtpSender__mid,  # type: ignore[attr-defined]
            sender._RTCRtpSender__packet_count,  # type: ignore[attr-defined]
            sender._RTCRtpSender__octet_count,  # type: ignore[attr-defined]
            sender._RTCRtpSender__rtp_started,  # type: ignore[attr-defined]
            sender._RTCRtpSender__rtp_exited,  # type: ignore[attr-defined]
            dtls._tx_srtp,
            dtls._RTCDtlsTransport__tx_bytes,
            connection._nominated,
        )
    except AttributeError:
        return False
    return all(check is not None for check in checks)


_aiortc_run_rtp = RTCRtpSender._run_rtp
_warned = False


async def _run_rtp(self: RTCRtpSender, codec: RTCRtpCodecParameters) -> None:
    """aiortc's sender loop, or, for a pumped track, a place in its pump until the stream ends."""
    global _warned
    track = self.track
    pump = getattr(track, "pump", None)
    if not isinstance(pump, PacketPump):
        return await _aiortc_run_rtp(self, codec)
    if not _internals_present(self):
        if not _warned:
            _warned = True
            log.warning("aiortc's internals moved: pre-encoded media is sent by aiortc's loop")
        return await _aiortc_run_rtp(self, codec)
    self._RTCRtpSender__rtp_started.set()  # type: ignore[attr-defined]
    stream = _Stream(pump, self, codec)
    pump._add(stream)
    try:
        if await stream.ended:
            await stream.play_replacement(codec)
    except (asyncio.CancelledError, ConnectionError, MediaStreamError):
        pass  # RTCRtpSender.stop(), a closed transport, an ended track: as aiortc's loop
    except Exception as exc:  # aiortc's loop too ends quietly, so that stop() never hangs
        log.warning("RTP sender failed: %r", exc)
    finally:
        stream.end()
    if self._RTCRtpSender__track is not None:  # type: ignore[attr-defined]
        self._RTCRtpSender__track.stop()  # type: ignore[attr-defined]
        self._RTCRtpSender__track = None  # type: ignore[attr-defined]
    self._RTCRtpSender__rtp_exited.set()  # type: ignore[attr-defined]


RTCRtpSender._run_rtp = _run_rtp  # type: ignore[method-assign]
