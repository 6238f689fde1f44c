"""The STUN/TURN gathering timeout is per session: each session's own cap, at the same time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioice

from agent.convex import ConvexClient, TokenSource
from agent.patches.ice import gathering_timeout
from agent.peer.participant import Participant, ParticipantSettings
from agent.peer.session import SessionSettings
from agent.signaling.api import ConnvoApi
from tests.support.peers import RemotePeer

TIMEOUT_S = 30.0


def _stun(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("stun:").rsplit(":", 1)
    return host, int(port)


async def _gather(stun_server: tuple[str, int], limit: float) -> float:
    connection = aioice.Connection(ice_controlling=True, stun_server=stun_server)
    try:
        with gathering_timeout(limit):
            started = time.monotonic()
            await connection.gather_candidates()
            return time.monotonic() - started
    finally:
        await connection.close()


async def test_each_context_gathers_with_its_own_cap(silent_stun: str) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        short, long = await asyncio.gather(
            _gather(_stun(silent_stun), 0.3), _gather(_stun(silent_stun), 1.5)
        )
    assert 0.25 <= short < 1.2, short
    assert 1.45 <= long < 4.0, long


@contextlib.asynccontextmanager
async def _agent(
    server: Any, meeting_id: str, name: str, tmp_path: Path, cap: float
) -> AsyncIterator[Participant]:
    client = ConvexClient(server.url, TokenSource(value=server.token(name)))
    settings = ParticipantSettings(
        meeting_id=meeting_id,
        state_dir=tmp_path / f"state-{name}",
        session=SessionSettings(gather_timeout=cap),
    )
    agent = Participant(ConnvoApi(client), settings)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await agent.joined.wait()
        yield agent
    finally:
        stop.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            async with asyncio.timeout(10):
                await task
        await client.aclose()


async def _answer_delay(server: Any, meeting_id: str, caller: str, callee: str) -> float:
    """Seconds from `caller`'s offer to the answer of the agent `callee` (an aiortc peer calls)."""
    peer = RemotePeer(
        server.url, server.token(caller), meeting_id, server.user_id(caller), video=False
    )
    async with peer, asyncio.timeout(TIMEOUT_S):
        started = time.monotonic()
        await peer.offer(server.user_id(callee))
        await peer.wait_signal(lambda s: s["data"].get("type") == "answer")
        took = time.monotonic() - started
        await peer.connected.wait()  # and the call goes on
        return took


async def test_two_agents_in_one_process_keep_their_own_caps(
    devserver_factory: Any, silent_stun: str, tmp_path: Path
) -> None:
    """SessionSettings.gather_timeout of one agent does not change another's (one process)."""
    server = devserver_factory(ice_servers=[silent_stun])
    meeting = server.meeting("quick", ["patient", "alice", "bob"])
    async with (
        _agent(server, meeting, "quick", tmp_path, 0.3),
        _agent(server, meeting, "patient", tmp_path, 2.5),
    ):
        quick, patient = await asyncio.gather(
            _answer_delay(server, meeting, "alice", "quick"),
            _answer_delay(server, meeting, "bob", "patient"),
        )
    assert patient >= 2.4, patient
    assert quick < patient - 1.0, (quick, patient)
