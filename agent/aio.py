"""asyncio helpers shared by every layer."""

from __future__ import annotations

import asyncio


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
