"""Running a coroutine as a command: uvloop when available, errors as one line."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any

import click


def run_async(main: Coroutine[Any, Any, int]) -> int:
    # Modules, classes and settings live as long as the process: keep them out of every later
    # full collection (a full collection's pause grows with the number of tracked objects).
    gc.collect()
    gc.freeze()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(main)
    return uvloop.run(main)


class CommandError(click.ClickException):
    """A failure the user can act on, printed as one line."""
