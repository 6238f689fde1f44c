"""The local pool when things break: the service restarted mid-meeting, a worker killed with -9,
a worker that hangs (SIGSTOP). Real processes throughout."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

from tests.agent.conftest import Meeting
from tests.service.conftest import bot_request
from tests.support.service import Client, ServiceProcess, WebhookReceiver


def worker_pid(worker_id: str) -> int:
    """The pid of the local worker process named `worker_id` (its command line says so)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--worker-id" in cmdline and worker_id.encode() in cmdline:
            return int(entry.name)
    raise AssertionError(f"no process for worker {worker_id}")


async def test_the_service_restarted_mid_meeting_rejoins_its_bots(
    service_factory: Callable[..., ServiceProcess], meeting: Meeting, receiver: WebhookReceiver
) -> None:
    service = service_factory("--workers", "1")
    client = Client(service.url)
    try:
        bot_id = (await client.create(bot_request(meeting, receiver))).json()["id"]
        await client.wait_state(bot_id, "in_meeting")
    finally:
        await client.aclose()
    assert await asyncio.to_thread(service.stop) == 0
    again = service_factory("--workers", "1", state_dir=service.state_dir)
    client = Client(again.url)
    try:
        bot = await client.wait_for(
            bot_id, lambda b: [h["state"] for h in b["history"]].count("in_meeting") == 2
        )
        assert [(h["state"], h["reason"]) for h in bot["history"]] == [
            ("queued", None),
            ("joining", None),
            ("in_meeting", None),
            ("queued", "handoff"),
            ("joining", None),
            ("in_meeting", None),
        ]
        assert bot["state"] == "in_meeting"
        await client.http.delete(f"/v1/bots/{bot_id}")
        await client.wait_state(bot_id, "ended")
    finally:
        await client.aclose()
    # every state change reached the receiver once, in order, across the restart
    await receiver.wait_for(lambda: len(receiver.events("bot.state_changed")) == 8)
    states = [e["data"]["state"] for e in receiver.events("bot.state_changed")]
    assert states[-2:] == ["leaving", "ended"] and states[3] == "queued"


async def test_a_killed_local_worker_s_bots_rejoin_on_another(
    service_factory: Callable[..., ServiceProcess], meeting: Meeting
) -> None:
    service = service_factory("--workers", "2", "--max-bots", "4")
    client = Client(service.url)
    try:
        bot_id = (await client.create(bot_request(meeting))).json()["id"]
        first = (await client.wait_state(bot_id, "in_meeting"))["worker"]
        os.kill(worker_pid(first), signal.SIGKILL)
        bot = await client.wait_for(
            bot_id, lambda b: b["state"] == "in_meeting" and b["worker"] != first
        )
        reasons = [(h["state"], h["reason"]) for h in bot["history"]]
        assert ("queued", "worker_lost") in reasons, reasons
    finally:
        await client.aclose()


async def test_a_hung_local_worker_is_killed_and_its_bots_rejoin(
    service_factory: Callable[..., ServiceProcess], meeting: Meeting
) -> None:
    service = service_factory("--workers", "2", "--max-bots", "4", "--worker-timeout", "2")
    client = Client(service.url)
    try:
        bot_id = (await client.create(bot_request(meeting))).json()["id"]
        first = (await client.wait_state(bot_id, "in_meeting"))["worker"]
        pid = worker_pid(first)
        os.kill(pid, signal.SIGSTOP)  # alive, silent: hung
        bot = await client.wait_for(
            bot_id, lambda b: b["state"] == "in_meeting" and b["worker"] != first
        )
        lost = [h for h in bot["history"] if h["reason"] == "worker_lost"]
        assert lost and "no heartbeat" in lost[0]["detail"], bot["history"]
        assert _gone(pid)  # killed
    finally:
        await client.aclose()


def _gone(pid: int) -> bool:
    """The process is dead (reaped, or a zombie awaiting its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


async def test_a_bot_whose_workers_keep_dying_fails_worker_lost(
    service_factory: Callable[..., ServiceProcess], meeting: Meeting
) -> None:
    """Each time the bot is in its meeting its worker is killed: after the third lost worker
    it is not run again, and ends `failed` with reason `worker_lost`."""
    service = service_factory("--workers", "2", "--max-bots", "4")
    client = Client(service.url)
    try:
        bot_id = (await client.create(bot_request(meeting))).json()["id"]
        for attempt in (1, 2, 3):
            bot = await client.wait_for(
                bot_id, lambda b, n=attempt: b["state"] == "in_meeting" and b["attempt"] == n
            )
            os.kill(worker_pid(bot["worker"]), signal.SIGKILL)
        bot = await client.wait_state(bot_id, "failed")
        assert (
            bot["reason"] == "worker_lost" and "3 workers were lost" in bot["history"][-1]["detail"]
        )
        lost = [h for h in bot["history"] if h["reason"] == "worker_lost"]
        assert [h["state"] for h in lost] == ["queued", "queued", "failed"]
    finally:
        await client.aclose()
