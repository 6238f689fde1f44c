"""Child process of the benchmarks: N scripted remote peers that offer to the agent at once.

stdin: one JSON object {url, meeting, target, peers: [{token, user_id}], audio, video, trickle,
candidate_delay, sequential, gap_s, seed, light}, then a line "go" to offer, then EOF to leave.
stdout: one JSON line per peer once connected
{user_id, session_id, offer_to_connected_s}, then {"done": true}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.cli.loop import run_async
from agent.media.preencoded import PreencodedAudio
from agent.patches import install as install_patches
from agent.patches.certificate import SharedCertificate
from agent.peer.ice import restrict_host_addresses
from tests.support.peers import RemotePeer

CONNECT_TIMEOUT_S = 60.0


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    spec = json.loads(await reader.readline())
    # light: the peers send one pre-encoded tone and count what they receive without decoding,
    # so that many of them fit beside the agent on a small machine
    light = spec.get("light", False)
    # Fifty browsers would do the light peers' work on fifty machines; here it shares one core
    # with the backend. Each has its certificate and DTLS context before the call (as a browser
    # makes its certificate before anyone calls), and applies descriptions as the agent does;
    # other peers apply them as aiortc does.
    install_patches(skip=() if light else {"remote_descriptions"})
    restrict_host_addresses(["127.0.0.1"])
    tone = PreencodedAudio("tone") if light else None
    peers = [
        RemotePeer(
            spec["url"],
            p["token"],
            spec["meeting"],
            p["user_id"],
            audio=spec.get("audio", True),
            video=spec.get("video", False),
            poll_interval=spec.get("poll_interval", 0.02),
            idle_poll_interval=spec.get("idle_poll_interval", 1.0),
            audio_track=tone.track if tone is not None else None,
            decode=not light,
            certificate=SharedCertificate.generateCertificate().prepare() if light else None,
        )
        for p in spec["peers"]
    ]
    async with contextlib.AsyncExitStack() as stack:
        for peer in peers:
            await stack.enter_async_context(peer)
        print(json.dumps({"ready": True}), flush=True)
        await reader.readline()  # "go"
        if spec.get("answer_only"):
            # The agent calls: wait for every peer to be connected by the agent's offers.
            async def answered(peer: RemotePeer) -> None:
                started = time.perf_counter()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CONNECT_TIMEOUT_S):
                        await peer.connected.wait()
                elapsed = time.perf_counter() - started if peer.connected.is_set() else None
                print(
                    json.dumps({"user_id": peer.user_id, "offer_to_connected_s": elapsed}),
                    flush=True,
                )

            await asyncio.gather(*(answered(p) for p in peers))
            print(json.dumps({"done": True}), flush=True)
            await reader.read()
            return

        async def offer(peer: RemotePeer) -> None:
            started = time.perf_counter()
            trickle = spec.get("trickle", False)
            await peer.offer(
                spec["target"],
                trickle=trickle,
                end_of_candidates=trickle,
                candidate_delay=spec.get("candidate_delay", 0.0),
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await peer.connected.wait()
            elapsed = time.perf_counter() - started if peer.connected.is_set() else None
            print(
                json.dumps(
                    {
                        "user_id": peer.user_id,
                        "session_id": peer.session_id,
                        "offer_to_connected_s": elapsed,
                    }
                ),
                flush=True,
            )

        if spec.get("sequential"):
            # One call at a time, at random moments relative to the agent's polling.
            rng = random.Random(spec.get("seed", 1))
            for peer in peers:
                await asyncio.sleep(rng.uniform(*spec.get("gap_s", (0.3, 1.5))))
                await offer(peer)
        else:
            await asyncio.gather(*(offer(p) for p in peers))
        print(json.dumps({"done": True}), flush=True)
        await reader.read()  # stay in the meeting until the parent closes stdin


async def _main_status() -> int:
    await main()
    return 0


if __name__ == "__main__":
    # uvloop, as the agent: simulating fifty browsers in one process is CPU-bound
    run_async(_main_status())
