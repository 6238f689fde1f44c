"""Send order: the server's millisecond timestamps tie for a fast sender, and generation 2's random
ids carry no order, yet a page must come out as the sender produced it: the description first, the
end-of-candidates marker last (ICE refuses a candidate after it)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent.convex import ConvexClient, TokenSource
from agent.signaling.api import ConnvoApi
from agent.signaling.models import IceCandidate, SessionDescription
from agent.signaling.poller import SignalPoller
from agent.signaling.state import SignalStateStore
from tests.support.polling import HandlingSink

PORTS = range(40000, 40008)


@pytest.mark.parametrize("generation", [1, 2])
async def test_tied_timestamps_keep_the_order_a_sender_produces(
    devserver_factory: Any, tmp_path: Path, generation: int
) -> None:
    server = devserver_factory(generation=generation)  # random ids
    meeting = server.meeting("bot", ["rita"])
    bot_id = server.user_id("bot")
    async with (
        ConvexClient(server.url, TokenSource(value=server.token("bot"))) as bot_client,
        ConvexClient(server.url, TokenSource(value=server.token("rita"))) as rita_client,
    ):
        bot, rita = ConnvoApi(bot_client), ConnvoApi(rita_client)
        await rita.create_webrtc_session(meeting, "rita-session")
        offer = SessionDescription(type="offer", sdp="v=0\r\n")
        await rita.send_description(meeting, "rita-session", offer, bot_id)
        for port in PORTS:
            line = f"candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host"
            candidate = IceCandidate(candidate=line, sdpMid="0", sdpMLineIndex=0)
            await rita.send_candidate(meeting, "rita-session", candidate, bot_id)
        end = IceCandidate(candidate="", sdpMid="0", sdpMLineIndex=0)
        await rita.send_candidate(meeting, "rita-session", end, bot_id)
        # All ten inserted within the same millisecond (the fault injected into the real store).
        with sqlite3.connect(server.db) as db:
            tied = db.execute("UPDATE signals SET timestamp = 1700000000000").rowcount
        assert tied == 10

        sink = HandlingSink()  # records only: no poller to report to
        store = SignalStateStore(tmp_path / "state.sqlite")
        try:
            assert not await SignalPoller(bot, meeting, store, sink).poll_once()
        finally:
            store.close()

    delivered = sink.delivered
    assert len(delivered) == 10 and {s.timestamp for s in delivered} == {1700000000000}
    assert delivered[0].type == "sdp"
    assert delivered[-1].type == "ice" and delivered[-1].candidate.candidate == ""
    ports = [int(s.candidate.candidate.split()[5]) for s in delivered[1:-1]]
    if generation == 1:
        assert ports == list(PORTS)  # a generation 1 page is in insertion order: kept
    else:
        assert sorted(ports) == list(PORTS)  # random ids: no order to recover
