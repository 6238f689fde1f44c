"""The join page (static/join.js) in Chromium against the dev backend: a function error is an
error envelope whatever the HTTP status (200, 400, 560) and is final; only 429/5xx answers that are
not envelopes are retried."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

from agent.devserver.process import DevServerProcess
from tests.conftest import DevServerFactory
from tests.support.chromium import CHROMIUM, chromium_flags
from tests.support.devserver import GET_USER, LIFE, unique

WAIT_MS = 20_000
SETTLED = (
    "connvo.state.running || document.getElementById('status').textContent.startsWith('failed')"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's package, driven by Playwright's sync API)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=chromium_flags()
        )
        try:
            yield context
        finally:
            context.close()


def _join(browser: Any, server: DevServerProcess, meeting_id: str) -> tuple[str, bool]:
    """Open the page with autojoin (no media); (its status line, whether it joined)."""
    query = {"meeting": meeting_id, "name": unique("page"), "autojoin": 1, "audio": 0, "video": 0}
    page = browser.new_page()
    try:
        page.goto(f"{server.url}/join?{urlencode(query)}")
        page.wait_for_function(SETTLED, timeout=WAIT_MS)
        return page.text_content("#status"), bool(page.evaluate("connvo.state.running"))
    finally:
        page.close()


def _calls(server: DevServerProcess, function: str) -> int:
    return int(server.stats()["functions"].get(function, 0))


@pytest.mark.parametrize("status", [200, 400, 560])
def test_a_function_error_is_final_whatever_its_status(
    devserver_factory: DevServerFactory, browser: Any, status: int
) -> None:
    server = devserver_factory(error_status=status)
    meeting_id = server.meeting(unique("host"), state="scheduled")
    server.reset_stats()
    text, joined = _join(browser, server, meeting_id)
    assert not joined
    assert (
        text
        == "failed: meetings/lifecycle/joinMeeting: VALIDATION_ERROR: Cannot join inactive meeting"
    )
    assert _calls(server, LIFE + "joinMeeting") == 1  # not retried, even as a 560


def test_the_page_joins_when_errors_are_560(
    devserver_factory: DevServerFactory, browser: Any
) -> None:
    server = devserver_factory(error_status=560)
    text, joined = _join(browser, server, server.meeting(unique("host")))
    assert joined and text.startswith("joined as ")


def test_injected_500s_are_retried_then_reported(
    devserver_factory: DevServerFactory, browser: Any
) -> None:
    server = devserver_factory()
    meeting_id = server.meeting(unique("host"))
    server.set_faults(error_rate=1, functions=[GET_USER])
    server.reset_stats()
    text, joined = _join(browser, server, meeting_id)
    assert not joined
    assert text == f"failed: {GET_USER}: HTTP 500 Injected fault: internal error"
    assert _calls(server, GET_USER) == 4  # the page's attempts
