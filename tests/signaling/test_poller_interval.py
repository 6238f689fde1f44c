"""The poll after a drain that brought new signals comes at once (more tend to follow: a burst of
answers, a description and then its candidates); a poll that brought nothing new waits its
interval, here a minute, so a poll that comes at all within the test came at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agent.convex import ConvexClient, TokenSource
from agent.signaling.api import ConnvoApi
from agent.signaling.models import IceCandidate
from agent.signaling.poller import SignalPoller
from agent.signaling.state import SignalStateStore
from tests.support.polling import HandlingSink, running

ACK_FUNCTION = "meetings/webrtc/signaling/markSignalsProcessed"
INTERVAL_S = 60.0  # fast and idle: no poll in this test is due to its interval
QUIET_S = 0.5  # how long "no further poll" is watched for


@asynccontextmanager
async def slow_poller(server: Any, tmp_path: Path) -> AsyncIterator[tuple[SignalPoller, Any]]:
    """The bot's poller (a minute between polls) and a function sending it one more candidate."""
    meeting = server.meeting("bot", ["rita"])
    bot_id = server.user_id("bot")
    async with (
        ConvexClient(server.url, TokenSource(value=server.token("bot"))) as bot_client,
        ConvexClient(server.url, TokenSource(value=server.token("rita"))) as rita_client,
    ):
        rita = ConnvoApi(rita_client)
        await rita.create_webrtc_session(meeting, "rita-session")
        sent = 0

        async def send_candidate() -> None:
            nonlocal sent
            line = f"candidate:1 1 udp 2130706431 127.0.0.1 {40000 + sent} typ host"
            candidate = IceCandidate(candidate=line, sdpMid="0", sdpMLineIndex=0)
            await rita.send_candidate(meeting, "rita-session", candidate, bot_id)
            sent += 1

        store = SignalStateStore(tmp_path / "state.sqlite")
        sink = HandlingSink()
        poller = sink.poller = SignalPoller(
            ConnvoApi(bot_client),
            meeting,
            store,
            sink,
            fast_interval=INTERVAL_S,
            idle_interval=INTERVAL_S,
        )
        await send_candidate()
        try:
            async with running(poller):
                yield poller, send_candidate
        finally:
            store.close()


async def polls_within(poller: SignalPoller, seconds: float) -> int:
    """How many polls end within `seconds` (waiting on the poller's own event, not sleeping)."""
    before = poller.stats.polls
    try:
        async with asyncio.timeout(seconds):
            while True:
                await poller.next_poll()
    except TimeoutError:
        pass
    return poller.stats.polls - before


async def test_a_drain_with_new_signals_is_followed_by_a_poll_at_once(
    devserver: Any, tmp_path: Path
) -> None:
    async with slow_poller(devserver, tmp_path) as (poller, send_candidate):
        async with asyncio.timeout(10):
            while poller.stats.received < 1:
                await poller.next_poll()
            polls = poller.stats.polls
            await poller.next_poll()  # at once, not a minute later
        assert poller.stats.polls == polls + 1 and poller.stats.received == 1
        # that one brought nothing: the next waits its interval
        assert await polls_within(poller, QUIET_S) == 0
        # a kicked poll that brings a new signal is followed by one more, and then none
        await send_candidate()
        poller.kick()
        async with asyncio.timeout(10):
            while poller.stats.received < 2:
                await poller.next_poll()
            await poller.next_poll()
        assert await polls_within(poller, QUIET_S) == 0
        assert poller.stats.received == 2 and poller.stats.duplicates == 0


async def test_a_drain_of_duplicates_only_is_not_repeated_at_once(
    devserver: Any, tmp_path: Path
) -> None:
    # Acknowledgements fail: the signal comes back with every poll, as a duplicate.
    devserver.set_faults(ack_fail_rate=1.0, functions=[ACK_FUNCTION])
    async with slow_poller(devserver, tmp_path) as (poller, _):
        async with asyncio.timeout(10):
            while poller.stats.received < 1:
                await poller.next_poll()
            await poller.next_poll()  # at once after the new signal: it comes back
        assert poller.stats.duplicates == 1
        assert await polls_within(poller, QUIET_S) == 0
        assert poller.stats.duplicates == 1 and poller.stats.received == 1
