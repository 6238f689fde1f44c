"""A plain aiortc peer for tests/network, run by ImpairedLink.spawn inside one side's namespace:
one RTCPeerConnection that sends a 440 Hz tone and counts the audio frames it receives.

stdin and stdout carry one JSON object per line:
  in  {"offer": true}             -> out {"sdp": offer, "type": "offer"} (ICE gathered)
  in  {"sdp": offer, "type": "offer"}   -> out {"sdp": answer, "type": "answer"}
  in  {"sdp": answer, "type": "answer"} (the offerer)
  out {"connected": seconds since start} once the connection is up
  out {"frames": n, "seconds": since connected} once FRAMES audio frames were received
  end of stdin: the peer closes and the process exits
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import math
import sys
import time
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from av import AudioFrame

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


if __name__ == "__main__":
    asyncio.run(main())
