"""Helpers of the fault tests: the agent CLI as a process, peers in a child process, and readers of
what the backend and the agent's state directory hold (SQLite, opened read-only)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from agent.devserver.process import DevServerProcess

ROOT = Path(__file__).resolve().parents[2]
SIG = "meetings/webrtc/signaling"


async def start_agent_process(
    server: DevServerProcess,
    token: str,
    meeting: str,
    state_dir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
) -> asyncio.subprocess.Process:
    """`connvo-agent run` (debug logging) with stdout/stderr appended to `log_path` files."""
    token_file = state_dir.parent / "bot.token"
    token_file.write_text(token)
    log_path = log_path or state_dir.parent / "agent"
    out = open(f"{log_path}.stdout", "ab")  # noqa: ASYNC230 - handed to the child
    err = open(f"{log_path}.stderr", "ab")  # noqa: ASYNC230
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "run",
            "--url", server.url, "--token-file", str(token_file), "--meeting", meeting,
            "--state-dir", str(state_dir), "--ice-host", "127.0.0.1", "--log-level", "debug",
            "--video", "none", *extra,
            stdout=out, stderr=err, cwd=ROOT,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
    finally:
        out.close()
        err.close()


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        # Still running when the test gave up on it: its stacks go to its stderr file first
        # (connvo-agent's SIGUSR1 handler), so a hang can be diagnosed from the test's output.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGUSR1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


class PeersProcess:
    """tests/faults/peers_proc.py as a child process."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.results: dict[int, dict[str, Any]] = {}
        self._lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, spec: dict[str, Any]) -> AsyncIterator[PeersProcess]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "tests" / "faults" / "peers_proc.py"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
            limit=2**22,
        )  # fmt: skip
        peers = cls(proc)
        try:
            peers._send(spec)
            async with asyncio.timeout(60):
                assert (await peers._next("ready"))["ready"]
            yield peers
        finally:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
            try:
                async with asyncio.timeout(20):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
            peers._reader.cancel()

    def _send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            obj = json.loads(line)
            if "offered" in obj:
                self.results[obj["offered"]] = obj
            else:
                await self._lines.put(obj)

    async def _next(self, key: str) -> dict[str, Any]:
        while True:
            obj = await self._lines.get()
            if key in obj:
                return obj

    async def offer(self, indices: list[int]) -> None:
        """Offer from these peers at once; returns when each connected or gave up."""
        self._send({"cmd": "offer", "peers": indices})
        await self._next("offer_done")

    async def frames(self) -> list[int]:
        self._send({"cmd": "frames"})
        return (await self._next("frames"))["frames"]  # type: ignore[no-any-return]


def backend_signals_to(server: DevServerProcess, user_id: str) -> dict[str, bool]:
    """Every signal addressed to `user_id` at the backend: id -> processed."""
    return {sid: row[0] for sid, row in backend_signal_rows(server, user_id).items()}


def backend_signal_rows(server: DevServerProcess, user_id: str) -> dict[str, tuple[Any, ...]]:
    """id -> (processed, type, sender session, timestamp ms) of signals addressed to `user_id`."""
    with contextlib.closing(sqlite3.connect(f"file:{server.db}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT id, processed, type, session_id, timestamp FROM signals WHERE to_user_id = ?",
            (user_id,),
        ).fetchall()
    return {row[0]: (bool(row[1]), *row[2:]) for row in rows}


def agent_records(state_dir: Path) -> dict[str, tuple[str, int, bool]]:
    """The agent's state store: signal id -> (outcome, times applied, acknowledged)."""
    files = list(state_dir.glob("*.sqlite"))
    assert len(files) == 1, files
    with contextlib.closing(sqlite3.connect(f"file:{files[0]}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT id, outcome, times, acked_at FROM signals").fetchall()
    return {row[0]: (row[1], int(row[2]), row[3] is not None) for row in rows}


async def bot_sessions(url: str, token: str, meeting: str, bot_user: str) -> list[dict[str, Any]]:
    """The bot's sessions as the backend lists them (asked as another participant)."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            f"{url}/api/run/{SIG}/getActiveSessions",
            json={"args": {"meetingId": meeting}, "format": "json"},
            headers={"Authorization": f"Bearer {token}"},
        )
    body = response.json()
    if body.get("status") != "success":
        return []
    return [s for s in body["value"] if s["userId"] == bot_user]


async def send_stale_backlog(url: str, token: str, meeting: str, target: str, n: int) -> None:
    """`n` answers from sessions the agent never heard of (what a crashed peer leaves behind)."""
    sem = asyncio.Semaphore(8)
    async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {token}"}) as http:

        async def one(i: int) -> None:
            async with sem:
                response = await http.post(
                    f"{url}/api/run/{SIG}/exchangeSessionDescription",
                    json={
                        "args": {
                            "meetingId": meeting,
                            "sessionId": f"ghost-{i}",
                            "description": {"type": "answer", "sdp": "v=0\r\n"},
                            "targetUserId": target,
                        },
                        "format": "json",
                    },
                )
                assert response.status_code == 200, response.text

        await asyncio.gather(*(one(i) for i in range(n)))
