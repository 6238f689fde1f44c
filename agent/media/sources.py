"""Local media the agent sends: a tone, silence, a test pattern, or a looped file.

A spec string picks the source (`tone`, `silence`, `testsrc`, `none`, or a file path). Each source
track is read once, by a MediaRelay, and every peer connection gets its own relayed track: one
track must never be read by two RTCRtpSenders, they would steal each other's frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np
from aiortc.contrib.media import MediaPlayer, MediaRelay
from aiortc.mediastreams import (
    AudioStreamTrack,
    MediaStreamError,
    MediaStreamTrack,
    VideoStreamTrack,
)
from av import AudioFrame, VideoFrame
from av.frame import Frame
from av.packet import Packet

from agent.media.pcm import (
    AUDIO_TIME_BASE,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    TONE_HZ,
    silence_pcm,
    tone_pcm,
)
from agent.media.preencoded import PreencodedAudio
from agent.patches.player import keep_only

log = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
TESTSRC_WIDTH = 320
TESTSRC_HEIGHT = 240
TESTSRC_FPS = 15
TESTSRC_FRAMES = 30  # pre-rendered once, then cycled: two seconds of motion


class MediaSpecError(ValueError):
    """A source spec that cannot be used; str() is one line naming the spec."""


class Pacer:
    """Real-time pacing shared by the generated tracks: the next pts, after waiting for its time.

    Same schedule as aiortc's AudioStreamTrack/VideoStreamTrack, on the monotonic clock.
    """

    def __init__(self, step: int, clock_rate: int) -> None:
        self._step = step
        self._clock_rate = clock_rate
        self._started_at: float | None = None
        self._pts = 0

    async def next_pts(self) -> int:
        if self._started_at is None:
            self._started_at = time.monotonic()
        else:
            self._pts += self._step
            wait = self._started_at + self._pts / self._clock_rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        return self._pts


class _PacedAudioTrack(AudioStreamTrack):
    """48 kHz mono s16 in 20 ms frames, paced in real time from a pre-rendered loop of samples."""

    def __init__(self, pcm: np.ndarray[Any, np.dtype[np.int16]]) -> None:
        super().__init__()
        if len(pcm) % SAMPLES_PER_FRAME:
            raise ValueError("the sample loop must be a whole number of frames")
        self._chunks = [
            pcm[i : i + SAMPLES_PER_FRAME].tobytes() for i in range(0, len(pcm), SAMPLES_PER_FRAME)
        ]
        self._pacer = Pacer(SAMPLES_PER_FRAME, SAMPLE_RATE)

    async def recv(self) -> Frame:
        if self.readyState != "live":
            raise MediaStreamError
        pts = await self._pacer.next_pts()
        frame = AudioFrame(format="s16", layout="mono", samples=SAMPLES_PER_FRAME)
        frame.planes[0].update(self._chunks[(pts // SAMPLES_PER_FRAME) % len(self._chunks)])
        frame.pts = pts
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = AUDIO_TIME_BASE
        return frame


def tone_track(hz: float = TONE_HZ) -> MediaStreamTrack:
    return _PacedAudioTrack(tone_pcm(hz))


def silence_track() -> MediaStreamTrack:
    return _PacedAudioTrack(silence_pcm())


def _render_testsrc() -> list[np.ndarray[Any, np.dtype[np.uint8]]]:
    w, h = TESTSRC_WIDTH, TESTSRC_HEIGHT
    bars = np.array(
        [
            [191, 191, 191],
            [191, 191, 0],
            [0, 191, 191],
            [0, 191, 0],
            [191, 0, 191],
            [191, 0, 0],
            [0, 0, 191],
            [16, 16, 16],
        ],
        dtype=np.uint8,
    )
    # A pattern one frame wide, tiled twice, so any window of width w is a scrolled frame.
    row = bars[(np.arange(w) * len(bars)) // w]
    strip = np.tile(row, (2, 1))
    ramp = np.repeat(np.linspace(0, 255, w, dtype=np.uint8)[:, None], 3, axis=1)
    frames = []
    for i in range(TESTSRC_FRAMES):
        offset = i * w // TESTSRC_FRAMES
        rgb = np.empty((h, w, 3), dtype=np.uint8)
        rgb[: h * 2 // 3] = strip[offset : offset + w]
        rgb[h * 2 // 3 :] = ramp
        # A white block drops down the ramp so motion shows in both halves.
        y = h * 2 // 3 + (i * (h // 3 - 16)) // TESTSRC_FRAMES
        rgb[y : y + 16, offset : offset + 16] = 255
        # Converted to yuv420p once here, so recv() is a plain copy and the encoder needs no
        # conversion.
        frames.append(VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p"))
    return [np.asarray(f.to_ndarray(), dtype=np.uint8) for f in frames]


class _TestPatternTrack(VideoStreamTrack):
    """A scrolling colour-bar pattern at 15 fps, paced like aiortc's VideoStreamTrack."""

    def __init__(self) -> None:
        super().__init__()
        self._frames = _render_testsrc()
        self._index = 0
        self._pacer = Pacer(VIDEO_CLOCK_RATE // TESTSRC_FPS, VIDEO_CLOCK_RATE)

    async def recv(self) -> Frame:
        if self.readyState != "live":
            raise MediaStreamError
        pts = await self._pacer.next_pts()
        frame = VideoFrame.from_ndarray(self._frames[self._index], format="yuv420p")
        self._index = (self._index + 1) % len(self._frames)
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        return frame


def testsrc_track() -> MediaStreamTrack:
    return _TestPatternTrack()


def _open_player(path: Path, kind: str) -> MediaPlayer:
    try:
        player = MediaPlayer(str(path))
    except (OSError, av.FFmpegError, ValueError) as exc:
        raise MediaSpecError(f"{kind} source {str(path)!r}: cannot open: {exc}") from None
    track = player.audio if kind == "audio" else player.video
    if track is None:
        _close_player(player)
        raise MediaSpecError(f"{kind} source {str(path)!r}: the file has no {kind} stream")
    # MediaPlayer decodes every stream it found and queues frames for each of its tracks whether
    # anyone reads them or not; an unread track would buffer decoded frames without bound. Keep
    # only the stream we play (the patch one_stream_player: MediaPlayer has no option for this);
    # without it, _LoopingFileTrack discards the other track's frames as it plays.
    keep_only(player, kind)
    return player


def _discard_queued(track: MediaStreamTrack) -> None:
    """Drop the frames a player queued for a track nobody plays."""
    queue = getattr(track, "_queue", None)
    if isinstance(queue, asyncio.Queue):
        while not queue.empty():
            queue.get_nowait()


def _close_player(player: MediaPlayer) -> None:
    # Stopping its tracks is MediaPlayer's only way to join its thread and close the file.
    for track in (player.audio, player.video):
        if track is not None:
            track.stop()


class _LoopingFileTrack(MediaStreamTrack):
    """One kind of a media file, played again from the start each time it ends.

    MediaPlayer(loop=True) is not used: with PyAV >= 14 its decoder raises EOFError at the end
    instead of StopIteration, so the track just ends; and where it does loop, video timestamps
    restart at zero. Here a finished player is replaced by a fresh one and timestamps are
    rewritten to keep increasing.
    """

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._path = path
        self._player: MediaPlayer | None = _open_player(path, kind)
        self._frames_this_loop = 0
        self._offset = 0  # added to the pts of the current loop, in _time_base units
        self._next_pts = 0  # where the next loop starts
        self._time_base = AUDIO_TIME_BASE if kind == "audio" else VIDEO_TIME_BASE
        self._frame_duration = SAMPLES_PER_FRAME if kind == "audio" else VIDEO_CLOCK_RATE // 30

    def _source(self) -> MediaStreamTrack:
        assert self._player is not None
        track = self._player.audio if self.kind == "audio" else self._player.video
        assert track is not None
        return track

    async def recv(self) -> Frame | Packet[Any]:
        while True:
            if self.readyState != "live" or self._player is None:
                raise MediaStreamError
            try:
                frame = await self._source().recv()
            except MediaStreamError:
                if self.readyState != "live" or self._player is None:
                    raise  # stopped while waiting
                if self._frames_this_loop == 0:
                    # The file yields nothing: reopening would spin.
                    self.stop()
                    raise
                _close_player(self._player)
                self._player = None
                self._player = _open_player(self._path, self.kind)
                self._offset = self._next_pts
                self._frames_this_loop = 0
                continue
            break
        player = self._player
        if player is not None:
            unplayed = player.video if self.kind == "audio" else player.audio
            if unplayed is not None:  # one_stream_player not installed: the file's other stream
                _discard_queued(unplayed)
        self._frames_this_loop += 1
        if isinstance(frame, Frame) and frame.pts is not None and frame.time_base is not None:
            pts = self._offset + int(frame.pts * frame.time_base / self._time_base)
            if isinstance(frame, AudioFrame):
                self._next_pts = pts + frame.samples
            else:
                self._next_pts = pts + self._frame_duration
            frame.pts = pts
            frame.time_base = self._time_base
        return frame

    def stop(self) -> None:
        super().stop()
        player, self._player = self._player, None
        if player is not None:
            _close_player(player)
            # A recv() still waiting on the player's queue would wait forever: the stopped
            # worker thread feeds it no end marker. Give it one.
            for track in (player.audio, player.video):
                queue = getattr(track, "_queue", None)
                if isinstance(queue, asyncio.Queue):
                    queue.put_nowait(None)


def _file_track(spec: str, kind: str) -> MediaStreamTrack:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise MediaSpecError(f"{kind} source {spec!r}: no such file (or not a regular file)")
    return _LoopingFileTrack(path, kind)


def open_audio_source(spec: str) -> MediaStreamTrack | None:
    """`tone`, `silence`, `none` (no audio) or the path of a media file played in a loop."""
    if spec == "none":
        return None
    if spec == "tone":
        return tone_track()
    if spec == "silence":
        return silence_track()
    return _file_track(spec, "audio")


def open_video_source(spec: str) -> MediaStreamTrack | None:
    """`testsrc`, `none` (no video) or the path of a media file played in a loop."""
    if spec == "none":
        return None
    if spec == "testsrc":
        return testsrc_track()
    return _file_track(spec, "video")


class MediaSources:
    """The agent's source tracks and the relay that hands each peer connection its own copy."""

    def __init__(
        self,
        audio: MediaStreamTrack | None = None,
        video: MediaStreamTrack | None = None,
        preencoded_audio: PreencodedAudio | None = None,
    ) -> None:
        self.audio = audio
        self.video = video
        # tone and silence are encoded once and replayed to every peer (no encoder per peer)
        self.preencoded_audio = preencoded_audio
        self.relay = MediaRelay()
        self._closed = False

    @classmethod
    def open(cls, audio: str, video: str) -> MediaSources:
        """Open both specs; raises MediaSpecError (and leaves nothing open) if one is invalid."""
        if audio in ("tone", "silence"):
            return cls(None, open_video_source(video), PreencodedAudio(audio))
        audio_track = open_audio_source(audio)
        try:
            video_track = open_video_source(video)
        except BaseException:
            if audio_track is not None:
                audio_track.stop()
            raise
        return cls(audio_track, video_track)

    def audio_for_peer(self) -> MediaStreamTrack | None:
        """A new relayed audio track for one peer connection, or None without audio."""
        if self._closed:
            return None
        if self.preencoded_audio is not None:
            return self.preencoded_audio.track()
        if self.audio is None:
            return None
        # Buffered: audio frames must not be dropped when a sender is briefly late.
        return self.relay.subscribe(self.audio, buffered=True)

    def video_for_peer(self) -> MediaStreamTrack | None:
        """A new relayed video track for one peer connection, or None without video."""
        if self._closed or self.video is None:
            return None
        # Unbuffered: a late sender gets the newest frame instead of a growing backlog.
        return self.relay.subscribe(self.video, buffered=False)

    def local_tracks(self) -> list[MediaStreamTrack]:
        """Fresh relayed tracks for one peer connection (the SessionManager's local_tracks)."""
        return [t for t in (self.audio_for_peer(), self.video_for_peer()) if t is not None]

    def close(self) -> None:
        """Stop the sources; relayed tracks then end, and file players release their files."""
        if self._closed:
            return
        self._closed = True
        if self.preencoded_audio is not None:
            self.preencoded_audio.stop()
        for track in (self.audio, self.video):
            if track is not None:
                with contextlib.suppress(Exception):
                    track.stop()

    def __enter__(self) -> MediaSources:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
