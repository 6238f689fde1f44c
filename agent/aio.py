"""asyncio helpers shared by every layer: running a coroutine as a process's main, waiting."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any

# CPython collects the young generation every 700 net allocations; answering fifty offers at once
# makes thousands of short-lived aiortc objects, and that was ~30 young collections (24-34 ms of
# the burst). Every 5,000: 4-5 collections, 9-17 ms. Survivors are few, so memory hardly moves.
YOUNG_COLLECTION_THRESHOLD = 5000


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` as the process's event loop (uvloop when available); its result is returned."""
    # Modules, classes and settings live as long as the process: keep them out of every later
    # full collection (a full collection's pause grows with the number of tracked objects).
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(main)
    return uvloop.run(main)


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until `event` is set or `seconds` pass; True if it was set.

    Not `asyncio.wait_for(event.wait(), timeout)`: on Python 3.11, when the waiting task is
    cancelled just as the event is set, wait_for returns the event's result and the cancellation
    is lost (CPython gh-86296, fixed in 3.12). A loop waiting like that inside a TaskGroup then
    never ends, and neither does the process: the load workers' and the agent's exit hangs.
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
