"""aiortc's RTCRtpSender: hand a sender's RTP to a pump that sends for many senders at once.

aiortc runs a task per sender: each 20 ms frame resumes it, then awaits the track, the packetizer
and a chain of four coroutines down to the socket (sender -> DTLS transport -> ICE transport ->
aioice connection -> protocol). With a hundred pre-encoded senders that is 5,000 task wake-ups
and 25,000 coroutine steps a second for what is, per packet, a header, an SRTP protect and one
`sendto`.

The patch `packet_pump` replaces `RTCRtpSender._run_rtp`. A sender whose track, when the sender
starts, has a `pump` (an `RtpPump`, such as `agent.media.packet_pump.PacketPump`) hands its RTP
to that pump through a `SenderLink`, and ends as aiortc's loop ends (the track stopped, the
sender's exit event set, whatever the pump raised); any other sender runs aiortc's own loop.

`SenderLink` is everything the pump reaches into: the sender's header-extension map and mid, its
counters (getStats, RTCP sender reports), the DTLS transport's SRTP session and counters, and the
nominated pair of the aioice connection under it. They are checked when each sender starts: if
this aiortc keeps them elsewhere, aiortc's loop sends instead (one warning).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol, runtime_checkable

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import HeaderExtensionsMap

from agent.patches._patch import Patch

log = logging.getLogger(__name__)


class SenderLink:
    """One aiortc sender as a pump sees it: where its packets go and what they must count."""

    __slots__ = ("extension_ids", "extensions_map", "mid", "sender", "ssrc")

    def __init__(self, sender: RTCRtpSender) -> None:
        self.sender = sender
        self.ssrc: int = sender._ssrc
        self.mid: str | None = sender._RTCRtpSender__mid  # type: ignore[attr-defined]
        self.extensions_map: HeaderExtensionsMap = sender._RTCRtpSender__rtp_header_extensions_map  # type: ignore[attr-defined]
        ids = self.extensions_map._HeaderExtensionsMap__ids
        # the negotiated ids of the extensions every packet carries
        self.extension_ids: tuple[int | None, int | None] = (ids.mid, ids.abs_send_time)

    @classmethod
    def of(cls, sender: RTCRtpSender) -> SenderLink | None:
        """The link to a started sender; None if this aiortc keeps its internals elsewhere."""
        try:
            dtls: Any = sender.transport
            checks = (
                sender._RTCRtpSender__rtp_header_extensions_map._HeaderExtensionsMap__ids,  # type: ignore[attr-defined]
                sender._RTCRtpSender__mid,  # type: ignore[attr-defined]
                sender._RTCRtpSender__packet_count,  # type: ignore[attr-defined]
                sender._RTCRtpSender__octet_count,  # type: ignore[attr-defined]
                sender._RTCRtpSender__rtp_started,  # type: ignore[attr-defined]
                sender._RTCRtpSender__rtp_exited,  # type: ignore[attr-defined]
                sender._ssrc,
                dtls._tx_srtp,
                dtls._RTCDtlsTransport__tx_bytes,
                dtls.transport._connection._nominated,
            )
        except AttributeError:
            return None
        if not all(check is not None for check in checks):
            return None
        return cls(sender)

    @property
    def track(self) -> MediaStreamTrack | None:
        """The sender's track now (replaceTrack() changes it)."""
        track: MediaStreamTrack | None = self.sender.track
        return track

    def send(self, packet: bytes, *, payload_size: int, timestamp: int, ntp: int) -> None:
        """Protect one RTP packet and send it; count it as aiortc's loop and transport would.

        ConnectionError when the DTLS transport or ICE is not (or no longer) connected.
        """
        sender: Any = self.sender
        dtls: Any = sender.transport
        if dtls._state != DtlsState.CONNECTED:
            raise ConnectionError("DTLS transport not connected")
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None:
            raise ConnectionError("ICE not connected")
        data = dtls._tx_srtp.protect(packet)
        pair.protocol.transport.sendto(data, pair.remote_addr)
        # what aiortc's loop and the DTLS transport count: getStats and RTCP sender reports
        dtls._RTCDtlsTransport__tx_bytes += len(data)
        dtls._RTCDtlsTransport__tx_packets += 1
        sender._RTCRtpSender__ntp_timestamp = ntp
        sender._RTCRtpSender__rtp_timestamp = timestamp
        sender._RTCRtpSender__octet_count += payload_size
        sender._RTCRtpSender__packet_count += 1

    async def next_encoded_frame(self, codec: RTCRtpCodecParameters) -> Any:
        """The sender's track's next frame, encoded by aiortc (None when it has none to send)."""
        return await self.sender._next_encoded_frame(codec)


