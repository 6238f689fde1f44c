"""A bounded queue that never blocks its producer: the newest items are kept, the oldest dropped."""

from __future__ import annotations

import asyncio
import collections
from typing import Any


class Feed:
    """One reader's bounded queue: the newest `limit` items, the oldest dropped and counted."""

    def __init__(self, limit: int) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self._ended = False
        self.dropped = 0

    def put(self, item: Any) -> None:
        if len(self._items) >= self._limit:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._ready.set()

    def end(self) -> None:
        self._ended = True
        self._ready.set()

    async def get(self) -> Any:
        """The next item, or None once ended and empty."""
        while not self._items:
            if self._ended:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()
