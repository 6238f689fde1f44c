"""SIGTERM to `connvo-agent run` holding 24 connected sessions while 6 more are negotiating and
every backend call takes 100 ms extra: every session closed, the own session reported closed at the
backend, the meeting left, the state file finalised, exit 0 within 10 seconds."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sqlite3
import time
from pathlib import Path

import httpx

from agent.devserver.process import DevServerProcess
from tests.conftest import DevServerFactory
from tests.faults.helpers import (
    PeersProcess,
    agent_records,
    bot_sessions,
    start_agent_process,
    stop_process,
)
from tests.support.waiting import poll_until

CONNECTED = 24
NEGOTIATING = 6


async def test_sigterm_under_load(devserver_factory: DevServerFactory, tmp_path: Path) -> None:
    server: DevServerProcess = devserver_factory()
    names = [f"p{i:02d}" for i in range(CONNECTED + NEGOTIATING)]
    meeting = server.meeting("bot", names)
    bot_user = server.user_id("bot")
    observer = server.token(names[0])
    peers = [{"token": server.token(n), "user_id": server.user_id(n)} for n in names]
    spec = {"url": server.url, "meeting": meeting, "target": bot_user, "peers": peers,
            "trickle": True, "timeout": 60}  # fmt: skip
    state_dir = tmp_path / "state"
    async with PeersProcess.start(spec) as remote:
        agent = await start_agent_process(server, server.token("bot"), meeting, state_dir,
                                          "--audio", "tone")  # fmt: skip
        try:
            async with asyncio.timeout(60):
                await poll_until(lambda: bot_sessions(server.url, observer, meeting, bot_user))
                await remote.offer(list(range(CONNECTED)))
            assert all(remote.results[i]["connected"] for i in range(CONNECTED))
            server.set_faults(latency_ms=100, duplicate_rate=0.2, seed=3)
            remote._send({"cmd": "offer", "peers": list(range(CONNECTED, CONNECTED + NEGOTIATING))})
            # Signal once the agent has started on the new offers (a session is negotiating).
            async with asyncio.timeout(30):
                await poll_until(lambda: _negotiating(tmp_path / "agent.stderr"))
            sent = time.monotonic()
            agent.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                code = await agent.wait()
            took = time.monotonic() - sent
            assert code == 0
        finally:
            await stop_process(agent)
        server.clear_faults()

    assert took < 10.0
    assert await bot_sessions(server.url, observer, meeting, bot_user) == []
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{server.url}/api/run/meetings/queries/listMeetingParticipants",
            json={"args": {"meetingId": meeting}, "format": "json"},
            headers={"Authorization": f"Bearer {observer}"},
        )
    bot = next(p for p in response.json()["value"] if p["userId"] == bot_user)
    assert bot["presence"] == "left"

    # Every session the agent opened ended closed.
    log = (tmp_path / "agent.stderr").read_text()
    opened = set(re.findall(r"PeerSession\(([^,]+),", log))
    closed = set(re.findall(r"PeerSession\(([^,]+), \w+\): \w+ -> closed", log))
    assert len(opened) >= CONNECTED
    assert opened == closed, opened - closed
    assert "left meeting" in log and "Traceback" not in log

    # The state file is finalised: checkpointed (no WAL left), intact, no open peer left behind,
    # everything handled acknowledged.
    files = list(state_dir.glob("*.sqlite"))
    assert len(files) == 1
    assert not await asyncio.to_thread(Path(f"{files[0]}-wal").exists)
    with contextlib.closing(sqlite3.connect(f"file:{files[0]}?mode=ro", uri=True)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM peers").fetchone() == (0,)
    records = agent_records(state_dir)
    assert records and all(acked and times == 1 for _, times, acked in records.values())
    print(f"\nSIGTERM with {len(opened)} sessions ({NEGOTIATING} negotiating): exit 0 after "
          f"{took:.2f} s")  # fmt: skip


async def _negotiating(stderr: Path) -> bool:
    text = await asyncio.to_thread(stderr.read_text)
    return len(re.findall(r": new -> negotiating", text)) > CONNECTED
