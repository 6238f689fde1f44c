"""Child process for the fault tests: N scripted remote peers (audio only) that survive the dev
backend's faults, driven over stdin/stdout JSON lines. Keeps the peers' aiortc work off the
agent's and the test's event loops.

stdin: one spec line {url, meeting, target, peers: [{token, user_id}], trickle, timeout, light};
then commands, one JSON object per line:
  {"cmd": "offer", "peers": [i, ...]}  offer to the target; one {"offered": i, "connected": bool,
                                       "seconds": s} line per peer, then {"offer_done": true}
  {"cmd": "frames"}                    {"frames": [audio frames received, per peer]} (light:
                                       RTP packets received)
light: the peers send one pre-encoded tone and count received RTP without decoding, so that a
hundred of them fit beside the agent on two cores (a hundred Opus encoders and decoders did not:
the peers' media stalled for seconds and the agent restarted ICE on half of the sessions).
  {"cmd": "states"}                    {"states": [connection state per peer]}
EOF: every peer closes its session and the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


from agent.media.preencoded import PreencodedAudio
from agent.patches import install as install_patches
from agent.peer.ice import restrict_host_addresses
from tests.support.peers import ApiError, PeerTransportError, RemotePeer

RETRYABLE = frozenset({429, 500, 502, 503, 504})
MAX_ATTEMPTS = 12


class RetryingPeer(RemotePeer):
    """A RemotePeer whose calls retry what the faults produce (like a browser's Convex client)."""

    async def call(self, function: str, **args: Any) -> Any:
        delay = 0.1
        for _ in range(MAX_ATTEMPTS):
            wait = random.uniform(0, delay)
            try:
                reply = await self.post(function, args)
            except PeerTransportError:
                pass
            else:
                if reply.status not in RETRYABLE:
                    body = reply.body if isinstance(reply.body, dict) else {}
                    if body.get("status") == "success":
                        return body.get("value")
                    raise ApiError(f"{function}: HTTP {reply.status}")
                retry_after = reply.headers.get("Retry-After")
                if retry_after and retry_after.isdigit():
                    wait = max(wait, float(retry_after))
            await asyncio.sleep(wait)
            delay = min(delay * 2, 2.0)
        raise ApiError(f"{function}: retries exhausted")


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**22)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    spec = json.loads(await reader.readline())
    install_patches()  # a process of its own: the light peers count and pump as the agent does
    restrict_host_addresses(["127.0.0.1"])
    light = bool(spec.get("light", False))
    tone = PreencodedAudio("tone") if light else None
    peers = [
        RetryingPeer(
            spec["url"],
            p["token"],
            spec["meeting"],
            p["user_id"],
            audio=True,
            video=False,
            poll_interval=0.05,
            idle_poll_interval=spec.get("idle_poll_interval", 1.0),
            audio_track=tone.track if tone is not None else None,
            decode=not light,
        )
        for p in spec["peers"]
    ]
    for peer in peers:
        peer.request_timeout = spec.get("request_timeout", 3.0)
    connect_timeout = float(spec.get("timeout", 90.0))

    def emit(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def offer(i: int) -> None:
        peer = peers[i]
        started = time.perf_counter()
        ok = False
        with contextlib.suppress(ApiError, TimeoutError):
            async with asyncio.timeout(connect_timeout):
                await peer.offer(spec["target"], trickle=spec.get("trickle", True))
                await peer.connected.wait()
                ok = True
        emit({"offered": i, "connected": ok, "seconds": time.perf_counter() - started})

    async with contextlib.AsyncExitStack() as stack:
        for peer in peers:
            await stack.enter_async_context(peer)
        emit({"ready": True})
        running: set[asyncio.Task[None]] = set()
        while line := await reader.readline():
            command = json.loads(line)
            if command["cmd"] == "offer":

                async def offer_all(indices: list[int]) -> None:
                    await asyncio.gather(*(offer(i) for i in indices))
                    emit({"offer_done": True})

                task = asyncio.create_task(offer_all(command["peers"]))
                running.add(task)
                task.add_done_callback(running.discard)
            elif command["cmd"] == "frames":
                if light:
                    emit({"frames": [await p.rtp_received() for p in peers]})
                else:
                    emit({"frames": [p.received.audio_frames for p in peers]})
            elif command["cmd"] == "states":
                emit({"states": [p.pc.connectionState if p.pc else "none" for p in peers]})
        for task in running:
            task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
