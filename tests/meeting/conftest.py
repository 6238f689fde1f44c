"""Fixtures for the public API's tests: a meeting on the dev backend and a way to join it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import agent
from tests.agent.conftest import Meeting, loopback_only, meeting

# the agent's tests' fixtures: ICE on 127.0.0.1 only (autouse), a meeting on the dev backend
__all__ = ["loopback_only", "meeting"]

JoinFactory = Callable[..., agent.Meeting]


@pytest.fixture
async def join(meeting: Meeting, tmp_path: Path) -> AsyncIterator[JoinFactory]:
    """`join(name="bot", **options)`: an agent.Meeting (not yet joined) for `name`; every one
    made is left at teardown."""
    made: list[agent.Meeting] = []

    def make(name: str = "bot", **options: Any) -> agent.Meeting:
        options.setdefault("meeting_check_interval", 0.3)
        m = agent.join(
            meeting.server.url,
            meeting.tokens[name],
            meeting.id,
            state_dir=tmp_path / f"state-{name}",
            ice_host_addresses=["127.0.0.1"],
            **options,
        )
        made.append(m)
        return m

    yield make
    for m in made:
        await m.leave()
