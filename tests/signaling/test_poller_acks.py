"""The poll after a drain waits for that drain's acknowledgements, so the server does not return
the same signals (often full SDP) once more; while acknowledgements fail, polling goes on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.convex import ConvexClient, TokenSource
from agent.signaling.api import ConnvoApi
from agent.signaling.models import IceCandidate
from agent.signaling.poller import SignalPoller
from agent.signaling.state import SignalStateStore
from tests.support.polling import HandlingSink, running

ACK_FUNCTION = "meetings/webrtc/signaling/markSignalsProcessed"
SIGNALS = 5


async def _send_candidates(server: Any, meeting: str, rita: ConnvoApi) -> None:
    await rita.create_webrtc_session(meeting, "rita-session")
    for port in range(SIGNALS):
        candidate = IceCandidate(
            candidate=f"candidate:1 1 udp 2130706431 127.0.0.1 {40000 + port} typ host",
            sdpMid="0",
            sdpMLineIndex=0,
        )
        await rita.send_candidate(meeting, "rita-session", candidate, server.user_id("bot"))


@asynccontextmanager
async def polling_bot(
    server: Any, tmp_path: Path
) -> AsyncIterator[tuple[SignalPoller, HandlingSink, SignalStateStore]]:
    """Rita has sent SIGNALS candidates to the bot; the bot's poller runs (fast) inside."""
    meeting = server.meeting("bot", ["rita"])
    async with (
        ConvexClient(server.url, TokenSource(value=server.token("bot"))) as bot_client,
        ConvexClient(server.url, TokenSource(value=server.token("rita"))) as rita_client,
    ):
        bot = ConnvoApi(bot_client)
        await bot.create_webrtc_session(meeting, "bot-session")
        await _send_candidates(server, meeting, ConnvoApi(rita_client))
        store = SignalStateStore(tmp_path / "state.sqlite")
        sink = HandlingSink()
        poller = sink.poller = SignalPoller(bot, meeting, store, sink, fast_interval=0.02)
        try:
            async with running(poller):
                yield poller, sink, store
        finally:
            store.close()


async def _polls(poller: SignalPoller, count: int) -> None:
    polls = poller.stats.polls
    while poller.stats.polls < polls + count:
        await poller.next_poll()


@pytest.mark.parametrize("generation", [1, 2])
async def test_no_poll_fetches_what_is_being_acknowledged(
    devserver_factory: Any, tmp_path: Path, generation: int
) -> None:
    server = devserver_factory(generation=generation)
    # Every acknowledgement takes 400 ms at the server: twenty fast polls' worth.
    server.set_faults(latency_ms=400, functions=[ACK_FUNCTION])
    async with polling_bot(server, tmp_path) as (poller, sink, store):
        async with asyncio.timeout(10):
            while len(sink.delivered) < SIGNALS or store.unacked():
                await poller.next_poll()
            await _polls(poller, 2)  # polls after the acknowledgement
    assert len(sink.delivered) == SIGNALS
    # nothing came back while the ack was under way
    assert poller.stats.duplicates == 0, poller.stats
    assert poller.stats.acked == SIGNALS


async def test_polling_goes_on_while_acknowledgements_fail(
    devserver_factory: Any, tmp_path: Path
) -> None:
    server = devserver_factory(generation=2)
    server.set_faults(ack_fail_rate=1.0, functions=[ACK_FUNCTION])
    async with polling_bot(server, tmp_path) as (poller, sink, store):
        async with asyncio.timeout(20):
            # The unacknowledged signals keep coming back: polls do not wait for acks that fail.
            while poller.stats.duplicates < 3 * SIGNALS:
                await poller.next_poll()
            assert store.unacked()
            server.clear_faults()
            while store.unacked():
                await poller.next_poll()
            duplicates = poller.stats.duplicates
            await _polls(poller, 2)
    assert poller.stats.duplicates == duplicates  # acknowledged now: none come back
    assert len(sink.delivered) == SIGNALS  # applied once, however often they were fetched
    assert poller.stats.reapplied == 0
