"""Fault wrappers around the real dev backend, for what it cannot produce itself: an httpx transport
that forwards every request to the backend and then (optionally) replaces or edits its response."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx

ResponseEditor = Callable[[httpx.Request, httpx.Response], httpx.Response | None]


class EditingTransport(httpx.AsyncBaseTransport):
    """Forwards to the real server; `editor` may return a different response (None: keep)."""

    def __init__(self, editor: ResponseEditor | None = None) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.editor = editor
        self.edited = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if self.editor is None:
            return response
        await response.aread()
        await response.aclose()
        replacement = self.editor(request, response)
        if replacement is None:
            return httpx.Response(
                response.status_code, headers=response.headers, content=response.content
            )
        self.edited += 1
        return replacement

    async def aclose(self) -> None:
        await self.inner.aclose()


class PageInjector:
    """Adds rows to successful getPendingSignals pages: each queued batch goes into the next page
    (and, with `repeat`, into that many pages, as a backend delivering twice would)."""

    def __init__(self) -> None:
        self._queue: list[tuple[list[Any], int]] = []
        self.pages_edited = 0
        self.delivered = asyncio.Event()

    def inject(self, rows: list[Any], repeat: int = 1) -> None:
        self.delivered.clear()
        self._queue.append((rows, repeat))

    def __call__(self, request: httpx.Request, response: httpx.Response) -> httpx.Response | None:
        if not request.url.path.endswith("/getPendingSignals") or not self._queue:
            return None
        if response.status_code != 200:
            return None
        envelope = json.loads(response.content)
        rows, repeat = self._queue[0]
        envelope["value"] = list(envelope["value"]) + rows
        if repeat <= 1:
            self._queue.pop(0)
            if not self._queue:
                self.delivered.set()
        else:
            self._queue[0] = (rows, repeat - 1)
        self.pages_edited += 1
        return httpx.Response(
            200, headers={"Content-Type": "application/json"}, content=json.dumps(envelope)
        )
