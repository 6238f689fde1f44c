"""Signal latency, offer-to-connected time and idle request rate of the agent's poller.

For 1 and 50 concurrent sessions, the agent (in this process, with its real poller) answers
remote aiortc peers (in a child process) over a dev backend (another process), all on loopback.
Each row is measured twice in the same run: with the agent's adaptive poller, and with a
fixed-interval baseline (the same agent polling every 250 ms).

Figures:
The 1-session case is 10 calls one after another (at random moments); 50 sessions call at once.
Remote peers trickle their candidates after the offer, 100 ms apart (a browser's STUN gathering).
The agent runs as `connvo-agent run` does (uvloop, received RTP counted, not decoded); the remote
peers send a pre-encoded tone and decode nothing, have their DTLS certificate ready before the call
and apply descriptions as the agent does, since in a real meeting they would not share the agent's
machine.

- signal latency p50/p99: server insert -> applied by the agent, for signals fetched while the
  agent was negotiating (polling fast); `idle-found` is the latency of signals an idle poll found
  (the first offer of a call), bounded by the idle interval;
- offer->connected p50: agent side, offer applied -> connection connected; and end to end at the
  peer, offer sent -> connected (this one includes the idle poll that finds the first offer);
- idle requests per second of the agent's identity, measured at the backend with all sessions
  connected and nothing to negotiate.

With --call rows ("agent calls"), the agent offers to 50 waiting peers instead: their answers
arrive while it negotiates, which is where the negotiating-phase latency is measured at scale.

On a machine with two or more CPUs the agent (this process) runs on the first CPU alone, and the
dev backend and the peers' processes on the others: in a meeting they run on other machines, and
sharing every CPU with fifty peers and the backend they poll made the agent's figures measure them.
--shared-cpus lets everything share every CPU.

    python bench/signal_latency.py [--sessions 1 50] [--idle-seconds 10] [--agent-audio none]
                                   [--peer-procs 1] [--scenarios answers calls] [--shared-cpus]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cpu_split import CpuSplit, spawning_world  # noqa: E402  (bench/cpu_split.py)

from agent.cli.loop import run_async  # noqa: E402
from agent.convex import ConvexClient, TokenSource  # noqa: E402
from agent.devserver.process import DevServerProcess  # noqa: E402
from agent.media import MediaSources  # noqa: E402
from agent.patches import install as install_patches  # noqa: E402
from agent.peer.ice import restrict_host_addresses  # noqa: E402
from agent.peer.participant import ParticipantSettings  # noqa: E402
from agent.peer.session import SessionSettings  # noqa: E402
from agent.roles.bot import Bot  # noqa: E402
from agent.signaling.api import ConnvoApi  # noqa: E402

FIXED_INTERVAL_S = 0.25
# How often a remote peer polls while negotiating: as often as the join page does (FAST_POLL_MS in
# agent/devserver/static/join.js). At 20 ms, 50 peers sent 2,500 requests a second to a backend
# sharing two cores with the agent, and the figure measured the backend.
PEER_POLL_S = 0.05


@dataclass
class Row:
    sessions: int
    poller: str
    connected: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    fetch_p50_ms: float | None  # the part of sig before delivery: insert -> fetched by a poll
    idle_found_p50_ms: float | None
    agent_offer_to_connected_p50_ms: float | None
    peer_offer_to_connected_p50_ms: float | None
    idle_requests_per_s: float


def pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def scenario(
    sessions: int,
    poller: str,
    idle_seconds: float,
    rounds: int,
    workdir: Path,
    agent_calls: bool = False,
    agent_audio: str = "none",
    peer_procs: int = 1,
    split: CpuSplit | None = None,
) -> Row:
    # One session at a time is measured over `rounds` sequential calls; more at once in one burst.
    # With agent_calls, the peers wait and the agent (--call-everyone) offers to all of them.
    sequential = sessions == 1 and not agent_calls
    with contextlib.ExitStack() as stack:
        with spawning_world(split):
            server = stack.enter_context(DevServerProcess(workdir / f"{poller}-{sessions}.sqlite"))
        names = [f"p{i:03d}" for i in range(rounds if sequential else sessions)]
        meeting_id = server.meeting("bot", names)
        peers = [{"token": server.token(n), "user_id": server.user_id(n)} for n in names]
        fast, idle = (FIXED_INTERVAL_S, FIXED_INTERVAL_S) if poller == "fixed" else (0.02, 1.25)
        settings = ParticipantSettings(
            meeting_id=meeting_id,
            state_dir=workdir / f"state-{poller}-{sessions}",
            poll_fast_interval=fast,
            poll_idle_interval=idle,
            call_everyone=agent_calls,
            # as `connvo-agent run` receives by default (--receive count): RTP counted, not decoded
            session=SessionSettings(decode_media=False),
        )
        client = ConvexClient(server.url, TokenSource(value=server.token("bot")))
        bot = Bot(ConnvoApi(client), settings, MediaSources.open(agent_audio, "none"))
        stop = asyncio.Event()
        # The remote peers, split over `peer_procs` processes (they would be separate machines).
        procs = 1 if sequential else max(1, min(peer_procs, len(peers)))
        with spawning_world(split):
            workers = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(ROOT / "bench" / "peers_worker.py"),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
                for _ in range(procs)
            ]
        try:
            async with asyncio.TaskGroup() as tasks:
                if not agent_calls:
                    tasks.create_task(bot.run(stop))
                    await bot.participant.joined.wait()
                spec = {
                    "url": server.url,
                    "meeting": meeting_id,
                    "target": server.user_id("bot"),
                    "trickle": True,
                    "candidate_delay": 0.1,
                    "sequential": sequential,
                    "answer_only": agent_calls,
                    # a browser waiting for a call polls slowly too; 50 of them at 4/s
                    "idle_poll_interval": 0.25 if agent_calls else 1.0,
                    # the remote participants would be on other machines: here they share two
                    # cores with the agent, so they send one pre-encoded tone and decode nothing
                    "light": True,
                    "poll_interval": PEER_POLL_S,
                }
                for k, worker in enumerate(workers):
                    share = {**spec, "peers": peers[k::procs]}
                    await _send(worker, json.dumps(share))
                    json.loads(await _stdout(worker).readline())  # ready
                if agent_calls:
                    tasks.create_task(bot.run(stop))  # finds the peers at its first discovery
                    await bot.participant.joined.wait()
                # Let the agent settle into idle polling first, as it would be before a call.
                await asyncio.sleep(settings.poll_recent_window + 3 * idle)
                for worker in workers:
                    await _send(worker, "go")
                peer_times: list[float] = []
                for times in await asyncio.gather(*(_connect_times(w) for w in workers)):
                    peer_times += times
                # Settle: let the poller back off to idle, then count its requests.
                await asyncio.sleep(settings.poll_recent_window + 3 * idle)
                server.reset_stats()
                await asyncio.sleep(idle_seconds)
                stats = server.stats()
                bot_user = server.user_id("bot")
                idle_rate = stats["users"].get(bot_user, 0) / stats["elapsedS"]
                manager = bot.participant.manager
                poller_stats = bot.participant.poller.stats  # type: ignore[union-attr]
                assert manager is not None
                agent_times = [
                    s.time_to_connected
                    for s in manager.sessions.values()
                    if s.time_to_connected is not None
                ]
                print(
                    f"# poller: {poller_stats.polls} polls, {poller_stats.received} signals, "
                    f"{poller_stats.poll_errors} errors, {poller_stats.duplicates} duplicates",
                    file=sys.stderr,
                )
                active = list(poller_stats.active_latencies)
                fetched = list(poller_stats.active_fetch_latencies)
                found_idle = list(poller_stats.idle_latencies)
                stop.set()
        finally:
            for worker in workers:
                if worker.stdin is not None:
                    worker.stdin.close()
                await worker.wait()
            bot.sources.close()
            await client.aclose()
    label = "adaptive" if poller == "adaptive" else f"fixed {FIXED_INTERVAL_S * 1000:.0f} ms"
    return Row(
        sessions=sessions,
        poller=label + (" (agent calls)" if agent_calls else ""),
        connected=len(peer_times),
        latency_p50_ms=pct(active, 0.50),
        latency_p99_ms=pct(active, 0.99),
        fetch_p50_ms=pct(fetched, 0.50),
        idle_found_p50_ms=pct(found_idle, 0.50),
        agent_offer_to_connected_p50_ms=pct(agent_times, 0.50),
        peer_offer_to_connected_p50_ms=None if agent_calls else pct(peer_times, 0.50),
        idle_requests_per_s=idle_rate,
    )


async def _send(worker: asyncio.subprocess.Process, line: str) -> None:
    assert worker.stdin is not None
    worker.stdin.write(line.encode() + b"\n")
    await worker.stdin.drain()


def _stdout(worker: asyncio.subprocess.Process) -> asyncio.StreamReader:
    assert worker.stdout is not None
    return worker.stdout


async def _connect_times(worker: asyncio.subprocess.Process) -> list[float]:
    """A peers worker's offer->connected times, until it says it is done."""
    times = []
    while True:
        line = json.loads(await _stdout(worker).readline())
        if line.get("done"):
            return times
        if line["offer_to_connected_s"] is not None:
            times.append(line["offer_to_connected_s"])


def fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.0f}{unit}" if value >= 10 else f"{value:.1f}{unit}"


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'sessions':>8} {'poller':<28} {'conn':>5} {'sig p50':>8} {'sig p99':>8} "
        f"{'fetch p50':>9} {'idle-found':>10} {'agent o->c':>11} {'peer o->c':>10} "
        f"{'idle req/s':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.sessions:>8} {r.poller:<28} {r.connected:>5} {fmt(r.latency_p50_ms, 'ms'):>8} "
            f"{fmt(r.latency_p99_ms, 'ms'):>8} {fmt(r.fetch_p50_ms, 'ms'):>9} "
            f"{fmt(r.idle_found_p50_ms, 'ms'):>10} "
            f"{fmt(r.agent_offer_to_connected_p50_ms, 'ms'):>11} "
            f"{fmt(r.peer_offer_to_connected_p50_ms, 'ms'):>10} {r.idle_requests_per_s:>10.2f}"
        )


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument(
        "--rounds", type=int, default=10, help="sequential calls measured for the 1-session case"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--agent-audio",
        default="none",
        help="what the agent sends: none (signalling only, the default) or silence/tone, which "
        "adds one Opus encoder per session to the agent's event loop",
    )
    parser.add_argument(
        "--peer-procs",
        type=int,
        default=1,
        help="processes the remote peers of a burst are spread over (on a 2-core machine more "
        "than one takes CPU from the agent)",
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=["answers", "calls"],
        default=["answers", "calls"],
        help="answers: the peers call the agent; calls: the agent calls the peers (bursts only)",
    )
    parser.add_argument(
        "--shared-cpus",
        action="store_true",
        help="let the agent share every CPU with the backend and the peers (by default the agent "
        "has one CPU to itself, as on its own machine, and they have the others)",
    )
    args = parser.parse_args(argv)
    install_patches()  # the agent runs in this process: as `connvo-agent run` does
    restrict_host_addresses(["127.0.0.1"])
    split = None if args.shared_cpus else CpuSplit.of_this_machine()
    if split is not None:
        print(
            f"# agent on CPU {sorted(split.agent)}, backend and peers on {sorted(split.world)}",
            file=sys.stderr,
        )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-signal-") as tmp:
        plan = []
        if "answers" in args.scenarios:
            plan += [(n, p, False) for n in args.sessions for p in ("adaptive", "fixed")]
        if "calls" in args.scenarios:
            plan += [(n, p, True) for n in args.sessions if n > 1 for p in ("adaptive", "fixed")]
        for sessions, poller, agent_calls in plan:
            started = time.monotonic()
            rows.append(
                await scenario(
                    sessions,
                    poller,
                    args.idle_seconds,
                    args.rounds,
                    Path(tmp),
                    agent_calls,
                    args.agent_audio,
                    args.peer_procs,
                    split,
                )
            )
            print(
                f"# {sessions} sessions, {poller}, agent calls {agent_calls}: "
                f"{time.monotonic() - started:.0f} s",
                file=sys.stderr,
            )
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_async(main()))
