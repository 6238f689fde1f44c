"""The poller's inbox: signals are kept in the state store and acknowledged when fetched, so the
server forgets them at once, and a restarted agent applies what it had fetched but not handled."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.convex import ConvexClient, TokenSource
from agent.signaling.api import ConnvoApi
from agent.signaling.models import IceCandidate, Signal
from agent.signaling.poller import SignalPoller
from agent.signaling.state import SignalStateStore
from tests.support.polling import running


class HoldingSink:
    """Takes signals and hands them back only when told to (a session waiting for its turn)."""

    def __init__(self, poller_handled: Any = None) -> None:
        self.held: list[Signal] = []
        self.handle_at_once = poller_handled

    def deliver(self, signal: Signal) -> None:
        self.held.append(signal)
        if self.handle_at_once is not None:
            self.handle_at_once(signal)

    def negotiating(self) -> bool:
        return True


@pytest.mark.parametrize("generation", [1, 2])
async def test_fetched_signals_are_acknowledged_at_once_and_survive_a_restart(
    devserver_factory: Any, tmp_path: Path, generation: int
) -> None:
    server = devserver_factory(generation=generation)
    meeting = server.meeting("bot", ["rita"])
    bot_id = server.user_id("bot")
    state = tmp_path / "state.sqlite"
    async with (
        ConvexClient(server.url, TokenSource(value=server.token("bot"))) as bot_client,
        ConvexClient(server.url, TokenSource(value=server.token("rita"))) as rita_client,
    ):
        bot, rita = ConnvoApi(bot_client), ConnvoApi(rita_client)
        await bot.create_webrtc_session(meeting, "bot-session")
        await rita.create_webrtc_session(meeting, "rita-session")
        for port in range(5):
            candidate = IceCandidate(
                candidate=f"candidate:1 1 udp 2130706431 127.0.0.1 {40000 + port} typ host",
                sdpMid="0",
                sdpMLineIndex=0,
            )
            await rita.send_candidate(meeting, "rita-session", candidate, bot_id)

        # First run: everything fetched, nothing handled (the sessions are still busy).
        store = SignalStateStore(state)
        sink = HoldingSink()
        poller = SignalPoller(bot, meeting, store, sink)
        try:
            async with running(poller), asyncio.timeout(10):
                while len(sink.held) < 5 or store.unacked():
                    await poller.next_poll()
            # ... and yet acknowledged: the server returns none of them any more
            assert await bot.get_pending_signals(meeting) == []
        finally:
            store.close()
        fetched = {signal.id for signal in sink.held}
        assert len(fetched) == 5

        # Second run on the same state: the five are applied once, without asking the server.
        store = SignalStateStore(state)
        replayed: list[Signal] = []
        poller = SignalPoller(bot, meeting, store, HoldingSink())
        poller.sink = HoldingSink(lambda s: (replayed.append(s), poller.handled(s)))
        async with running(poller), asyncio.timeout(10):
            while len(replayed) < 5:
                await poller.next_change()
            await poller.next_poll()
        assert {s.id for s in replayed} == fetched and len(replayed) == 5
        # in the order first delivered: send order as far as the millisecond timestamps tell
        assert [s.id for s in replayed] == [s.id for s in sink.held]
        stamps = [s.timestamp for s in replayed]
        assert stamps == sorted(stamps)
        assert poller.stats.received == 0 and poller.stats.reapplied == 0
        assert all(store.times_applied(i) == 1 for i in fetched)
        assert store.inbox() == [] and store.unacked() == []
        store.close()
