"""The CPU split of the benchmarks that measure the agent's CPU: the agent on one CPU, the simulated
rest of the meeting (dev backend, remote peers) on the others. Imported by the scripts beside it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class CpuSplit:
    """The agent on one CPU, the simulated rest of the meeting (backend, peers) on the others."""

    agent: set[int]
    world: set[int]

    @classmethod
    def of_this_machine(cls) -> CpuSplit | None:
        cpus = sorted(os.sched_getaffinity(0))
        return cls({cpus[0]}, set(cpus[1:])) if len(cpus) >= 2 else None


@contextlib.contextmanager
def spawning_world(split: CpuSplit | None) -> Iterator[None]:
    """Processes started inside run on the world's CPUs; this thread on the agent's afterwards."""
    if split is None:
        yield
        return
    os.sched_setaffinity(0, split.world)  # inherited by the processes spawned now
    try:
        yield
    finally:
        os.sched_setaffinity(0, split.agent)