@runtime_checkable
class RtpPump(Protocol):
    """What a track's `pump` is: it sends the RTP of senders that play the track."""

    async def send_for(self, link: SenderLink, codec: RTCRtpCodecParameters) -> None:
        """Send `link`'s RTP until its stream ends; ending with ConnectionError, MediaStreamError
        or cancellation is a normal end, as in aiortc's loop."""
        ...


_saved: dict[str, Any] = {}
_warned = False


async def _run_rtp(self: RTCRtpSender, codec: RTCRtpCodecParameters) -> None:
    """aiortc's sender loop, or, for a track with a pump, the pump until the stream ends."""
    global _warned
    aiortc_run_rtp = _saved["_run_rtp"]
    pump = getattr(self.track, "pump", None)
    if not isinstance(pump, RtpPump):
        return await aiortc_run_rtp(self, codec)  # type: ignore[no-any-return]
    link = SenderLink.of(self)
    if link is None:
        if not _warned:
            _warned = True
            log.warning("aiortc's internals moved: pre-encoded media is sent by aiortc's loop")
        return await aiortc_run_rtp(self, codec)  # type: ignore[no-any-return]
    self._RTCRtpSender__rtp_started.set()  # type: ignore[attr-defined]
    try:
        await pump.send_for(link, codec)
    except (asyncio.CancelledError, ConnectionError, MediaStreamError):
        pass  # RTCRtpSender.stop(), a closed transport, an ended track: as aiortc's loop
    except Exception as exc:  # aiortc's loop too ends quietly, so that stop() never hangs
        log.warning("RTP sender failed: %r", exc)
    # as aiortc's loop ends: the track stopped, the exit that stop() waits for
    if self._RTCRtpSender__track is not None:  # type: ignore[attr-defined]
        self._RTCRtpSender__track.stop()  # type: ignore[attr-defined]
        self._RTCRtpSender__track = None  # type: ignore[attr-defined]
    self._RTCRtpSender__rtp_exited.set()  # type: ignore[attr-defined]


def _apply() -> str | None:
    current = RTCRtpSender.__dict__.get("_run_rtp")
    if not asyncio.iscoroutinefunction(current):
        return "RTCRtpSender has no _run_rtp coroutine"
    if not callable(getattr(RTCRtpSender, "_next_encoded_frame", None)):
        return "RTCRtpSender has no _next_encoded_frame"
    _saved["_run_rtp"] = current
    RTCRtpSender._run_rtp = _run_rtp  # type: ignore[method-assign]
    return None


def _restore() -> None:
    RTCRtpSender._run_rtp = _saved.pop("_run_rtp")  # type: ignore[method-assign]


PACKET_PUMP = Patch(
    name="packet_pump",
    replaces=(
        "aiortc.rtcrtpsender.RTCRtpSender._run_rtp",
        "aiortc.RTCRtpSender.__mid, __rtp_header_extensions_map, __track, __rtp_started, "
        "__rtp_exited, __ntp_timestamp, __rtp_timestamp, __octet_count, __packet_count",
        "aiortc.rtp.HeaderExtensionsMap.__ids",
        "aiortc.RTCDtlsTransport._state, _tx_srtp, __tx_bytes, __tx_packets",
        "aioice.ice.Connection._nominated",
    ),
    why=(
        "A task per sender and a chain of five coroutines per 20 ms packet: with a hundred "
        "pre-encoded senders, 5,000 task wake-ups and 25,000 coroutine steps a second. One "
        "timer callback per frame time sends the same bytes for every sender of a loop."
    ),
    fallback=(
        "each sender runs aiortc's loop; pre-encoded tracks hand it their Opus packets, which it "
        "packetizes without encoding."
    ),
    libraries=("aiortc", "aioice"),
    apply=_apply,
    restore=_restore,
)
