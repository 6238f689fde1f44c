"""How many participants one core holds with audio both ways, per media mode, in one run.

A participant "is held" while at least 95 % of the RTP packets it should receive arrive and the
event loop's lag p99 stays under 50 ms (under 1 % of the lag probes, one every 50 ms, are 50 ms
late or more), measured over a hold that starts once every connection is
up (connecting costs far more than holding). Participants are paired (meetings of two, so each
sends one audio stream and receives one) and all run in ONE worker process pinned to ONE core
(CPU 0, with every thread it starts: aiortc encodes and decodes in threads, which without the pin
spread `full` over 1.3 cores); the dev backend and the load command's parent process (progress,
live table) are pinned to the other cores. The participant
count climbs a ladder until a step fails.

Modes, measured side by side:
- preencoded: the agent, Opus encoded once for everyone, RTP counted without decoding;
- full: the agent, every participant encoding and decoding its own audio;
- aiortc: plain aiortc connection pairs, no agent (no signalling, no backend), encoding and
  decoding, as the baseline of what the media stack alone costs.
Also: idle memory per connected session (`--media none`, RSS growth / sessions).

With `--network PROFILE` (docs/network.md) the load runs put each pair's two participants on the
two sides of an impaired link (`connvo-agent load --network`): one worker per side, both pinned to
the measured core (the link's relay is not), and a participant is held while it receives at least
95 % of what the profile's loss leaves. The aiortc pairs share one process and stay on loopback:
they are not run with `--network`. Under a capped profile the link, not the core, may end the
ladder (each audio stream needs about 50 kbit/s of the cap).

    python bench/load_capacity.py [--ladder 10 20 40 ...] [--hold 8] [--network PROFILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.devserver.process import DevServerProcess  # noqa: E402
from agent.network import PROFILE_NAMES, parse_profile  # noqa: E402
from agent.roles.load.report import slow_lag_pct  # noqa: E402

PACKETS_PER_S = 50  # 20 ms Opus frames
MIN_ARRIVAL = 0.95
MAX_LAG_MS = 50.0
SLOW_LAG_SHARE = 0.01  # lag p99 < MAX_LAG_MS <=> under 1 % of the probes are that late
RAMP_PER_S = 20.0
SETTLE_S = 3.0
MEASURED_CPU = 0  # the one core a step runs on; the backend gets the others


def _pin_to_measured_core() -> None:
    if _can_pin():
        os.sched_setaffinity(0, {MEASURED_CPU})


class _WorkerPinning:
    """Keeps every thread of the load command's worker process on the measured core.

    Only the worker: the command's parent (progress bar, live table) stays off that core, as the
    backend does. Affinity is per thread, so threads are pinned as they appear.
    """

    def __init__(self, command_pid: int) -> None:
        self._command_pid = command_pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if _can_pin():
            self._thread.start()

    def _run(self) -> None:
        others = os.sched_getaffinity(0) - {MEASURED_CPU}
        with contextlib.suppress(OSError):
            os.sched_setaffinity(self._command_pid, others)
        while not self._stop.wait(0.2):
            for pid in _children(self._command_pid):
                if _is_relay(pid):  # --network: the link's relay is the network, not the agent
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(pid, others)
                    continue
                for tid in _threads(pid):
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(tid, {MEASURED_CPU})

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(c) for c in text.split()]
    return []


def _is_relay(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return b"agent.network._relay" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


def _threads(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    return []


def _can_pin() -> bool:
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


def run_agent_step(
    server: DevServerProcess,
    media: str,
    participants: int,
    hold: float,
    workdir: Path,
    network: str | None = None,
) -> dict[str, Any]:
    """One rung: `participants` agents in one worker; the hold starts once all are connected.

    Connecting costs far more CPU than holding (DTLS handshakes, key generation), so a hold window
    that overlapped the joins would measure join throughput, not how many participants a core holds.
    """
    report_dir = workdir / f"{media}-{participants}"
    connect_allowance = max(10.0, participants / 5)
    cmd = [
        sys.executable,
        "-m",
        "agent",
        "load",
        "--url",
        server.url,
        "--admin-key",
        server.admin_key,
        "--meetings",
        str(participants // 2),
        "--peers-per-meeting",
        "2",
        "--duration",
        str(connect_allowance + SETTLE_S + hold),
        "--ramp",
        str(RAMP_PER_S),
        "--media",
        media,
        # capacity without mouth-to-ear marks: measuring them decodes the received audio
        "--mouth-to-ear",
        "0",
        "--procs",
        "1",
        *(("--network", network) if network else ("--ice-host", "127.0.0.1")),
        "--report",
        str(report_dir),
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run:
        pinning = _WorkerPinning(run.pid)
        stderr = run.communicate(timeout=600)[1]
        pinning.stop()
    if run.returncode != 0:
        return {"ok": False, "error": stderr.strip().splitlines()[-1:]}
    report = json.loads((report_dir / "report.json").read_text())
    expected = report["summary"]["sessions_expected"]
    timeline = report["timeline"]
    all_in = next((r["t"] for r in timeline if r["connected"] >= expected), None)
    hold_rows = (
        [r for r in timeline if all_in + SETTLE_S <= r["t"] <= all_in + SETTLE_S + hold]
        if all_in is not None
        else []
    )
    connected = min((r["connected"] for r in hold_rows), default=0)
    received = sum(r["rtp_per_s"] for r in hold_rows)
    should = PACKETS_PER_S * sum(r["connected"] for r in hold_rows)
    arrival = received / should if should else 0.0
    # p99 over every lag probe of the hold (as for the aiortc pairs), not the worst second's
    slow_pct = slow_lag_pct(hold_rows)  # the report's own figure, over the hold's rows
    lag_ok = slow_pct is not None and slow_pct < 100 * SLOW_LAG_SHARE
    rss = [r["rss_mb"] for r in timeline]
    # what the profile's loss leaves to arrive (its mean loss; bursts count the same)
    loss = parse_profile(network).a_to_b.loss if network else 0.0
    return {
        "ok": len(hold_rows) >= hold - 1
        and connected == expected
        and (media == "none" or arrival >= MIN_ARRIVAL * (1 - loss))
        and lag_ok,
        "all_connected_at_s": all_in,
        "connected": f"{connected}/{expected}",
        "arrival": round(arrival, 3),
        "lag_slow_pct": slow_pct,
        # the pinned worker's CPU over the hold, in % of its one core
        "cpu_pct": round(sum(r.get("cpu_pct", 0.0) for r in hold_rows) / len(hold_rows), 1)
        if hold_rows
        else None,
        "worst_second_lag_p99_ms": round(
            max((r["loop_lag_p99_ms"] for r in hold_rows), default=float("inf")), 1
        ),
        "rss_first_mb": round(rss[0], 1) if rss else None,
        "rss_hold_mb": round(max(r["rss_mb"] for r in hold_rows), 1) if hold_rows else None,
        "sessions": connected,
    }


# --- plain aiortc pairs, no agent -------------------------------------------------------------


def _aiortc_pairs(participants: int, hold: float, out: Any) -> None:
    import uvloop

    from agent.media.sources import tone_track
    from agent.patches import install as install_patches
    from agent.peer.ice import restrict_host_addresses

    _pin_to_measured_core()  # before aiortc starts its encoder and decoder threads

    async def main() -> dict[str, Any]:
        from aiortc import RTCConfiguration, RTCPeerConnection
        from aiortc.mediastreams import MediaStreamError

        # plain aiortc: of the agent's patches only the one that keeps ICE on loopback
        install_patches(only={"ice_host_addresses"})
        restrict_host_addresses(["127.0.0.1"])
        pcs: list[RTCPeerConnection] = []
        all_connected = asyncio.Event()

        def check_connected() -> None:
            if len(pcs) == participants and all(p.connectionState == "connected" for p in pcs):
                all_connected.set()

        counts = [0]
        lags: list[float] = []

        async def consume(track: Any) -> None:
            try:
                while True:
                    await track.recv()  # decoded, like a real participant
                    counts[0] += 1
            except MediaStreamError:
                pass

        async def probe() -> None:
            while True:
                before = time.monotonic()
                await asyncio.sleep(0.05)
                lags.append(max(0.0, time.monotonic() - before - 0.05))

        tasks: set[asyncio.Task[None]] = set()
        prober = asyncio.create_task(probe())
        for _ in range(participants // 2):
            a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            for pc in (a, b):
                pc.addTrack(tone_track())
                pc.on("connectionstatechange", check_connected)
                pc.on("track", lambda t: tasks.add(asyncio.create_task(consume(t))))
                pcs.append(pc)
            await a.setLocalDescription(await a.createOffer())
            await b.setRemoteDescription(a.localDescription)
            await b.setLocalDescription(await b.createAnswer())
            await a.setRemoteDescription(b.localDescription)
            await asyncio.sleep(1 / RAMP_PER_S * 2)  # the same ramp as the agent runs
        # as for the agent: the hold starts once every connection is up
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(10.0, participants / 5)):
                await all_connected.wait()
        await asyncio.sleep(SETTLE_S)
        lags.clear()
        start_count, start = counts[0], time.monotonic()
        await asyncio.sleep(hold)
        frames = counts[0] - start_count
        elapsed = time.monotonic() - start
        connected = sum(1 for pc in pcs if pc.connectionState == "connected")
        slow = sum(1 for lag in lags if lag * 1000 >= MAX_LAG_MS)
        prober.cancel()
        for pc in pcs:
            await pc.close()
        arrival = frames / (PACKETS_PER_S * participants * elapsed)
        return {
            "ok": connected == participants
            and arrival >= MIN_ARRIVAL
            and bool(lags)
            and slow < SLOW_LAG_SHARE * len(lags),
            "connected": f"{connected}/{participants}",
            "arrival": round(arrival, 3),
            "lag_slow_pct": round(100 * slow / len(lags), 2) if lags else None,
        }

    out.put(uvloop.run(main()))


def run_aiortc_step(participants: int, hold: float) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=_aiortc_pairs, args=(participants, hold, out))
    process.start()
    result: dict[str, Any] = out.get(timeout=600)
    process.join(timeout=30)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ladder",
        type=int,
        nargs="+",
        default=[10, 16, 20, 24, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 140, 160, 200, 240],
    )
    parser.add_argument("--hold", type=float, default=8.0, help="seconds measured per step")
    parser.add_argument("--modes", nargs="+", default=["preencoded", "full", "aiortc"])
    parser.add_argument("--memory-sessions", type=int, default=100)
    parser.add_argument(
        "--network",
        choices=PROFILE_NAMES,
        default=None,
        help="run the load steps across an impaired link with this profile (docs/network.md)",
    )
    args = parser.parse_args(argv)
    if any(n % 2 for n in args.ladder):
        parser.error("--ladder: participants come in pairs, so every rung must be even")
    capacity: dict[str, int] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-capacity-") as tmp,
        DevServerProcess(Path(tmp) / "db.sqlite") as server,
    ):
        if _can_pin():
            others = os.sched_getaffinity(0) - {MEASURED_CPU}
            assert server.pid is not None
            os.sched_setaffinity(server.pid, others)
        else:
            print("# fewer than 2 CPUs: steps are not pinned (per process)", file=sys.stderr)
        for mode in args.modes:
            if mode == "aiortc" and args.network:
                print(
                    "# aiortc pairs: not run with --network (one process, loopback)",
                    file=sys.stderr,
                )
                continue
            capacity[mode] = 0
            for participants in args.ladder:
                if mode == "aiortc":
                    step = run_aiortc_step(participants, args.hold)
                else:
                    step = run_agent_step(
                        server, mode, participants, args.hold, Path(tmp), args.network
                    )
                print(
                    f"# {mode:<10} {participants:>4} participants: {json.dumps(step)}",
                    file=sys.stderr,
                    flush=True,
                )
                if not step["ok"]:
                    break
                capacity[mode] = participants
        idle = run_agent_step(
            server, "none", args.memory_sessions, args.hold, Path(tmp), args.network
        )
    if args.network:
        print(f"network profile: {args.network} ({parse_profile(args.network).describe()})")
    print(f"{'mode':<12}{'participants per core':>24}")
    for mode, held in capacity.items():
        print(f"{mode:<12}{held:>24}")
    if capacity.get("full"):
        print(f"preencoded / full: {capacity.get('preencoded', 0) / capacity['full']:.1f}x")
    if idle.get("sessions") and idle.get("rss_hold_mb") is not None:
        per_session = (idle["rss_hold_mb"] - idle["rss_first_mb"]) / idle["sessions"]
        print(
            f"idle memory per session: {per_session * 1024:.0f} KiB "
            f"({idle['sessions']} sessions, media none, {idle['rss_first_mb']} -> "
            f"{idle['rss_hold_mb']} MiB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
