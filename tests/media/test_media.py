from __future__ import annotations

import asyncio
import fractions
import time
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame
from av.packet import Packet

from agent.media import (
    FrameCounter,
    MediaSources,
    MediaSpecError,
    ReceivedMedia,
    open_audio_source,
    open_video_source,
)
from agent.media.sources import testsrc_track as make_testsrc
from agent.media.sources import tone_track


def write_wav(path: Path, seconds: float, hz: float = 440.0) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=48_000)
        stream.layout = "mono"
        n = int(48_000 * seconds)
        pcm = (np.sin(2 * np.pi * hz * np.arange(n) / 48_000) * 8000).astype(np.int16)
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48_000
        frame.pts = 0
        frame.time_base = fractions.Fraction(1, 48_000)
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_video(path: Path, frames: int, fps: int = 15) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            rgb = np.full((48, 64, 3), i * 20, dtype=np.uint8)
            for packet in stream.encode(VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


async def test_tone_is_48k_mono_20ms_paced_and_audible() -> None:
    track = open_audio_source("tone")
    assert track is not None and track.kind == "audio"
    started = time.monotonic()
    frames = [await track.recv() for _ in range(6)]
    elapsed = time.monotonic() - started
    track.stop()
    assert all(isinstance(f, AudioFrame) for f in frames)
    first = frames[0]
    assert isinstance(first, AudioFrame)
    assert (first.sample_rate, first.samples, first.format.name, first.layout.name) == (
        48_000,
        960,
        "s16",
        "mono",
    )
    assert [f.pts for f in frames] == [i * 960 for i in range(6)]
    assert first.time_base == fractions.Fraction(1, 48_000)
    assert np.abs(first.to_ndarray()).max() > 1000
    # The first frame is immediate, the next five are due 20 ms apart.
    assert 0.08 <= elapsed < 0.5
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_silence_and_none() -> None:
    track = open_audio_source("silence")
    assert track is not None
    frame = await track.recv()
    assert isinstance(frame, AudioFrame) and frame.samples == 960
    assert not frame.to_ndarray().any()
    track.stop()
    assert open_audio_source("none") is None
    assert open_video_source("none") is None


async def test_testsrc_moves_at_15fps() -> None:
    track = open_video_source("testsrc")
    assert track is not None and track.kind == "video"
    frames = [await track.recv() for _ in range(3)]
    track.stop()
    assert all(isinstance(f, VideoFrame) for f in frames)
    assert [(f.width, f.height) for f in frames if isinstance(f, VideoFrame)] == [(320, 240)] * 3
    assert [f.pts for f in frames] == [0, 6000, 12000]
    a, b = (f.to_ndarray() for f in frames[:2] if isinstance(f, VideoFrame))
    assert not np.array_equal(a, b)


async def test_audio_file_loops_with_increasing_pts(tmp_path: Path) -> None:
    path = tmp_path / "short.wav"
    write_wav(path, 0.1)  # five 20 ms frames
    track = open_audio_source(str(path))
    assert track is not None
    frames = [await track.recv() for _ in range(12)]
    track.stop()
    pts = [f.pts or 0 for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == 12 and pts[0] == 0
    assert all(isinstance(f, AudioFrame) and f.sample_rate == 48_000 for f in frames)


async def test_video_file_loops_with_increasing_pts(tmp_path: Path) -> None:
    path = tmp_path / "short.mp4"
    write_video(path, 3, fps=30)
    track = open_video_source(str(path))
    assert track is not None
    frames = [await track.recv() for _ in range(8)]
    track.stop()
    pts = [f.pts or 0 for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == 8
    assert all(isinstance(f, VideoFrame) and f.width == 64 for f in frames)


def test_invalid_specs_raise_one_line_errors(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.wav")
    with pytest.raises(MediaSpecError, match=r"missing\.wav") as info:
        open_audio_source(missing)
    assert "\n" not in str(info.value)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not media" * 100)
    with pytest.raises(MediaSpecError, match="cannot open") as info:
        open_video_source(str(garbage))
    assert "\n" not in str(info.value) and "garbage.wav" in str(info.value)
    audio_only = tmp_path / "audio.wav"
    write_wav(audio_only, 0.1)
    with pytest.raises(MediaSpecError, match="no video stream"):
        open_video_source(str(audio_only))
    with pytest.raises(MediaSpecError):
        MediaSources.open("tone", str(tmp_path / "nope.mp4"))


async def test_relay_feeds_many_peers_and_close_ends_them() -> None:
    # Generated frames go through the relay (tone/silence from open() are pre-encoded instead).
    sources = MediaSources(tone_track(), make_testsrc())
    peers = [sources.local_tracks() for _ in range(3)]
    assert all([t.kind for t in tracks] == ["audio", "video"] for tracks in peers)
    assert len({t.id for tracks in peers for t in tracks}) == 6
    received = [ReceivedMedia() for _ in peers]
    async with asyncio.timeout(10):
        async with asyncio.TaskGroup() as tg:
            for media, tracks in zip(received, peers, strict=True):
                for track in tracks:
                    tg.create_task(media.consume(track))
            for media in received:
                await media.first_audio.wait()
                await media.first_video.wait()
            sources.close()
    for media in received:
        assert media.audio_frames >= 1 and media.video_frames >= 1
        assert media.audio_samples == 960 * media.audio_frames
        assert (media.video_width, media.video_height) == (320, 240)
        assert all(c.ended for c in media.counters)
    assert sources.audio_for_peer() is None and sources.video_for_peer() is None


async def test_open_tone_is_preencoded_and_close_ends_it() -> None:
    sources = MediaSources.open("tone", "none")
    tracks = [sources.audio_for_peer() for _ in range(3)]
    packets = [await t.recv() for t in tracks if t is not None]
    assert len(packets) == 3 and all(isinstance(p, Packet) for p in packets)
    assert len({bytes(p) for p in packets}) == 1  # one encoding shared by every peer
    sources.close()
    for track in tracks:
        assert track is not None and track.readyState == "ended"
    assert sources.audio_for_peer() is None


async def test_sources_without_media() -> None:
    with MediaSources.open("none", "none") as sources:
        assert sources.local_tracks() == []


class ScriptedTrack(MediaStreamTrack):
    def __init__(self, kind: str, frames: list[AudioFrame | VideoFrame]) -> None:
        super().__init__()
        self.kind = kind
        self._frames = list(frames)

    async def recv(self) -> AudioFrame | VideoFrame:
        if not self._frames:
            raise MediaStreamError
        return self._frames.pop(0)


async def test_frame_counter_counts_until_the_track_ends() -> None:
    ticks = iter([1.0, 2.0, 3.0])
    media = ReceivedMedia()
    counter = FrameCounter(media, clock=lambda: next(ticks))
    frames = [AudioFrame(format="s16", layout="mono", samples=960) for _ in range(3)]
    await counter.consume(ScriptedTrack("audio", list(frames)))
    assert (counter.kind, counter.frames, counter.samples) == ("audio", 3, 2880)
    assert (counter.first_frame_at, counter.last_frame_at, counter.ended) == (1.0, 3.0, True)
    assert (media.audio_frames, media.audio_samples, media.first_audio_at) == (3, 2880, 1.0)
    assert media.first_audio.is_set() and not media.first_video.is_set()

    video = FrameCounter()
    await video.consume(ScriptedTrack("video", [VideoFrame(width=32, height=16)]))
    assert (video.frames, video.width, video.height, video.samples) == (1, 32, 16, 0)
