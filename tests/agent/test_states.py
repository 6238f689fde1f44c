"""The session state table (agent.peer.states) is what PeerSession follows: every transition seen
while real peers connect, lose media, restart ICE, time out and close is in the table."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from agent.peer import session as session_module
from agent.peer.session import LocalIdentity, PeerSession
from agent.peer.states import FINAL, INITIAL, REASONS, TRANSITIONS, PeerState, allowed
from tests.agent.conftest import Meeting
from tests.agent.test_negotiation import TIMEOUT, media_both_ways

# A host candidate on a port nothing listens on: it opens a session, no offer ever follows.
LONE_CANDIDATE = {
    "candidate": "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
}


def _reachable(start: PeerState) -> set[PeerState]:
    seen = {start}
    todo = [start]
    while todo:
        for target in TRANSITIONS[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_table_has_every_state_and_no_unreachable_one() -> None:
    assert set(TRANSITIONS) == set(PeerState)
    assert _reachable(INITIAL) == set(PeerState)
    # every state can end, and the final one has no way out
    for state in PeerState:
        assert FINAL in _reachable(state), state
    assert TRANSITIONS[FINAL] == frozenset()
    # one reason per edge, and no self-loops (staying put is not a transition)
    assert {(s, t) for s, ts in TRANSITIONS.items() for t in ts} == set(REASONS)
    assert all(s is not t and REASONS[(s, t)] for s, t in REASONS)


def test_peer_state_keeps_its_old_import_path() -> None:
    assert session_module.PeerState is PeerState


class _Hooks:
    def __init__(self) -> None:
        self.changes: list[PeerState] = []

    def handled(self, signal: Any, outcome: str) -> None: ...

    def kick(self) -> None: ...

    def state_changed(self, session: PeerSession) -> None:
        self.changes.append(session.state)

    def local_tracks(self) -> list[Any]:
        return []

    def on_track(self, session: PeerSession, track: Any) -> None:
        return None


async def test_a_change_outside_the_table_is_refused_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = _Hooks()
    session = PeerSession(
        remote_session_id="remote",
        remote_user_id="user-b",
        local=LocalIdentity("meeting", "user-a", "local"),
        api=None,  # type: ignore[arg-type]  # never called: nothing is negotiated here
        hooks=hooks,
        settings=session_module.SessionSettings(),
    )
    assert not allowed(PeerState.NEW, PeerState.CONNECTED)
    with caplog.at_level(logging.ERROR, logger="agent.peer.session"):
        assert session._set_state(PeerState.CONNECTED, "test") is False
    assert session.state is PeerState.NEW and hooks.changes == []
    assert [r.peer_illegal_transition for r in caplog.records] == [  # type: ignore[attr-defined]
        (PeerState.NEW, PeerState.CONNECTED)
    ]
    await session.close("test")
    assert session.state is PeerState.CLOSED and hooks.changes == [PeerState.CLOSED]


async def test_every_observed_transition_is_in_the_table(
    meeting: Meeting, agent_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.peer.session")
    agent = await agent_factory(
        meeting, media_timeout=1.0, ice_restart_after=0.5, session_timeout=3.0
    )
    bot = meeting.users["bot"]
    async with meeting.peer("alice") as alice, meeting.peer("bob") as bob:
        # alice connects, then her connection vanishes: disconnected, ICE restart, connected
        await alice.offer(bot)
        await media_both_ways(agent, alice)
        connected = agent.session(alice.session_id)
        await alice._close_pc()
        async with asyncio.timeout(TIMEOUT):
            await connected.wait_state(PeerState.DISCONNECTED)
            await alice.connected.wait()
            await connected.wait_state(PeerState.CONNECTED)
        # bob sends a candidate and never an offer: the session fails after session_timeout
        await bob.send_ice(LONE_CANDIDATE, bot)
        async with asyncio.timeout(TIMEOUT):
            lone = await agent.manager.wait_session(bob.session_id)
            await lone.closed.wait()
        assert lone.close_reason == "negotiation timed out"
    await agent.shutdown()  # alice's session closes while connected
    assert connected.state is PeerState.CLOSED

    assert not [r for r in caplog.records if hasattr(r, "peer_illegal_transition")]
    observed = {r.peer_transition for r in caplog.records if hasattr(r, "peer_transition")}
    assert observed <= set(REASONS), observed - set(REASONS)
    assert {
        (PeerState.NEW, PeerState.NEGOTIATING),
        (PeerState.NEGOTIATING, PeerState.CONNECTED),
        (PeerState.CONNECTED, PeerState.DISCONNECTED),
        (PeerState.DISCONNECTED, PeerState.NEGOTIATING),
        (PeerState.NEW, PeerState.FAILED),
        (PeerState.FAILED, PeerState.CLOSED),
        (PeerState.CONNECTED, PeerState.CLOSED),
    } <= observed
    assert {state for edge in observed for state in edge} == set(PeerState)
