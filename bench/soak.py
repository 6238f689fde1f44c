"""Soak: the agent holds N sessions with media for a long time; memory, descriptors and tasks are
sampled over time and compared with the state after warm-up.

    python bench/soak.py [--sessions 50] [--duration 1800] [--interval 15] [--warmup 120]
                         [--workers 3] [--video]

The agent (a bot: tone audio, optionally test-pattern video) runs in this process so its asyncio
tasks can be counted; the dev backend and the remote peers (bench/peers_worker.py) run in child
processes. Targets after warm-up: RSS grows less than 10%, no descriptor or task growth.
Exit status 0 when the targets are met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.cli.loop import run_async
from agent.convex import ConvexClient, TokenSource
from agent.devserver.process import DevServerProcess
from agent.media import MediaSources
from agent.patches import install as install_patches
from agent.peer.ice import restrict_host_addresses
from agent.peer.participant import ParticipantSettings
from agent.peer.session import SessionSettings
from agent.roles.bot import Bot
from agent.signaling.api import ConnvoApi

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ChurnCounter(logging.Handler):
    """Counts the agent's connection replacements (ICE restarts) and disconnections."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.replaced = 0
        self.disconnected = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.replaced += "replacing the peer connection" in message
        self.disconnected += "disconnected" in message


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def soak(args: argparse.Namespace) -> int:
    install_patches()  # the agent runs in this process: as `connvo-agent run` does
    restrict_host_addresses(["127.0.0.1"])
    churn = ChurnCounter()
    logging.getLogger("agent").addHandler(churn)
    logging.getLogger("agent").setLevel(logging.INFO)
    names = [f"soak{i:03d}" for i in range(args.sessions)]
    with tempfile.TemporaryDirectory(prefix="connvo-soak-") as tmp, DevServerProcess() as server:
        meeting = server.meeting("bot", names)
        bot_user = server.user_id("bot")
        peers = [{"token": server.token(n), "user_id": server.user_id(n)} for n in names]
        client = ConvexClient(server.url, TokenSource(value=server.token("bot")))
        sources = MediaSources.open("tone", "testsrc" if args.video else "none")
        bot = Bot(
            ConnvoApi(client),
            ParticipantSettings(
                meeting_id=meeting,
                state_dir=Path(tmp) / "state",
                # as `connvo-agent run` does by default: received RTP counted, not decoded
                session=SessionSettings(decode_media=args.decode),
            ),
            sources,
        )
        stop = asyncio.Event()
        agent = asyncio.create_task(bot.run(stop))
        async with asyncio.timeout(30):
            await bot.participant.joined.wait()

        # The remote peers in several processes, sending one pre-encoded tone and counting what
        # they receive without decoding: the agent is what is measured, and 50 peers that each
        # encode and decode audio need more CPU than a 2-core machine has beside the agent.
        workers = []
        for w in range(args.workers):
            worker = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "bench" / "peers_worker.py"),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert worker.stdin is not None and worker.stdout is not None
            spec = {"url": server.url, "meeting": meeting, "target": bot_user,
                    "peers": peers[w :: args.workers], "audio": True, "video": args.video,
                    "idle_poll_interval": 1.0, "light": True}  # fmt: skip
            worker.stdin.write((json.dumps(spec) + "\n").encode())
            await worker.stdout.readline()  # ready
            workers.append(worker)
        connected = 0
        for worker in workers:
            assert worker.stdin is not None and worker.stdout is not None
            worker.stdin.write(b"go\n")
        for worker in workers:
            assert worker.stdout is not None
            while line := await worker.stdout.readline():
                row = json.loads(line)
                if row.get("done"):
                    break
                connected += row.get("offer_to_connected_s") is not None
        print(f"{connected}/{args.sessions} sessions connected; soaking for {args.duration:.0f} s "
              f"(warm-up {args.warmup:.0f} s, sample every {args.interval:.0f} s)")  # fmt: skip
        print(f"{'t (s)':>7} {'RSS MB':>8} {'fds':>5} {'tasks':>6} {'threads':>7} {'sessions':>8}"
              f" {'restarts':>8} {'disconn.':>8}")  # fmt: skip

        samples: list[tuple[float, float, int, int]] = []
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            manager = bot.participant.manager
            live = len(manager.sessions) if manager else 0
            sample = (elapsed, rss_mb(), open_fds(), len(asyncio.all_tasks()))
            samples.append(sample)
            print(f"{elapsed:7.0f} {sample[1]:8.1f} {sample[2]:5d} {sample[3]:6d} "
                  f"{threading.active_count():7d} {live:8d} {churn.replaced:8d} "
                  f"{churn.disconnected:8d}", flush=True)  # fmt: skip
            if elapsed >= args.duration or agent.done():
                break
            await asyncio.wait({agent}, timeout=args.interval)

        stop.set()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.close()
        async with asyncio.timeout(30):
            await agent
            for worker in workers:
                await worker.wait()
        sources.close()
        await client.aclose()

    after = [s for s in samples if s[0] >= args.warmup] or samples[-1:]
    base, end = after[0], after[-1]
    growth = (end[1] - base[1]) / base[1] * 100
    # Sustained growth, not one sample: median of the last third against the first third (a leak
    # climbs steadily; reconnections only make single samples dip or spike).
    third = max(1, len(after) // 3)
    early, late = after[:third], after[-third:]
    fd_growth = statistics.median(s[2] for s in late) - statistics.median(s[2] for s in early)
    task_growth = statistics.median(s[3] for s in late) - statistics.median(s[3] for s in early)
    ok = growth < 10 and fd_growth <= 0 and task_growth <= 0 and connected == args.sessions
    print(
        f"after warm-up ({base[0]:.0f} s -> {end[0]:.0f} s): RSS {base[1]:.1f} -> "
        f"{end[1]:.1f} MB ({growth:+.1f}%), fds {fd_growth:+.0f}, tasks {task_growth:+.0f} "
        f"(median of the last third vs the first); {churn.replaced} connection replacements, "
        f"{churn.disconnected} disconnections; {'targets met' if ok else 'TARGETS MISSED'}"
    )
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds after connecting")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=120.0, help="seconds before the baseline")
    parser.add_argument("--workers", type=int, default=3, help="processes for the remote peers")
    parser.add_argument("--video", action="store_true", help="test-pattern video both ways too")
    parser.add_argument("--decode", action="store_true", help="the agent decodes what it receives")
    # as `connvo-agent run` runs: uvloop, start-up objects frozen out of the collector
    sys.exit(run_async(soak(parser.parse_args())))


if __name__ == "__main__":
    main()
