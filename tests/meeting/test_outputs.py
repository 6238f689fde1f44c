"""AudioOutput and VideoOutput on their own: what a connection's sender reads from them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import numpy as np

import agent

TIMEOUT = 10


def write_red_video(path: Path, frames: int = 10, fps: int = 10) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        red = np.zeros((120, 160, 3), np.uint8)
        red[:, :, 0] = 255
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(red, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def is_red(frame: av.VideoFrame) -> bool:
    rgb = frame.to_ndarray(format="rgb24")
    return bool(rgb[..., 0].mean() > 200 and rgb[..., 1].mean() < 60)


async def test_video_out_shows_black_then_a_file_at_its_rate(tmp_path: Path) -> None:
    path = tmp_path / "red.webm"
    write_red_video(path)
    out = agent.VideoOutput(width=160, height=120, fps=15)
    first = await out.recv()
    assert first.to_ndarray(format="rgb24").mean() < 30  # black before anything is shown
    async with asyncio.timeout(TIMEOUT):
        playing = asyncio.create_task(out.play_file(path))
        shown: list[tuple[int, bool]] = []  # (pts, red) as each frame was read
        while not playing.done():
            frame = await out.recv()  # the sender's pace: 15 fps
            shown.append((frame.pts, is_red(frame)))
        await playing
    assert any(red for _, red in shown)
    # a 1 s file at its own rate: about 15 frames of the sender's pace went by meanwhile
    assert len(shown) >= 10
    pts = [p for p, _ in shown]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
