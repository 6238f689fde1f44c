"""Sends the RTP of many senders that play the same encoded loop from one timer callback.

aiortc runs a task per sender: each 20 ms frame resumes it, then awaits the track, the packetizer
and a chain of four coroutines down to the socket (sender -> DTLS transport -> ICE transport ->
aioice connection -> protocol). With a hundred pre-encoded senders that is 5,000 task wake-ups
and 25,000 coroutine steps a second for what is, per packet, a header, an SRTP protect and one
`sendto`. A `PacketPump` does exactly that, for every sender of its loop, in one callback per
frame time: the same bytes on the wire as aiortc's sender (header, extensions, SRTP), with the
sender's counters (getStats, RTCP sender reports) and the DTLS transport's kept up to date.

A sender whose track has a `pump` (a `PreencodedAudioTrack`) when it starts hands its RTP to
`PacketPump.send_for` and waits there for the stream's end; any other sender runs aiortc's own
loop. That hand-over, and every internal of aiortc and aioice the pump touches, are the patch
`packet_pump` (`agent.patches.sender`): without it, aiortc's loop sends the pre-encoded packets.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from typing import Any

from aiortc import clock
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import HeaderExtensions
from aiortc.utils import random32, uint16_add, uint32_add

from agent.patches.sender import SenderLink

log = logging.getLogger(__name__)

# After a stall longer than this many frames, the frames missed are dropped, not sent in a burst:
# a real-time sender does not play stale audio (the RTP timestamps still jump by the time lost).
MAX_CATCH_UP_FRAMES = 5

_RTP_HEADER = struct.Struct("!BBHLL")
_ExtKey = tuple[int | None, int | None, str | None]
_EXTENSION_HEADER = struct.Struct("!HH")


def aligned_origin(loop: asyncio.AbstractEventLoop, cycle_s: float) -> float:
    """The event loop's time at which the current `cycle_s`-long cycle of Unix time began."""
    wall, mono = time.time(), loop.time()
    return mono - (wall - math.floor(wall / cycle_s) * cycle_s)


class PacketPump:
    """One timer for every stream of one encoded loop: each frame time sends every stream's packet.

    `payloads` is the loop (one payload per frame); `frame_samples` the RTP timestamp step. By
    default each stream plays the loop from its first packet when it joins. With
    `aligned_cycle_s`, frame times fall on Unix time instead: the pump's first frame time is the
    start of the current `aligned_cycle_s`-long cycle of Unix time, and every stream sends the
    loop's packet for the frame time (packet k % len at frame time k), whenever it joined, so that
    what the loop holds at a given moment (agent.media.marks' latency marks) leaves at that moment.
    """

    def __init__(
        self,
        payloads: list[bytes],
        period: float,
        frame_samples: int,
        *,
        aligned_cycle_s: float | None = None,
    ) -> None:
        self.payloads = payloads
        self.period = period
        self.frame_samples = frame_samples
        self.aligned_cycle_s = aligned_cycle_s
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

    async def send_for(self, link: SenderLink, codec: RTCRtpCodecParameters) -> None:
        """Send a sender's RTP from this pump until its stream ends (`agent.patches.sender`).

        After replaceTrack() the sender's new track is encoded by aiortc and sent from here.
        """
        stream = _Stream(self, link, codec)
        self._add(stream)
        try:
            if await stream.ended:
                await stream.play_replacement(codec)
        finally:
            stream.end()

    def _add(self, stream: _Stream) -> None:
        loop = asyncio.get_running_loop()
        if self._origin is None:
            cycle_s = self.aligned_cycle_s
            self._origin = loop.time() if cycle_s is None else aligned_origin(loop, cycle_s)
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

    def __init__(self, pump: PacketPump, link: SenderLink, codec: RTCRtpCodecParameters):
        self.pump = pump
        self.link = link
        self.track: Any = link.track
        assert codec.payloadType is not None  # a negotiated codec has one
        self.payload_type: int = codec.payloadType
        self.sequence_number = random_sequence_number()
        self.timestamp_origin = random32()
        self.first_tick: int | None = None
        self.next_tick = 0
        # True: the track was replaced (see play_replacement); False: the stream is over
        self.ended: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._ext_map = link.extensions_map
        self._mid = link.mid
        # what the packed extensions depend on, besides the frame time's abs-send-time
        self._ext_key = (*link.extension_ids, self._mid)

    def end(self, *, hand_over: bool = False) -> None:
        self.pump._discard(self)
        if not self.ended.done():
            self.ended.set_result(hand_over)

    def send_due(self, tick: int, ntp: int, extensions: dict[_ExtKey, bytes]) -> None:
        """Send this stream's packets for every frame time up to `tick` (at most a few)."""
        track = self.link.track
        if track is not self.track:
            self.end(hand_over=True)  # replaceTrack(): play_replacement() sends what it is now
            return
        if track.readyState != "live":
            raise ConnectionError("track ended")  # aiortc's loop ends on MediaStreamError
        if self.first_tick is None:
            # aligned: frame time k is frame k of the loop; otherwise the loop starts now
            self.first_tick = 0 if self.pump.aligned_cycle_s is not None else tick
            self.next_tick = tick
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
        timestamp = uint32_add(self.timestamp_origin, timestamp)
        header = _RTP_HEADER.pack(
            0x80 | (0x10 if ext else 0),  # version 2, extension bit
            (0x80 if marker else 0) | self.payload_type,
            self.sequence_number,
            timestamp,
            self.link.ssrc,
        )
        self.link.send(
            header + ext + payload, payload_size=len(payload), timestamp=timestamp, ntp=ntp
        )
        self.sequence_number = uint16_add(self.sequence_number, 1)

    async def play_replacement(self, codec: RTCRtpCodecParameters) -> None:
        """After replaceTrack(): whatever track the sender has now, encoded by aiortc, sent here.

        aiortc's own loop cannot take over: it starts from a new random sequence number, and SRTP
        refuses one far behind the last sent with the same key. Ends as aiortc's loop does.
        """
        link = self.link
        while True:
            if link.track is None:
                await asyncio.sleep(0.02)  # as aiortc's loop waits for a track
                continue
            frame = await link.next_encoded_frame(codec)
            if frame is None:
                continue
            ntp = clock.current_ntp_time()
            for i, payload in enumerate(frame.payloads):
                ext = self._extensions(ntp, frame.audio_level)
                last = i == len(frame.payloads) - 1
                self.send_packet(payload, frame.timestamp, ntp, ext, marker=last)
