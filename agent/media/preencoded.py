"""Audio encoded once, sent by any number of peer connections without encoding again.

aiortc's sender encodes every frame of every connection (in a thread pool hop per frame). A bot
that plays the same tone to fifty people would run fifty Opus encoders for identical output. A
`PreencodedAudio` encodes its loop once; each `track()` replays those Opus packets, paced in real
time, and aiortc's sender only packetizes them.

Senders do not even pull from these tracks: the tracks of one `PreencodedAudio` share one
`PacketPump` (agent/media/packet_pump.py), which sends the packets of all their senders from one
timer callback per frame time, where aiortc ran a task per sender and a chain of coroutines per
packet. Whatever pulls from a track itself (`recv()`) is paced by a shared 20 ms `FrameClock`
instead: one timer per frame time for all such readers.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import weakref
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.packet import Packet

from agent.media.packet_pump import PacketPump, aligned_origin
from agent.media.pcm import (
    AUDIO_TIME_BASE,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    silence_pcm,
    tone_pcm,
)

OPUS_BITRATE = 32_000


def encode_opus_loop(pcm: np.ndarray[Any, np.dtype[np.int16]]) -> list[bytes]:
    """Opus packets (20 ms each) of a mono s16 48 kHz loop, encoded as stereo like aiortc does."""
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = OPUS_BITRATE
    codec.sample_rate = SAMPLE_RATE
    codec.layout = "stereo"
    codec.format = "s16"
    codec.time_base = fractions.Fraction(1, SAMPLE_RATE)
    stereo = np.repeat(pcm, 2)
    payloads: list[bytes] = []
    for start in range(0, len(pcm), SAMPLES_PER_FRAME):
        chunk = stereo[2 * start : 2 * (start + SAMPLES_PER_FRAME)]
        frame = av.AudioFrame(format="s16", layout="stereo", samples=SAMPLES_PER_FRAME)
        frame.planes[0].update(chunk.tobytes())
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start
        frame.time_base = AUDIO_TIME_BASE
        payloads.extend(bytes(p) for p in codec.encode(frame))
    payloads.extend(bytes(p) for p in codec.encode(None))
    # The encoder's look-ahead adds a packet at the end; the loop is exactly len(pcm) long.
    return payloads[: len(pcm) // SAMPLES_PER_FRAME]


class PreencodedAudio:
    """`tone` or `silence`, encoded once; `track()` gives a new sender-ready track each call."""

    def __init__(self, spec: str) -> None:
        if spec == "tone":
            pcm = tone_pcm()
        elif spec == "silence":
            pcm = silence_pcm()
        else:
            raise ValueError(f"pre-encoded audio is tone or silence, not {spec!r}")
        self.spec = spec
        self.payloads = encode_opus_loop(pcm)
        self.clock = FrameClock(SAMPLES_PER_FRAME / SAMPLE_RATE)
        self.pump = PacketPump(self.payloads, self.clock.period, SAMPLES_PER_FRAME)
        self._tracks: weakref.WeakSet[PreencodedAudioTrack] = weakref.WeakSet()

    def track(self) -> MediaStreamTrack:
        track = PreencodedAudioTrack(self.payloads, self.clock, self.pump)
        self._tracks.add(track)
        return track

    def stop(self) -> None:
        """End every track handed out (their senders then stop)."""
        for track in list(self._tracks):
            track.stop()


class FrameClock:
    """A grid of frame times (every `period` seconds) that any number of tracks wait on together.

    A tick's wake-up is scheduled only while some track waits for it; the tracks waiting for the
    same tick all resume in the same turn of the event loop.
    """

    def __init__(self, period: float, *, aligned_cycle_s: float | None = None) -> None:
        self.period = period
        # Ticks on Unix time, tick 0 at the start of a cycle of this length (PacketPump's)
        self.aligned_cycle_s = aligned_cycle_s
        self._origin: float | None = None
        self._waiting: dict[int, asyncio.Event] = {}

    def next_tick(self) -> int:
        """The first tick at or after now."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._origin is None:
            cycle_s = self.aligned_cycle_s
            self._origin = now if cycle_s is None else aligned_origin(loop, cycle_s)
        return math.ceil((now - self._origin) / self.period)

    async def wait(self, tick: int) -> None:
        """Until the time of `tick` (at once if it has passed: a late sender catches up)."""
        loop = asyncio.get_running_loop()
        assert self._origin is not None, "next_tick() first"
        due = self._origin + tick * self.period
        if due <= loop.time():
            return
        event = self._waiting.get(tick)
        if event is None:
            event = self._waiting[tick] = asyncio.Event()
            loop.call_at(due, self._release, tick)
        await event.wait()  # an Event, not a shared future: one waiter's cancellation is its own

    def _release(self, tick: int) -> None:
        self._waiting.pop(tick).set()


class PreencodedAudioTrack(MediaStreamTrack):
    """Sent by `pump`; or yields `av.Packet`s (Opus, 20 ms) on the shared frame clock."""

    kind = "audio"

    def __init__(self, payloads: list[bytes], clock: FrameClock, pump: PacketPump) -> None:
        super().__init__()
        self.pump = pump  # an aiortc sender of this track leaves the sending to the pump
        self._payloads = payloads
        self._clock = clock
        self._tick: int | None = None
        self._pts = 0

    async def recv(self) -> Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        aligned = self._clock.aligned_cycle_s is not None
        if self._tick is None:
            self._tick = self._clock.next_tick()  # the first frame goes at once ...
            if aligned:
                await self._clock.wait(self._tick)  # ... unless it leaves on the Unix grid
        else:
            self._tick += 1
            self._pts += SAMPLES_PER_FRAME
            await self._clock.wait(self._tick)
        # aligned: the loop's frame for the frame time (as PacketPump sends it)
        frame = self._tick if aligned else self._pts // SAMPLES_PER_FRAME
        packet = Packet(self._payloads[frame % len(self._payloads)])
        packet.pts = self._pts
        packet.time_base = AUDIO_TIME_BASE
        return packet
