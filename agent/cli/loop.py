"""Running a coroutine as a command: uvloop when available, errors as one line."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any

import click

# CPython collects the young generation every 700 net allocations; answering fifty offers at once
# makes thousands of short-lived aiortc objects, and that was ~30 young collections (24-34 ms of
# the burst). Every 5,000: 4-5 collections, 9-17 ms. Survivors are few, so memory hardly moves.
YOUNG_COLLECTION_THRESHOLD = 5000


def run_async(main: Coroutine[Any, Any, int]) -> int:
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


class CommandError(click.ClickException):
    """A failure the user can act on, printed as one line."""
