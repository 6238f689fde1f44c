"""What Connvo's real server does and the dev backend reproduces (see docs/devserver.md): a session
row that is never reopened, signaling that goes on after the meeting ended, rows that never
expire, and public STUN servers handed out with the connection info."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from agent.peer.participant import MeetingGone
from agent.peer.session import PeerState
from tests.agent.conftest import Meeting, make_meeting
from tests.agent.test_negotiation import TIMEOUT
from tests.support.devserver import Api
from tests.support.waiting import poll_until

SIGNALING = "meetings/webrtc/signaling"


def api(meeting: Meeting, name: str) -> Api:
    return Api(meeting.server.url, meeting.tokens[name])


def rows(db: Path, sql: str, *params: Any) -> list[sqlite3.Row]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        con.row_factory = sqlite3.Row
        return con.execute(sql, params).fetchall()


def offers_to(meeting: Meeting, user: str) -> int:
    found = rows(
        meeting.server.db,
        "SELECT data FROM signals WHERE meeting_id = ? AND to_user_id = ? AND type = 'sdp'",
        meeting.id,
        meeting.users[user],
    )
    return sum(1 for r in found if json.loads(r["data"])["type"] == "offer")


async def listed_sessions(meeting: Meeting, peer: Any, user: str = "bot") -> dict[str, str]:
    active = await peer.call(f"{SIGNALING}/getActiveSessions", meetingId=meeting.id)
    return {s["sessionId"]: s["state"] for s in active if s["userId"] == meeting.users[user]}


async def call_the_bot(meeting: Meeting, peer: Any) -> None:
    await peer.offer(meeting.users["bot"])
    async with asyncio.timeout(TIMEOUT):
        await peer.connected.wait()


# --- the own session row ----------------------------------------------------------------------


async def test_a_restart_after_a_clean_leave_is_listed_again(
    meeting: Meeting, agent_factory: Any, tmp_path: Path
) -> None:
    """createWebRTCSession returns a closed row as it is: the agent must reopen its own."""
    state_dir = tmp_path / "state"
    first = await agent_factory(meeting, state_dir=state_dir)
    session_id = first.participant.local.session_id
    await first.shutdown()
    async with meeting.peer("alice") as alice:
        assert await listed_sessions(meeting, alice) == {}  # closed when it left
        second = await agent_factory(meeting, state_dir=state_dir)
        assert second.participant.local.session_id == session_id  # remote peers know this one
        assert await listed_sessions(meeting, alice) == {session_id: "connecting"}
        await call_the_bot(meeting, alice)


async def test_a_session_id_owned_by_someone_else_is_a_clear_error(
    meeting: Meeting, agent_factory: Any
) -> None:
    alice = api(meeting, "alice")
    alice.ok(f"{SIGNALING}/createWebRTCSession", meetingId=meeting.id, sessionId="alices-laptop")
    with pytest.raises(Exception, match="belongs to another participant"):
        await agent_factory(meeting, session_id="alices-laptop")


# --- the meeting ends, or the agent is no longer in it ----------------------------------------


async def test_the_agent_leaves_when_the_meeting_ends(devserver: Any, agent_factory: Any) -> None:
    meeting = make_meeting(devserver, ["alice", "bot"])  # alice hosts
    agent = await agent_factory(meeting, meeting_check_interval=0.5)
    async with meeting.peer("alice") as alice:
        await call_the_bot(meeting, alice)
        devserver.reset_stats()
        await alice.call("meetings/lifecycle/endMeeting", meetingId=meeting.id)
        ended_at = time.monotonic()
        async with asyncio.timeout(5):
            await agent.task  # returns: a meeting that ended is a normal end
        assert time.monotonic() - ended_at < 0.5 + 4.0  # one check interval plus leaving
        assert agent.participant.left_because == "meeting concluded"
        # It reported its session closed and left, as on SIGTERM.
        own = rows(
            devserver.db,
            "SELECT state FROM sessions WHERE meeting_id = ? AND user_id = ?",
            meeting.id,
            meeting.users["bot"],
        )
        assert [r["state"] for r in own] == ["closed"]
        presence = rows(
            devserver.db,
            "SELECT presence FROM participants WHERE meeting_id = ? AND user_id = ?",
            meeting.id,
            meeting.users["bot"],
        )
        assert [r["presence"] for r in presence] == ["left"]


async def test_the_agent_leaves_when_it_is_no_longer_a_participant(
    devserver: Any, agent_factory: Any
) -> None:
    meeting = make_meeting(devserver, ["alice", "bot"])
    agent = await agent_factory(meeting, meeting_check_interval=0.5)
    # Removal from the meeting (no function in the published API does it): straight in the db.
    with contextlib.closing(sqlite3.connect(devserver.db)) as con, con:
        con.execute(
            "DELETE FROM participants WHERE meeting_id = ? AND user_id = ?",
            (meeting.id, meeting.users["bot"]),
        )
    async with asyncio.timeout(5):
        with pytest.raises(MeetingGone):
            await agent.task


# --- call-everyone and rows that never expire -------------------------------------------------


async def test_call_everyone_gives_up_on_a_session_that_never_answers(
    meeting: Meeting, agent_factory: Any
) -> None:
    """carol's client crashed long ago: her row stays listed, and nobody ever answers it."""
    carol = api(meeting, "carol")
    carol.ok(f"{SIGNALING}/createWebRTCSession", meetingId=meeting.id, sessionId="carol-crashed")
    agent = await agent_factory(
        meeting,
        call_everyone=True,
        discovery_interval=0.2,
        discovery_first_interval=0.1,
        session_timeout=0.5,
        max_call_tries=3,
        call_retry_pauses=(0.2, 0.4),
    )
    client = agent.participant.api.client
    async with asyncio.timeout(20):
        await poll_until(lambda: _at_least(offers_to(meeting, "carol"), 3))
        # Left alone now: ten more discoveries, no session open, no fourth offer.
        await poll_until(lambda: _no_session_open(agent))
        seen = client.request_counts[f"{SIGNALING}/getActiveSessions"]
        await poll_until(
            lambda: _at_least(client.request_counts[f"{SIGNALING}/getActiveSessions"], seen + 10)
        )
    assert offers_to(meeting, "carol") == 3
    # Her row changes (her client came back and updated it): she is called again.
    carol.ok(
        f"{SIGNALING}/updateSessionState",
        meetingId=meeting.id,
        sessionId="carol-crashed",
        state="connected",
    )
    async with asyncio.timeout(10):
        await poll_until(lambda: _at_least(offers_to(meeting, "carol"), 4))


