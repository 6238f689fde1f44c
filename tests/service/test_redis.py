"""The service over Redis: a real redis-server, `connvo-agent serve --redis` and `connvo-agent
worker` processes, the dev backend and real aiortc participants."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import Meeting
from tests.service.conftest import bot_request
from tests.support.redis_server import RedisServer, WorkerProcess
from tests.support.service import Client, ServiceProcess
from tests.support.waiting import poll_until

RECOVERY_TARGET_S = 15.0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.close()


@pytest.fixture
def workers(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(worker_id: str, *extra: str, max_bots: int = 10) -> WorkerProcess:
        worker = WorkerProcess(
            redis_server.url, worker_id, tmp_path / "workers", *extra, max_bots=max_bots
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


@pytest.fixture
def redis_service(
    service_factory: Callable[..., ServiceProcess], redis_server: RedisServer
) -> ServiceProcess:
    return service_factory("--redis", redis_server.url)


@pytest.fixture
async def redis_client(redis_service: ServiceProcess) -> AsyncIterator[Client]:
    c = Client(redis_service.url)
    yield c
    await c.aclose()


def in_meeting_on(worker: str) -> Callable[[dict[str, Any]], bool]:
    return lambda b: b.get("state") == "in_meeting" and b.get("worker") == worker


async def test_a_killed_workers_bots_rejoin_on_another_worker(
    redis_client: Client, workers: Callable[..., WorkerProcess], meeting: Meeting
) -> None:
    first = workers("w1")
    response = await redis_client.create(bot_request(meeting))
    bot_id = response.json()["id"]
    await redis_client.wait_for(bot_id, in_meeting_on("w1"))
    workers("w2")
    first.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    bot = await redis_client.wait_for(bot_id, in_meeting_on("w2"), within=RECOVERY_TARGET_S + 5)
    recovery = time.monotonic() - killed
    assert recovery <= RECOVERY_TARGET_S, recovery
    history = [(h["state"], h["reason"]) for h in bot["history"]]
    assert history == [
        ("queued", None),
        ("joining", None),
        ("in_meeting", None),
        ("queued", "worker_lost"),
        ("joining", None),
        ("in_meeting", None),
    ], history
    assert bot["attempt"] == 2
    assert "w1" in bot["history"][3]["detail"]


async def test_sigterm_drains_a_worker_and_hands_its_bots_to_another(
    redis_client: Client, workers: Callable[..., WorkerProcess], meeting: Meeting
) -> None:
    draining = workers("w1", "--grace", "0.5")
    response = await redis_client.create(bot_request(meeting))
    bot_id = response.json()["id"]
    await redis_client.wait_for(bot_id, in_meeting_on("w1"))
    workers("w2")
    draining.process.send_signal(signal.SIGTERM)
    bot = await redis_client.wait_for(bot_id, in_meeting_on("w2"))
    assert await asyncio.to_thread(draining.process.wait, 30) == 0
    reasons = [(h["state"], h["reason"]) for h in bot["history"]]
    assert ("queued", "handoff") in reasons, reasons
    assert not any(state in ("ended", "failed") for state, _ in reasons)


async def test_bots_run_on_while_the_service_restarts(
    redis_service: ServiceProcess,
    service_factory: Callable[..., ServiceProcess],
    redis_server: RedisServer,
    workers: Callable[..., WorkerProcess],
    meeting: Meeting,
) -> None:
    workers("w1")
    client = Client(redis_service.url)
    try:
        bot_id = (await client.create(bot_request(meeting))).json()["id"]
        await client.wait_state(bot_id, "in_meeting")
    finally:
        await client.aclose()
    assert await asyncio.to_thread(redis_service.stop) == 0
    again = service_factory("--redis", redis_server.url, state_dir=redis_service.state_dir)
    client = Client(again.url)
    try:
        bot = await client.wait_state(bot_id, "in_meeting")
        assert bot["attempt"] == 1 and len(bot["history"]) == 3  # never interrupted
        assert (await client.http.delete(f"/v1/bots/{bot_id}")).status_code == 202
        bot = await client.wait_state(bot_id, "ended")
        assert bot["reason"] == "requested"
    finally:
        await client.aclose()


async def test_a_worker_only_taken_for_lost_lets_its_bots_go_and_runs_each_once(
    redis_client: Client, workers: Callable[..., WorkerProcess], meeting: Meeting
) -> None:
    """A stalled worker (SIGSTOP for longer than the heartbeat's life) is taken for lost and its
    bot queued again; when it comes back it drops the old attempt and runs the new one, lists
    itself again, and a DELETE leaves no bot running anywhere."""
    worker = workers("w1")
    bot_id = (await redis_client.create(bot_request(meeting))).json()["id"]
    await redis_client.wait_for(bot_id, in_meeting_on("w1"))
    worker.process.send_signal(signal.SIGSTOP)
    await redis_client.wait_for(bot_id, lambda b: b["attempt"] == 2 or b["state"] == "queued")
    worker.process.send_signal(signal.SIGCONT)
    bot = await redis_client.wait_for(
        bot_id, lambda b: b["state"] == "in_meeting" and b["attempt"] == 2
    )
    assert ("queued", "worker_lost") in [(h["state"], h["reason"]) for h in bot["history"]]

    async def running_on_w1() -> int | None:
        metrics = (await redis_client.http.get("/metrics")).text
        for line in metrics.splitlines():
            if line.startswith('connvo_service_worker_bots{worker="w1"}'):
                return int(float(line.split()[-1]))
        return None  # not listed (yet)

    async with asyncio.timeout(30):  # listed again, with one bot: the new attempt
        await poll_until(lambda: _equals(running_on_w1(), 1))
    assert (await redis_client.http.delete(f"/v1/bots/{bot_id}")).status_code == 202
    await redis_client.wait_state(bot_id, "ended")
    async with asyncio.timeout(30):
        await poll_until(lambda: _equals(running_on_w1(), 0))


async def _equals(value: Any, expected: int) -> bool:
    return await value == expected
