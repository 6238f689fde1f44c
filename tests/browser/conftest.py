"""Chromium as a peer: Playwright for Python drives Debian's `chromium` package (no download).

Playwright's sync API runs on one dedicated thread per browser, so the tests' event loop stays free
for the agent running in-process; tests await `Page` methods, which hop to that thread.

Network: the agent gathers only 127.0.0.1 (`loopback_only`), the page is opened with `loopback=1`,
so it signals only its 127.0.0.1 and mDNS candidates, and the dev backend returns no ICE servers.
Chromium is started with flags that keep it from any background networking.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.agent.conftest import Meeting, agent_factory, loopback_only, make_meeting, meeting
from tests.support.chromium import CHROMIUM, chromium_flags

__all__ = ["agent_factory", "loopback_only", "meeting"]

WAIT_S = 20.0
PAGE_CLOSE_S = 10.0


class Page:
    """A Playwright page, driven from its browser's thread; every method is awaitable."""

    def __init__(self, browser: Browser, page: Any, context: Any) -> None:
        self._browser = browser
        self._page = page
        self._context = context
        self.console: list[str] = []
        page.on("console", lambda msg: self.console.append(msg.text))

    async def goto(self, url: str) -> None:
        await self._browser.call(self._page.goto, url)

    async def reload(self) -> None:
        await self._browser.call(self._page.reload)

    async def evaluate(self, script: str, arg: Any = None) -> Any:
        return await self._browser.call(self._page.evaluate, script, arg)

    async def wait_for(self, expression: str, within: float = WAIT_S) -> Any:
        """Wait until the JavaScript expression is truthy in the page; returns its value."""

        def wait() -> Any:
            handle = self._page.wait_for_function(expression, timeout=within * 1000)
            return handle.json_value()

        try:
            return await self._browser.call(wait)
        except Exception as exc:
            log = await self.evaluate("window.connvo ? connvo.state.log.slice(-30) : []")
            raise AssertionError(f"page: {expression!r} not true: {exc}\npage log: {log}") from None

    async def summary(self) -> dict[str, Any]:
        return await self.evaluate("connvo.summary()")  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self._browser.call(self._context.close)


class Browser:
    """One headless Chromium, owned by a thread of its own (Playwright's sync API)."""

    def __init__(self, flags: list[str]) -> None:
        if not os.access(CHROMIUM, os.X_OK):
            pytest.fail(
                f"{CHROMIUM} is missing: install Debian's chromium package "
                "(apt-get install chromium), as the README's test command does"
            )
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="chromium")
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        self._flags = flags
        self._playwright: Any = None
        self._browser: Any = None
        self._executor.submit(self._start).result(timeout=60)

    def _start(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        # A persistent context gives the fresh user-data-dir explicitly.
        self._browser = self._playwright.chromium.launch_persistent_context(
            self._profile.name, executable_path=CHROMIUM, headless=True, args=self._flags
        )

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def new_page(self, url: str, hold_first: tuple[str, float] | None = None) -> Page:
        """A page opened at `url`; `hold_first=(function, seconds)` delays the page's first call
        of that backend function (the one fault injected: a slow response on demand)."""
        page = await self.call(self._browser.new_page)
        if hold_first is not None:
            # Wrapped in the page, not a Playwright route: the sync API runs route handlers only
            # while a Playwright call is in progress, so a request made while the test waited on
            # something else stayed held until the next call (and the page never went on).
            function, seconds = hold_first
            script = _HOLD_FIRST_SCRIPT % (json.dumps(f"/api/run/{function}"), 1000 * seconds)
            await self.call(page.add_init_script, script)
        wrapped = Page(self, page, _PageCloser(page))
        await wrapped.goto(url)
        return wrapped

    def close(self) -> None:
        def stop() -> None:
            if self._browser is not None:
                self._browser.close()
            if self._playwright is not None:
                self._playwright.stop()

        try:
            self._executor.submit(stop).result(timeout=30)
            self._executor.shutdown(wait=True)
        finally:
            # after a timeout the thread may still be stuck in Chromium: never wait on it
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._profile.cleanup()


_HOLD_FIRST_SCRIPT = """(() => {
  const realFetch = window.fetch.bind(window);
  let held = false;
  window.fetch = async (input, init) => {
    const url = typeof input === 'string' ? input : input.url;
    if (!held && url.endsWith(%s)) {
      held = true;
      await new Promise((resolve) => setTimeout(resolve, %d));
    }
    return realFetch(input, init);
  };
})();"""


class _PageCloser:
    """Closes one page (pages of a persistent context share it)."""

    def __init__(self, page: Any) -> None:
        self._page = page

    def close(self) -> None:
        if not self._page.is_closed():
            self._page.close()


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    """Headless Chromium with fake camera and microphone, permission granted."""
    browser = Browser(chromium_flags(media_permission=True))
    yield browser
    browser.close()


@pytest.fixture
def mdns_chromium() -> Iterator[Browser]:
    """Headless Chromium without media permission: its host candidates are mDNS `.local` names."""
    browser = Browser(chromium_flags(media_permission=False))
    yield browser
    browser.close()


@pytest.fixture
async def pages() -> AsyncIterator[list[Page]]:
    """Pages a test opened; closed at teardown."""
    opened: list[Page] = []
    yield opened
    stuck = 0
    for page in opened:
        try:
            # bounded: a page that never closes fails here in seconds, not at pytest's timeout
            async with asyncio.timeout(PAGE_CLOSE_S):
                await page.close()
        except TimeoutError:
            stuck += 1
        except Exception:  # the browser may be gone already
            pass
    if stuck:
        pytest.fail(f"{stuck} page(s) did not close within {PAGE_CLOSE_S} s")


def join_url(meeting: Meeting, name: str, **params: Any) -> str:
    query = {"meeting": meeting.id, "name": name, "autojoin": 1, "loopback": 1, **params}
    return f"{meeting.server.url}/join?{urlencode(query)}"


async def open_page(
    browser: Browser,
    pages: list[Page],
    meeting: Meeting,
    name: str,
    hold_first: tuple[str, float] | None = None,
    **params: Any,
) -> tuple[Page, str]:
    """Open the join page as `name`; returns it with its session id once it has joined."""
    page = await browser.new_page(join_url(meeting, name, **params), hold_first)
    pages.append(page)
    session_id = await page.wait_for("connvo.state.running && connvo.state.sessionId")
    return page, str(session_id)


def backend_signals(meeting: Meeting, session_id: str | None = None) -> list[dict[str, Any]]:
    """Signals rows of the meeting in the dev backend's database (read-only)."""
    db = Path(meeting.server.db)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        sql = "SELECT * FROM signals WHERE meeting_id = ?"
        args: list[Any] = [meeting.id]
        if session_id is not None:
            sql += " AND session_id = ?"
            args.append(session_id)
        return [dict(r) for r in conn.execute(sql + " ORDER BY seq", args).fetchall()]
    finally:
        conn.close()


__all__ += ["Browser", "Page", "backend_signals", "join_url", "make_meeting", "open_page"]
