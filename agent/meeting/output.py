"""What the agent sends: one audio output and an optional video output, shared by every connection.

Each output is a single source track; every peer connection gets its own relayed copy of it
(aiortc's MediaRelay), so all remote participants hear and see the same thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from pathlib import Path

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from agent.media.pcm import AUDIO_PTIME, AUDIO_TIME_BASE, SAMPLE_RATE, SAMPLES_PER_FRAME

_FRAME_BYTES = SAMPLES_PER_FRAME * 2  # 48 kHz mono s16
# A reader that comes back after a pause (no connection for a while) starts again from now,
# rather than catching up with a burst of frames.
_LATE_S = 0.1
VIDEO_TIME_BASE = fractions.Fraction(1, 90_000)


class AudioOutput(MediaStreamTrack):
    """The agent's voice: PCM pushed by the bot, paced at real time, silence when none is queued.

    `await play_pcm(...)` queues audio of any rate and channel count (converted to 48 kHz mono) and
    waits while more than `max_queued_seconds` are queued. `clear()` drops what is queued now
    (barge-in). Audio plays while at least one connection reads it; queued audio waits for one.
    """

    kind = "audio"

    def __init__(self, max_queued_seconds: float = 10.0) -> None:
        super().__init__()
        self._queue = bytearray()
        self._max_bytes = max(5 * _FRAME_BYTES, int(max_queued_seconds * SAMPLE_RATE) * 2)
        self._room = asyncio.Event()
        self._data = asyncio.Event()  # set whenever audio is queued
        self._starved = True  # the last frame sent was silence
        self._empty = asyncio.Event()
        self._empty.set()
        self._resamplers: dict[tuple[int, int], av.AudioResampler] = {}
        self._next_at: float | None = None  # monotonic time the next frame is due
        self._pts = 0
        self.played_seconds = 0.0  # audio (not silence) sent so far
        self.cleared_seconds = 0.0  # audio dropped by clear()

    @property
    def queued_seconds(self) -> float:
        return len(self._queue) / 2 / SAMPLE_RATE

    async def play_pcm(self, pcm: bytes, sample_rate: int, channels: int = 1) -> None:
        """Queue 16-bit signed PCM (channels interleaved) to be heard by everyone."""
        if sample_rate <= 0 or channels not in (1, 2):
            raise ValueError("sample_rate must be positive and channels 1 or 2")
        if len(pcm) % (2 * channels):
            raise ValueError("pcm must hold whole 16-bit samples for every channel")
        samples = len(pcm) // (2 * channels)
        if samples == 0:
            return
        frame = av.AudioFrame(
            format="s16", layout="mono" if channels == 1 else "stereo", samples=samples
        )
        frame.planes[0].update(pcm)
        frame.sample_rate = sample_rate
        key = (sample_rate, channels)
        resampler = self._resamplers.get(key)
        if resampler is None:
            resampler = self._resamplers[key] = av.AudioResampler(
                format="s16", layout="mono", rate=SAMPLE_RATE
            )
        for out in resampler.resample(frame):
            await self._push(bytes(out.planes[0])[: out.samples * 2])

    async def play_file(self, path: str | Path) -> None:
        """Queue the audio of a file (WAV, MP3, Opus, ...: whatever FFmpeg reads)."""
        with av.open(str(path)) as container:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for decoded in container.decode(audio=0):
                for out in resampler.resample(decoded):
                    await self._push(bytes(out.planes[0])[: out.samples * 2])
            for out in resampler.resample(None):
                await self._push(bytes(out.planes[0])[: out.samples * 2])

    async def _push(self, pcm: bytes) -> None:
        step = 5 * _FRAME_BYTES  # 100 ms at a time, so that a long push waits for its room
        for start in range(0, len(pcm), step):
            piece = pcm[start : start + step]
            while len(self._queue) + len(piece) > self._max_bytes:
                self._room.clear()
                await self._room.wait()
            self._queue += piece
            self._empty.clear()
            self._data.set()

    def clear(self) -> float:
        """Drop everything queued (barge-in); returns how many seconds were dropped."""
        dropped = self.queued_seconds
        self._queue.clear()
        self.cleared_seconds += dropped
        self._room.set()
        self._empty.set()
        return dropped

    async def wait_played(self) -> None:
        """Return once everything queued so far has been sent (or cleared)."""
        await self._empty.wait()

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms frame, when it is due.

        Queued audio goes out one frame every 20 ms. When the output is starved (nothing, or less
        than a frame, queued: the bot is between utterances, or its audio arrives just late), it
        waits for the next frame's audio until that frame is due and sends it the moment it is
        complete, starting the 20 ms schedule again from there; only if none has come by then
        does silence go out. So a frame that arrives just after its slot is not held back a
        whole frame, and a late producer (an echo of network audio) never adds a frame of delay
        for good. The tail of an utterance (less than a frame) is sent padded once nothing has
        followed it for a frame's time.
        """
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._next_at is None or now - self._next_at > _LATE_S:
            self._next_at = now
        if len(self._queue) >= _FRAME_BYTES and not self._starved:
            if self._next_at > now:
                await asyncio.sleep(self._next_at - now)
        else:
            deadline = self._next_at + (AUDIO_PTIME if self._queue else 0.0)
            while len(self._queue) < _FRAME_BYTES and (wait := deadline - time.monotonic()) > 0:
                self._data.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._data.wait()
            if len(self._queue) >= _FRAME_BYTES:
                self._next_at = min(self._next_at, time.monotonic())  # sent now: schedule from here
        self._next_at += AUDIO_PTIME
        chunk = bytes(self._queue[:_FRAME_BYTES])
        del self._queue[:_FRAME_BYTES]
        self._starved = not chunk
        if chunk:
            self.played_seconds += len(chunk) / 2 / SAMPLE_RATE
            self._room.set()
            if not self._queue:
                self._empty.set()
        frame = av.AudioFrame(format="s16", layout="mono", samples=SAMPLES_PER_FRAME)
        frame.planes[0].update(chunk.ljust(_FRAME_BYTES, b"\0"))
        frame.pts = self._pts
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = AUDIO_TIME_BASE
        self._pts += SAMPLES_PER_FRAME
        return frame


