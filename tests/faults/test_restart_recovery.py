"""`kill -9` of `connvo-agent run` in the middle of negotiations, then a restart on the same state
directory: acknowledged signals are not applied again, pending ones are, and every session comes
back (the agent offers again with fresh ICE credentials to the sessions it had open)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

from aiortc import RTCPeerConnection

from agent.devserver.process import DevServerProcess
from tests.conftest import DevServerFactory
from tests.faults.helpers import (
    agent_records,
    backend_signals_to,
    bot_sessions,
    start_agent_process,
    stop_process,
)
from tests.support.peers import RemotePeer
from tests.support.waiting import poll_until

CONNECTED_BEFORE = 4
OFFERING_AT_KILL = 4


async def test_kill_9_then_restart_recovers(
    devserver_factory: DevServerFactory, tmp_path: Path
) -> None:
    server: DevServerProcess = devserver_factory()
    names = [f"p{i}" for i in range(CONNECTED_BEFORE + OFFERING_AT_KILL)]
    meeting = server.meeting("bot", names)
    bot_user = server.user_id("bot")
    state_dir = tmp_path / "state"
    observer_token = server.token(names[0])
    agent = await start_agent_process(server, server.token("bot"), meeting, state_dir,
                                      "--audio", "tone")  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        peers = [
            await stack.enter_async_context(
                RemotePeer(server.url, server.token(n), meeting, server.user_id(n), video=False)
            )
            for n in names
        ]
        try:
            async with asyncio.timeout(30):
                first_sessions = await poll_until(
                    lambda: bot_sessions(server.url, observer_token, meeting, bot_user)
                )
                first = peers[:CONNECTED_BEFORE]
                await asyncio.gather(*(p.offer(bot_user) for p in first))
                for p in first:
                    await p.connected.wait()
                    await p.received.audio.wait()

            # More offers (trickled), and the agent dies as soon as it has answered one of them.
            late = peers[CONNECTED_BEFORE:]
            offers = [asyncio.create_task(p.offer(bot_user, trickle=True)) for p in late]
            async with asyncio.timeout(30):
                await late[0].wait_signal(lambda s: s["data"].get("type") == "answer")
            agent.kill()
            await agent.wait()
            await asyncio.gather(*offers)
            at_kill = agent_records(state_dir)
            pcs_at_kill: dict[int, tuple[RTCPeerConnection | None, bool]] = {
                i: (p.pc, p.connected.is_set()) for i, p in enumerate(peers)
            }

            restarted_at = time.monotonic()
            agent = await start_agent_process(server, server.token("bot"), meeting, state_dir,
                                              "--audio", "tone")  # fmt: skip
            async with asyncio.timeout(45):
                await poll_until(lambda: _all_reconnected(peers, pcs_at_kill))
            recovery = time.monotonic() - restarted_at
            frames = [p.received.audio_frames for p in peers]
            async with asyncio.timeout(20):
                await poll_until(lambda: _grew(peers, frames))
                # Everything the backend holds for the agent is acknowledged.
                await poll_until(lambda: _all_processed(server, bot_user))

            # Same own session after the restart: the backend lists one bot session.
            sessions = await bot_sessions(server.url, observer_token, meeting, bot_user)
            assert [s["sessionId"] for s in sessions] == [first_sessions[0]["sessionId"]]

            agent.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                assert await agent.wait() == 0
        finally:
            await stop_process(agent)

    after = agent_records(state_dir)
    # Acknowledged before the crash: still applied once; nothing at all applied twice.
    assert {sid: r[1] for sid, r in after.items() if r[1] != 1} == {}
    assert set(at_kill) <= set(after)
    assert len(after) > len(at_kill)  # pending signals were applied after the restart
    backend = backend_signals_to(server, bot_user)
    assert set(backend) <= set(after)
    stderr = (tmp_path / "agent.stderr").read_text()
    assert "handled a second time" not in stderr
    assert stderr.count("restoring the session") >= CONNECTED_BEFORE
    print(f"\nrecovery after kill -9: all {len(peers)} sessions connected {recovery:.2f} s "
          f"after the restart began (process start included)")  # fmt: skip


async def _all_reconnected(peers: list[RemotePeer], at_kill: dict[int, tuple[Any, bool]]) -> bool:
    for i, p in enumerate(peers):
        old_pc, was_connected = at_kill[i]
        if not p.connected.is_set() or (p.pc is old_pc and was_connected):
            return False
    return True


async def _grew(peers: list[RemotePeer], before: list[int]) -> bool:
    return all(p.received.audio_frames > b for p, b in zip(peers, before, strict=True))


async def _all_processed(server: DevServerProcess, user: str) -> bool:
    signals = await asyncio.to_thread(backend_signals_to, server, user)
    return bool(signals) and all(signals.values())
