"""Fixtures of the service's tests: a dev backend meeting (tests/agent/conftest.py), the service
as a real process, a real webhook receiver, and the API's client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.devserver.process import DevServerProcess
from tests.agent.conftest import Meeting, loopback_only, make_meeting, meeting
from tests.support.service import SECRET, Client, ServiceProcess, WebhookReceiver

__all__ = ["loopback_only", "make_meeting", "meeting"]


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def start(*extra: str, state_dir: Path | None = None, **kw: Any) -> ServiceProcess:
        service = ServiceProcess(state_dir or tmp_path / "service", *extra, **kw)
        started.append(service)
        return service.start()

    yield start
    for service in started:
        service.close()


@pytest.fixture
def service(service_factory: Callable[..., ServiceProcess]) -> ServiceProcess:
    return service_factory("--workers", "2", "--max-bots", "20")


@pytest.fixture(scope="module")
def shared_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One service for a module's tests (a module uses it as its `service`): each test looks
    only at the bots it made."""
    process = ServiceProcess(
        tmp_path_factory.mktemp("service") / "service", "--workers", "2", "--max-bots", "20"
    )
    yield process.start()
    process.close()


@pytest.fixture(scope="module")
def shared_devserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServerProcess]:
    """One dev backend for a module's tests (a module uses it as its `devserver`): each test
    has a meeting of its own on it."""
    path = tmp_path_factory.mktemp("devserver") / "devserver.sqlite"
    with DevServerProcess(path, generation=2, ids="random") as server:
        yield server


@pytest.fixture
async def client(service: ServiceProcess) -> AsyncIterator[Client]:
    c = Client(service.url)
    yield c
    await c.aclose()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    r = await WebhookReceiver().start()
    yield r
    await r.close()


def bot_request(
    meeting: Meeting, receiver: WebhookReceiver | None = None, **fields: Any
) -> dict[str, Any]:
    """A request for a bot of `meeting`'s "bot" user, ICE on loopback, prompt checks."""
    settings = {
        "meeting_check_interval": 0.3,
        **fields.pop("settings", {}),
    }
    body: dict[str, Any] = {
        "meeting_id": meeting.id,
        "url": meeting.server.url,
        "token": meeting.tokens["bot"],
        "role": "bot",
        "settings": settings,
        **fields,
    }
    if receiver is not None:
        body["webhook"] = {"url": receiver.url, "secret": SECRET}
    return body