async def _at_least(value: int, wanted: int) -> bool:
    return value >= wanted


async def _no_session_open(agent: Any) -> bool:
    return not any(s.state is not PeerState.CLOSED for s in agent.manager.sessions.values())


async def test_a_session_given_up_on_that_offers_later_is_answered(
    meeting: Meeting, agent_factory: Any
) -> None:
    """A remote the agent stopped calling (and closed) opens a call itself: the agent answers."""
    api(meeting, "alice").ok(
        f"{SIGNALING}/createWebRTCSession", meetingId=meeting.id, sessionId="alice-tab"
    )
    agent = await agent_factory(
        meeting,
        call_everyone=True,
        discovery_interval=0.2,
        discovery_first_interval=0.1,
        session_timeout=0.5,
        max_call_tries=1,
        call_retry_pauses=(),
    )
    async with asyncio.timeout(15):
        await poll_until(lambda: _at_least(offers_to(meeting, "alice"), 1))
        await poll_until(lambda: _no_session_open(agent))
    # Her browser wakes up and calls the agent from the same session.
    async with meeting.peer("alice", session_id="alice-tab") as alice:
        await call_the_bot(meeting, alice)


# --- an end-of-candidates marker paged before an earlier candidate ------------------------------


async def test_a_marker_paged_before_an_earlier_candidate_waits_for_it(
    devserver_factory: Any, agent_factory: Any
) -> None:
    """Generation 1, a backlog of 55 stale signals in front. The agent's first drain pages through
    it with the cursor: its second page brings alice's offer and end-of-candidates marker but not
    her candidate, whose id sorts below the cursor. The candidate comes with the next drain; it
    was sent before the marker, so it must be applied, not dropped as late."""
    server = devserver_factory(generation=1)
    meeting = make_meeting(server, ["bot", "alice", "carol"])
    carol, bot = api(meeting, "carol"), meeting.users["bot"]
    base = 2**62
    # ids in insertion order: 55 stale answers, the offer, alice's candidates, the marker
    stale_keys = [base + i * 1000 for i in range(55)]
    async with meeting.peer("alice") as alice:
        offer_sdp, candidates = await alice.prepare_trickled_offer(bot)
        candidate_keys = [base - 1000 + i for i in range(len(candidates))]  # below the cursor
        server.next_ids("webrtcSignals", [*stale_keys, 2**63, *candidate_keys, 2**63 + 1000])
        for _ in stale_keys:  # a session that died long ago answered the bot, never acknowledged
            carol.ok(
                f"{SIGNALING}/exchangeSessionDescription",
                meetingId=meeting.id,
                sessionId="carol-ghost",
                description={"type": "answer", "sdp": "v=0\r\n"},
                targetUserId=bot,
            )
        await alice.send_sdp("offer", offer_sdp, bot)
        for candidate in candidates:
            await alice.send_ice(candidate, bot)
        await alice.send_ice({"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}, bot)
        agent = await agent_factory(meeting)
        async with asyncio.timeout(TIMEOUT):
            await alice.connected.wait()
            await poll_until(lambda: _all_handled(agent, len(stale_keys) + len(candidates) + 2))
        outcomes = dict(
            agent.participant.store._db.execute("SELECT id, outcome FROM signals").fetchall()
        )
        sent = rows(
            server.db,
            "SELECT id, type, data FROM signals WHERE session_id = ? ORDER BY timestamp, rowid",
            alice.session_id,
        )
        assert [outcomes[r["id"]] for r in sent] == ["applied"] * len(sent)
        assert agent.session(alice.session_id).stats.ice_restarts == 0
        assert agent.participant.poller.stats.markers_held >= 1  # the situation did arise


async def _all_handled(agent: Any, count: int) -> bool:
    (handled,) = agent.participant.store._db.execute("SELECT COUNT(*) FROM signals").fetchone()
    return bool(handled >= count)


# --- STUN servers that cannot be reached ------------------------------------------------------


async def test_an_unreachable_stun_server_costs_at_most_the_gathering_cap(
    devserver_factory: Any, agent_factory: Any
) -> None:
    """Connvo hands out public STUN servers. A STUN server that never answers (here a UDP socket
    on loopback that reads and drops every request) delays a call by the gathering cap at most."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.setblocking(False)
        port = black_hole.getsockname()[1]
        server = devserver_factory(ice_servers=[f"stun:127.0.0.1:{port}"])
        meeting = make_meeting(server, ["bot", "alice"])
        agent = await agent_factory(meeting)
        ice = agent.participant.settings.session.ice_servers
        assert [s.urls for s in ice] == [f"stun:127.0.0.1:{port}"]  # from the connection info
        async with meeting.peer("alice") as alice:
            started = time.monotonic()
            await call_the_bot(meeting, alice)
            took = time.monotonic() - started
        cap = agent.participant.settings.session.gather_timeout
        assert took < cap + 3.0, f"connected after {took:.1f} s, gathering cap {cap} s"
        # The agent did ask the STUN server (which never answered).
        requests = 0
        with contextlib.suppress(BlockingIOError):
            while black_hole.recv(2048):
                requests += 1
        assert requests >= 1
