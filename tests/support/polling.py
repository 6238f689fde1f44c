"""Poller tests' helpers: a sink (what the session manager is to a poller, reduced to a list) and
a running poller task that is cancelled on the way out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from agent.signaling.models import Signal
from agent.signaling.poller import SignalPoller


class HandlingSink:
    """Applies each signal at once (given its poller); negotiating, so the poller polls fast."""

    def __init__(self) -> None:
        self.poller: SignalPoller | None = None
        self.delivered: list[Signal] = []

    def deliver(self, signal: Signal) -> None:
        self.delivered.append(signal)
        if self.poller is not None:
            self.poller.handled(signal)

    def negotiating(self) -> bool:
        return True


@asynccontextmanager
async def running(poller: SignalPoller) -> AsyncIterator[SignalPoller]:
    """The poller's `run()` as a task for the duration of the block."""
    task = asyncio.create_task(poller.run())
    try:
        yield poller
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
