"""A plain aiortc peer for tests/network, run by ImpairedLink.spawn inside one side's namespace:
one RTCPeerConnection that sends a 440 Hz tone and counts the audio frames it receives.

stdin and stdout carry one JSON object per line:
  in  {"offer": true}             -> out {"sdp": offer, "type": "offer"} (ICE gathered)
  in  {"sdp": offer, "type": "offer"}   -> out {"sdp": answer, "type": "answer"}
  in  {"sdp": answer, "type": "answer"} (the offerer)
  out {"connected": seconds since start} once the connection is up
  out {"frames": n, "seconds": since connected} once FRAMES audio frames were received
  end of stdin: the peer closes and the process exits

`peer_proc.py connvo`: the same kind of peer (tests.support.peers.RemotePeer: a tone and aiortc's
test video), signalling through a Connvo backend. stdin and stdout, one JSON object per line:
  in  {"url", "token", "meeting_id", "user_id", "offer_to": user id or null} (first line)
  out {"connected": seconds since start} once the connection is up
  in  {"status": true} -> out {"status": {...}}: frames received, when, RTCP requests, RTX
      received, buffer levels (tests/network/helpers.py)
  end of stdin: the peer leaves and the process exits
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from av import AudioFrame

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

FRAMES = 100  # two seconds of 20 ms frames
RATE = 48_000
SAMPLES = 960


class Tone(MediaStreamTrack):
    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pts = 0
        self._start: float | None = None
        t = np.arange(SAMPLES) / RATE
        self._samples = (np.sin(2 * math.pi * 440 * t) * 8000).astype(np.int16)

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._pts / RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))  # real-time pacing of the source
        frame = AudioFrame.from_ndarray(self._samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._pts += SAMPLES
        return frame


def say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def main() -> None:
    start = time.monotonic()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pc = RTCPeerConnection()
    pc.addTrack(Tone())
    connected = asyncio.Event()
    counting: list[asyncio.Task[None]] = []

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "connected" and not connected.is_set():
            connected.set()
            say({"connected": round(time.monotonic() - start, 3)})

    async def count(track: MediaStreamTrack) -> None:
        await connected.wait()
        since = time.monotonic()
        for n in range(1, FRAMES + 1):
            await track.recv()
            if n == FRAMES:
                say({"frames": n, "seconds": round(time.monotonic() - since, 3)})

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        counting.append(asyncio.create_task(count(track)))

    try:
        while line := await reader.readline():
            message = json.loads(line)
            if message.get("offer"):
                await pc.setLocalDescription(await pc.createOffer())
            else:
                await pc.setRemoteDescription(RTCSessionDescription(**message))
                if message["type"] == "answer":
                    continue
                await pc.setLocalDescription(await pc.createAnswer())
            say({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})
    finally:
        for task in counting:
            task.cancel()
        with contextlib.suppress(Exception):
            await pc.close()


async def connvo() -> None:
    from tests.network.helpers import RtcpCounts, buffer_levels, instrument, rtx_received
    from tests.support.peers import RemotePeer

    start = time.monotonic()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    config = json.loads(await reader.readline())
    counts = RtcpCounts()
    audio_at: list[float] = []  # when each audio frame was received (time.monotonic())
    peer = RemotePeer(
        config["url"],
        config["token"],
        config["meeting_id"],
        config["user_id"],
        audio_track=Tone,
        on_audio=lambda frame: audio_at.append(time.monotonic()),
    )
    async with peer:
        if config.get("offer_to"):
            await peer.offer(config["offer_to"])
        await peer.connected.wait()
        assert peer.pc is not None
        instrument(peer.pc, counts)
        say({"connected": round(time.monotonic() - start, 3)})
        highest: dict[str, int] = {}

        async def sample_levels() -> None:
            while True:
                if peer.pc is not None:
                    for name, level in buffer_levels(peer.pc).items():
                        highest[name] = max(level, highest.get(name, 0))
                await asyncio.sleep(0.25)

        sampler = asyncio.create_task(sample_levels())
        while line := await reader.readline():
            if not json.loads(line).get("status"):
                continue
            pc = peer.pc
            if pc is not None:
                instrument(pc, counts)  # a new connection (ICE restart) is counted too
            status = {
                "at": time.monotonic(),
                "state": pc.connectionState if pc is not None else "closed",
                "audio_frames": peer.received.audio_frames,
                "video_frames": peer.received.video_frames,
                "audio_at": audio_at[-2000:],
                "rtcp": counts.as_dict(),
                "rtx_received": rtx_received(pc) if pc is not None else 0,
                "levels_max": highest,
                "levels_now": buffer_levels(pc) if pc is not None else {},
            }
            say({"status": status})
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler


if __name__ == "__main__":
    asyncio.run(connvo() if sys.argv[1:] == ["connvo"] else main())
