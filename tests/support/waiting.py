"""Waiting on what only another process knows (the backend): poll it, bounded by the caller's
asyncio.timeout. In-process state is waited on with events instead."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

POLL_INTERVAL_S = 0.05


async def poll_until(check: Callable[[], Awaitable[Any]]) -> Any:
    """Call `check` until it returns something truthy, and return that."""
    while True:
        result = await check()
        if result:
            return result
        await asyncio.sleep(POLL_INTERVAL_S)
