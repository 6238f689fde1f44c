"""What the agent does with remote media: count it.

`ReceivedMedia.consume(track)` returns the coroutine that reads one remote track to its end; the
owner (a PeerSession) runs it in its own TaskGroup, so nothing here creates tasks. Events fire on
the first frame of each kind, so callers wait on them instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

Clock = Callable[[], float]


async def frames(track: MediaStreamTrack) -> AsyncIterator[Any]:
    """The frames of a remote track until it ends (aiortc ends a track with MediaStreamError)."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        yield frame


@dataclass
class ReceivedMedia:
    """Media received from one peer, over all its tracks (monotonic times)."""

    audio_frames: int = 0
    video_frames: int = 0
    audio_samples: int = 0
    first_audio_at: float | None = None
    first_video_at: float | None = None
    last_audio_at: float | None = None
    last_video_at: float | None = None
    video_width: int | None = None
    video_height: int | None = None
    first_audio: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    first_video: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    counters: list[FrameCounter] = field(default_factory=list, repr=False)

    def consume(self, track: MediaStreamTrack) -> Coroutine[Any, Any, None]:
        """The coroutine that counts `track` into this aggregate until the track ends."""
        return self.consume_frames(track.kind, frames(track))

    def consume_frames(self, kind: str, source: AsyncIterable[Any]) -> Coroutine[Any, Any, None]:
        """The coroutine that counts the frames of one `kind` track into this aggregate."""
        counter = FrameCounter(self)
        self.counters.append(counter)
        return counter.consume_frames(kind, source)

    def _count(self, kind: str, now: float, samples: int, size: tuple[int, int] | None) -> None:
        if kind == "audio":
            self.audio_frames += 1
            self.audio_samples += samples
            self.last_audio_at = now
            if self.first_audio_at is None:
                self.first_audio_at = now
                self.first_audio.set()
        elif kind == "video":
            self.video_frames += 1
            self.last_video_at = now
            if size is not None:
                self.video_width, self.video_height = size
            if self.first_video_at is None:
                self.first_video_at = now
                self.first_video.set()


class FrameCounter:
    """Counts the frames of one remote track, optionally adding them to a ReceivedMedia."""

    def __init__(
        self, received: ReceivedMedia | None = None, clock: Clock = time.monotonic
    ) -> None:
        self.received = received
        self._clock = clock
        self.kind: str | None = None
        self.frames = 0
        self.samples = 0  # audio only
        self.width: int | None = None  # video only, of the latest frame
        self.height: int | None = None
        self.first_frame_at: float | None = None
        self.last_frame_at: float | None = None
        self.ended = False

    async def consume(self, track: MediaStreamTrack) -> None:
        """Read `track` until it ends (MediaStreamError); returns normally then."""
        await self.consume_frames(track.kind, frames(track))

    async def consume_frames(self, kind: str, source: AsyncIterable[Any]) -> None:
        """Count the frames of one track of `kind` until they end."""
        self.kind = kind
        try:
            async for frame in source:
                self._count(frame)
        finally:
            self.ended = True

    def _count(self, frame: object) -> None:
        now = self._clock()
        self.frames += 1
        if self.first_frame_at is None:
            self.first_frame_at = now
        self.last_frame_at = now
        samples = 0
        size = None
        if isinstance(frame, AudioFrame):
            samples = frame.samples
            self.samples += samples
        elif isinstance(frame, VideoFrame):
            size = (frame.width, frame.height)
            self.width, self.height = size
        if self.received is not None and self.kind is not None:
            self.received._count(self.kind, now, samples, size)
