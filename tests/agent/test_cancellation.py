"""A stop that arrives just as a waited-for event is set still stops (no swallowed cancellation)."""

from __future__ import annotations

import asyncio

import pytest

from agent.aio import wait_event


async def _cancel_as_set(event: asyncio.Event, task: asyncio.Task[object]) -> None:
    """Set the event and cancel the waiting task in one step of the loop (the race)."""
    event.set()
    task.cancel()
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_wait_event_reports_set_and_timeout() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_soon(event.set)
    assert await wait_event(event, 5) is True


async def test_wait_event_keeps_a_cancellation_that_arrives_as_the_event_is_set() -> None:
    # asyncio.wait_for(event.wait(), t) on Python 3.11 returns True here instead (gh-86296)
    event = asyncio.Event()
    task = asyncio.create_task(wait_event(event, 30))
    await asyncio.sleep(0)  # the task is now waiting
    await _cancel_as_set(event, task)  # type: ignore[arg-type]