class VideoOutput(MediaStreamTrack):
    """The agent's camera: the last frame pushed (or of the file playing), repeated at `fps`;
    black until the first one."""

    kind = "video"

    def __init__(self, width: int = 640, height: int = 360, fps: int = 15) -> None:
        super().__init__()
        self.fps = fps
        self._frame = av.VideoFrame(width, height, "yuv420p")
        for plane, value in zip(self._frame.planes, (16, 128, 128), strict=True):
            plane.update(bytes([value]) * plane.buffer_size)  # black
        self._next_at: float | None = None
        self._pts = 0
        self._file_task: asyncio.Task[None] | None = None

    def push_frame(self, frame: av.VideoFrame) -> None:
        """Show `frame` from the next frame interval on, until another one is pushed."""
        self._frame = frame

    async def play_file(self, path: str | Path, *, loop: bool = False) -> None:
        """Show a video file at its own frame rate (looping if asked); returns at its end."""
        while True:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                started = time.monotonic()
                for frame in container.decode(stream):
                    if frame.pts is not None and frame.time_base is not None:
                        due = started + float(frame.pts * frame.time_base)
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                    self._frame = frame
            if not loop:
                return

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        interval = 1 / self.fps
        if self._next_at is None or now - self._next_at > _LATE_S:
            self._next_at = now
        elif self._next_at > now:
            await asyncio.sleep(self._next_at - now)
        self._next_at += interval
        frame = self._frame.reformat(format="yuv420p")
        frame.pts = self._pts
        frame.time_base = VIDEO_TIME_BASE
        self._pts += int(90_000 * interval)
        return frame
