"""A whole load run: provision identities and meetings, fan participants out over worker
processes (each with its own uvloop event loop), show the live view, write the report.

With `--network PROFILE` the workers run on the two sides of an ImpairedLink, each participant on
the side its plan gives it, and the report gets a `network` section (the profile, who was where,
what the link did)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import socket
import sys
import tempfile
import time
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from agent.convex import make_http_client
from agent.network import LANES, ImpairedLink, LinkError, TcpForwarder
from agent.roles.load.live import LiveView
from agent.roles.load.plan import Identity, LoadPlan, PlanError, backend_address
from agent.roles.load.provision import provision
from agent.roles.load.report import build_report, write_report
from agent.roles.load.worker import LoadWorker, Sample

START_MARGIN_S = 1.0  # workers need a moment to start before the shared t0


def _worker_main(
    plan: LoadPlan,
    identities: list[Identity],
    worker: int,
    t0: float,
    state_dir: str,
    conn: Connection,
) -> None:
    """Entry point of a worker process."""
    from agent.aio import run_async
    from agent.logsetup import setup_logging

    setup_logging("warning")

    def emit(sample: Sample) -> None:
        conn.send(("sample", worker, asdict(sample)))

    async def settled() -> float:
        """Tell the runner this worker's participants have connected; the end of the hold."""
        conn.send(("settled", worker, None))
        # a thread of its own waits for the answer (samples are still sent meanwhile)
        kind, end = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        assert kind == "end"
        return float(end)

    async def main() -> int:
        runner = LoadWorker(plan, identities, worker=worker, state_dir=Path(state_dir), emit=emit)
        result = await runner.run(t0, settled)
        conn.send(("result", worker, asdict(result)))
        return 0

    try:
        run_async(main())
    except BaseException as exc:
        conn.send(("error", worker, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        conn.close()


async def run_load(plan: LoadPlan) -> dict[str, Any]:
    network: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="connvo-load-") as state_dir:
        if plan.network is None:
            identities = await _provision(plan)
            started_at = time.time()
            results, errors = await _run_here(plan, identities, started_at, state_dir)
        else:
            # the link first: a caller without the privileges it needs learns it at once
            started_at, results, errors, network = await _run_on_link(plan, state_dir)
    if errors or len(results) != _workers(plan):
        raise RuntimeError("; ".join(errors) or "a worker process exited without a result")
    ordered = [results[w] for w in sorted(results)]
    report = build_report(
        plan.describe(),
        [str(plan.shard)],
        started_at,
        [p for r in ordered for p in r["participants"]],
        [
            [{k: v for k, v in s.items() if k != "time_to_connected_s"} for s in r["samples"]]
            for r in ordered
        ],
    )
    if network is not None:
        report["network"] = network
    return report


async def _provision(plan: LoadPlan) -> list[Identity]:
    async with make_http_client(max_connections=50) as http:
        return await provision(plan, http)


def _workers(plan: LoadPlan) -> int:
    return plan.procs if plan.network is None else sum(plan.workers_per_side)


def _start_time(started_at: float, workers: int) -> float:
    return started_at + START_MARGIN_S + 0.5 * workers


async def _run_here(
    plan: LoadPlan, identities: list[Identity], started_at: float, state_dir: str
) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """Workers in this namespace, started by multiprocessing."""
    slices = [identities[w :: plan.procs] for w in range(plan.procs)]
    context = multiprocessing.get_context("spawn")
    t0 = _start_time(started_at, plan.procs)
    pipes, processes = [], []
    for w, chunk in enumerate(slices):
        parent_end, child_end = context.Pipe()  # duplex: the runner gives the hold's end
        process = context.Process(
            target=_worker_main,
            args=(plan, chunk, w, t0, state_dir, child_end),
            name=f"load-worker-{w}",
            daemon=True,
        )
        process.start()
        child_end.close()
        pipes.append(parent_end)
        processes.append(process)
    outcome = await _collect(plan, pipes)
    for process in processes:
        process.join(timeout=10)
    return outcome


async def _run_on_link(
    plan: LoadPlan, state_dir: str
) -> tuple[float, dict[int, dict[str, Any]], list[str], dict[str, Any]]:
    """Workers on both sides of an ImpairedLink (docs/network.md, "Load runs on an impaired
    network"): each participant on its side (Identity.side), the backend reached through a
    forwarder inside each side, ICE on the side's address only."""
    assert plan.network is not None
    address = backend_address(plan.url)
    per_side = dict(zip(("a", "b"), plan.workers_per_side, strict=True))
    workers = sum(per_side.values())
    try:
        async with (
            ImpairedLink(plan.network) as link,
            TcpForwarder(link.a, address) as forward_a,
            TcpForwarder(link.b, address) as forward_b,
        ):
            identities = await _provision(plan)
            started_at = time.time()
            t0 = _start_time(started_at, workers)
            pipes: list[Connection] = []
            processes: list[asyncio.subprocess.Process] = []
            w = 0
            for name, count in per_side.items():
                side = link.side("a" if name == "a" else "b")
                on_side = [i for i in identities if i.side == name]
                # the worker's own view: its side's address for ICE, no link to build
                worker_plan = dataclasses.replace(
                    plan, procs=workers, ice_host_addresses=(side.address,), network=None
                )
                for k in range(count):
                    ours, theirs = socket.socketpair()
                    with ours, theirs:
                        process = await side.python(
                            "-m",
                            "agent.roles.load.runner",
                            str(theirs.fileno()),
                            pass_fds=(theirs.fileno(),),
                        )
                        conn = Connection(ours.detach())
                    conn.send((worker_plan, on_side[k::count], w, t0, state_dir))
                    pipes.append(conn)
                    processes.append(process)
                    w += 1
            results, errors = await _collect(plan, pipes)
            for process in processes:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        await process.wait()
            stats = await link.stats()
            link_figures: dict[str, Any] = {
                lane: dataclasses.asdict(stats.lane(lane)) for lane in LANES
            }
            link_figures["relay_cpu_s"] = round(stats.relay_cpu_s, 3)
            network = {
                "profile": plan.network,
                "impairment": {lane: link.impairment(lane).describe() for lane in LANES},
                "addresses": {"a": link.a.address, "b": link.b.address},
                "workers": per_side,
                "participants": {i.name: i.side for i in identities},
                "connections_crossing": crossing_connections(plan, identities),
                "backend_connections": forward_a.connections + forward_b.connections,
                "link": link_figures,
            }
    except LinkError as exc:
        raise PlanError(f"--network: {exc}") from None
    return started_at, results, errors, network


def crossing_connections(plan: LoadPlan, identities: list[Identity]) -> dict[str, int]:
    """Connections (each counted once) whose ends are on different sides, and all of them."""
    crossing = total = 0
    by_meeting: dict[str, list[Identity]] = {}
    for identity in identities:
        by_meeting.setdefault(identity.meeting_id, []).append(identity)
    for group in by_meeting.values():
        for i, x in enumerate(group):
            for y in group[i + 1 :]:
                if plan.topology == "star" and not (x.hub or y.hub):
                    continue
                total += 1
                crossing += x.side != y.side
    return {"crossing": crossing, "total": total}


async def _collect(
    plan: LoadPlan, pipes: list[Connection]
) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """Every worker's samples (to the live view) and result, until every pipe is closed.

    Once every worker still running has said its participants connected ("settled"), each is
    told when the hold ends: `duration` seconds from then, the same time for all, so nobody
    leaves while another worker's participants are still connecting to them."""
    results: dict[int, dict[str, Any]] = {}
    errors: list[str] = []
    loop = asyncio.get_running_loop()
    settled: set[Connection] = set()
    hold_given = False
    with LiveView(plan.participants, len(pipes)) as live:
        open_pipes = list(pipes)
        while open_pipes:
            if not hold_given and settled and settled.issuperset(open_pipes):
                hold_given = True
                end = time.time() + plan.duration
                for pipe in settled:
                    with contextlib.suppress(OSError):  # a worker gone since: its EOF follows
                        pipe.send(("end", end))
            ready = await loop.run_in_executor(
                None, multiprocessing.connection.wait, open_pipes, 0.5
            )
            for conn in ready:
                assert isinstance(conn, Connection)
                try:
                    kind, worker, payload = conn.recv()
                except EOFError:
                    open_pipes.remove(conn)
                    conn.close()
                    continue
                if kind == "sample":
                    live.update(worker, payload)
                elif kind == "settled":
                    settled.add(conn)
                elif kind == "result":
                    results[worker] = payload
                else:
                    errors.append(f"worker {worker}: {payload}")
    return results, errors


async def run_and_write(plan: LoadPlan) -> tuple[dict[str, Any], list[Path]]:
    report = await run_load(plan)
    return report, list(write_report(report, plan.report_dir))


def _worker_from_fd(fd: int) -> None:
    """A worker started in a side of the link (`python -m agent.roles.load.runner FD`): its
    arguments, then its samples and result, travel over the socket `fd`."""
    conn = Connection(fd)
    plan, identities, worker, t0, state_dir = conn.recv()
    _worker_main(plan, identities, worker, t0, state_dir, conn)


if __name__ == "__main__":
    _worker_from_fd(int(sys.argv[1]))
