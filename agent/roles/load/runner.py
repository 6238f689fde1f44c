"""A whole load run: provision identities and meetings, fan participants out over worker
processes (each with its own uvloop event loop), show the live view, write the report."""

from __future__ import annotations

import asyncio
import multiprocessing
import tempfile
import time
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from agent.convex import make_http_client
from agent.roles.load.live import LiveView
from agent.roles.load.plan import Identity, LoadPlan
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

    async def main() -> int:
        runner = LoadWorker(plan, identities, worker=worker, state_dir=Path(state_dir), emit=emit)
        result = await runner.run(t0)
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
    async with make_http_client(max_connections=50) as http:
        identities = await provision(plan, http)
    slices = [identities[w :: plan.procs] for w in range(plan.procs)]
    context = multiprocessing.get_context("spawn")
    started_at = time.time()
    t0 = started_at + START_MARGIN_S + 0.5 * plan.procs
    results: dict[int, dict[str, Any]] = {}
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="connvo-load-") as state_dir:
        pipes, processes = [], []
        for w, chunk in enumerate(slices):
            parent_end, child_end = context.Pipe(duplex=False)
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
        loop = asyncio.get_running_loop()
        with LiveView(plan.participants, plan.procs) as live:
            open_pipes = list(pipes)
            while open_pipes:
                ready = await loop.run_in_executor(
                    None, multiprocessing.connection.wait, open_pipes, 0.5
                )
                for conn in ready:
                    assert isinstance(conn, Connection)
                    try:
                        kind, worker, payload = conn.recv()
                    except EOFError:
                        open_pipes.remove(conn)
                        continue
                    if kind == "sample":
                        live.update(worker, payload)
                    elif kind == "result":
                        results[worker] = payload
                    else:
                        errors.append(f"worker {worker}: {payload}")
        for process in processes:
            process.join(timeout=10)
    if errors or len(results) != plan.procs:
        raise RuntimeError("; ".join(errors) or "a worker process exited without a result")
    ordered = [results[w] for w in sorted(results)]
    return build_report(
        plan.describe(),
        [str(plan.shard)],
        started_at,
        [p for r in ordered for p in r["participants"]],
        [
            [{k: v for k, v in s.items() if k != "time_to_connected_s"} for s in r["samples"]]
            for r in ordered
        ],
    )


async def run_and_write(plan: LoadPlan) -> tuple[dict[str, Any], list[Path]]:
    report = await run_load(plan)
    return report, list(write_report(report, plan.report_dir))
