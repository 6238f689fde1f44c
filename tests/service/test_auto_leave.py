"""The service's auto-leave rules, end to end: each rule alone (the others off), with second-long
limits, against the dev backend's roster and real aiortc participants. Each bot leaves for its
rule's reason, and not before the rule's time.

One service process serves the module; each test has its own meeting and bot."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiortc import MediaStreamTrack

from agent.devserver.process import DevServerProcess
from tests.agent.conftest import Meeting
from tests.service.conftest import bot_request
from tests.support.service import Client, ServiceProcess, WebhookReceiver
from tests.support.waiting import poll_until

TIMEOUT = 30
OFF = {"alone_s": None, "nobody_joined_s": None, "no_media_s": None, "max_duration_s": None}


@pytest.fixture(scope="module")
def service(shared_service: ServiceProcess) -> ServiceProcess:
    return shared_service


@pytest.fixture(scope="module")
def devserver(shared_devserver: DevServerProcess) -> DevServerProcess:
    return shared_devserver


def rules(**on: float) -> dict[str, Any]:
    return {**OFF, **on}


def at(bot: dict[str, Any], state: str) -> float:
    return float(next(h["at"] for h in bot["history"] if h["state"] == state))


async def start_bot(
    client: Client, meeting: Meeting, receiver: WebhookReceiver, auto_leave: dict[str, Any]
) -> str:
    response = await client.create(bot_request(meeting, receiver, auto_leave=auto_leave))
    assert response.status_code == 201, response.text
    bot_id: str = response.json()["id"]
    await client.wait_state(bot_id, "in_meeting")
    return bot_id


async def left(client: Client, receiver: WebhookReceiver, bot_id: str, reason: str) -> Any:
    """The bot once it ended; checks it left for `reason`, and said so in its webhooks."""
    final = await client.wait_state(bot_id, "ended", "failed")
    assert (final["state"], final["reason"]) == ("ended", reason), final
    states = [(h["state"], h["reason"]) for h in final["history"]]
    assert states == [
        ("queued", None),
        ("joining", None),
        ("in_meeting", None),
        ("leaving", reason),
        ("ended", reason),
    ], final["history"]
    await receiver.wait_for(lambda: len(receiver.events("bot.state_changed")) == 5)
    hooks = receiver.events("bot.state_changed")
    assert [(h["data"]["state"], h["data"]["reason"]) for h in hooks] == states
    return final


async def test_a_bot_left_alone_leaves_after_alone_s(
    service: ServiceProcess, client: Client, meeting: Meeting, receiver: WebhookReceiver
) -> None:
    bot_id = await start_bot(client, meeting, receiver, rules(alone_s=1))
    async with asyncio.timeout(TIMEOUT):
        async with meeting.peer("alice", video=False) as alice:
            await alice.call("meetings/lifecycle/joinMeeting", meetingId=meeting.id)
            await alice.offer(meeting.users["bot"])
            await alice.connected.wait()
            await client.wait_for(bot_id, lambda b: any(p["present"] for p in b["participants"]))
            # she stays twice as long as alone_s (100 packets of 20 ms from the bot): it stays
            await poll_until(lambda: _more(alice.rtp_received(), 100))
            assert (await client.bot(bot_id))["state"] == "in_meeting"
            alone_from = time.time()
            await alice.call("meetings/lifecycle/leaveMeeting", meetingId=meeting.id)
    final = await left(client, receiver, bot_id, "alone")
    assert at(final, "leaving") - alone_from >= 1.0, final["history"]
    [alice_seen] = final["participants"]
    assert alice_seen["user_id"] == meeting.users["alice"] and not alice_seen["present"]
    assert [e["data"]["user_id"] for e in receiver.events("participant.left")] == [
        meeting.users["alice"]
    ]


async def test_a_bot_nobody_joins_leaves_after_nobody_joined_s(
    service: ServiceProcess, client: Client, meeting: Meeting, receiver: WebhookReceiver
) -> None:
    bot_id = await start_bot(client, meeting, receiver, rules(nobody_joined_s=1))
    final = await left(client, receiver, bot_id, "nobody_joined")
    assert at(final, "leaving") - at(final, "in_meeting") >= 1.0, final["history"]
    assert final["participants"] == []


class Silence(MediaStreamTrack):
    """An audio track that never yields a frame: the connection is up, no RTP flows."""

    kind = "audio"

    async def recv(self) -> Any:
        await asyncio.Event().wait()


async def test_a_bot_that_receives_no_media_leaves_after_no_media_s(
    service: ServiceProcess, client: Client, meeting: Meeting, receiver: WebhookReceiver
) -> None:
    # the rule applies from 3 s on: time for alice to connect
    bot_id = await start_bot(client, meeting, receiver, rules(no_media_s=1, no_media_after_s=3))
    async with asyncio.timeout(TIMEOUT):
        async with meeting.peer("alice", video=False) as alice:
            # alice is in the roster and connected; she sends audio for 2.5 s: the bot stays
            await alice.call("meetings/lifecycle/joinMeeting", meetingId=meeting.id)
            await alice.offer(meeting.users["bot"])
            await alice.connected.wait()
            await poll_until(lambda: _more(_packets_sent(alice), 125))
            during = await client.bot(bot_id)
            assert during["state"] == "in_meeting", during
            # then her connection stays up, but carries nothing
            assert alice.pc is not None
            [sender] = alice.pc.getSenders()
            sender.replaceTrack(Silence())
            silent_from = time.time()
            final = await left(client, receiver, bot_id, "no_media")
    assert final["media_connected"]
    assert at(final, "leaving") - silent_from >= 1.0, final["history"]
    assert at(final, "leaving") - at(final, "in_meeting") >= 3.0, final["history"]
    [connection] = final["connections"]
    assert connection["user_id"] == meeting.users["alice"]
    assert connection["packets_received"] >= 100, connection


async def test_a_bot_leaves_after_max_duration_s(
    service: ServiceProcess, client: Client, meeting: Meeting, receiver: WebhookReceiver
) -> None:
    bot_id = await start_bot(client, meeting, receiver, rules(max_duration_s=1))
    final = await left(client, receiver, bot_id, "max_duration")
    assert at(final, "leaving") - at(final, "in_meeting") >= 1.0, final["history"]


async def test_a_bot_leaves_when_the_host_ends_the_meeting(
    service: ServiceProcess, client: Client, meeting: Meeting, receiver: WebhookReceiver
) -> None:
    bot_id = await start_bot(client, meeting, receiver, dict(OFF))
    ended_at = time.time()
    await asyncio.to_thread(meeting.server.end_meeting, meeting.id, "bot")
    final = await left(client, receiver, bot_id, "meeting_ended")
    assert at(final, "leaving") >= ended_at, final["history"]


async def _more(value: Any, n: int) -> bool:
    return bool(await value >= n)


async def _packets_sent(peer: Any) -> int:
    stats = await peer.pc.getStats()
    return sum(s.packetsSent for s in stats.values() if s.type == "outbound-rtp")
