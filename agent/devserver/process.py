"""`DevServerProcess`: the dev backend in a subprocess, for tests, the demo and benchmarks.

Readiness is the server's own "listening on" line (read from its stdout), never a sleep.
"""

from __future__ import annotations

import collections
import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self

import httpx

from agent.devserver import admin
from agent.devserver.server import READY_PREFIX


class DevServerError(RuntimeError):
    """The server did not start, or an admin call failed."""


ErrorStatus = Literal[200, 400, 560]


class DevServerProcess:
    """One dev backend subprocess on `db` (a fresh temporary file when None).

    Usage: `with DevServerProcess(generation=1) as srv: token = srv.token("alice")`.
    `error_status` is the HTTP status of function errors (`--error-status`); `redact=True` gives
    production-style messages (`--redact`).
    """

    def __init__(
        self,
        db: Path | str | None = None,
        *,
        generation: Literal[1, 2] = 2,
        ids: Literal["random", "ordered"] = "random",
        admin_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ice_servers: Sequence[str] = (),
        error_status: ErrorStatus = 200,
        redact: bool = False,
        startup_timeout: float = 20.0,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        if db is None:
            self._tmpdir: tempfile.TemporaryDirectory[str] | None = tempfile.TemporaryDirectory(
                prefix="connvo-devserver-"
            )
            db = Path(self._tmpdir.name) / "devserver.sqlite"
        else:
            self._tmpdir = None
        self.db = Path(db)
        self.generation = generation
        self.ids = ids
        self.admin_key = admin_key or secrets.token_urlsafe(24)
        self.host = host
        self.port = port
        self.ice_servers = list(ice_servers)
        self.error_status = error_status
        self.redact = redact
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self.env = env
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=200)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._proc is not None and self._proc.poll() is None:
            raise DevServerError("already running")
        cmd = [
            sys.executable, "-m", "agent", "devserver",
            "--host", self.host, "--port", str(self.port), "--db", str(self.db),
            "--generation", str(self.generation), "--ids", self.ids,
            "--admin-key", self.admin_key, "--error-status", str(self.error_status),
        ]  # fmt: skip
        if self.redact:
            cmd.append("--redact")
        for url in self.ice_servers:
            cmd += ["--ice-server", url]
        cmd += self.extra_args
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        self._stderr.clear()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._proc = proc
        lines: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None and proc.stderr is not None
        threading.Thread(target=_pump, args=(proc.stdout, lines.put, True), daemon=True).start()
        threading.Thread(
            target=_pump, args=(proc.stderr, self._stderr.append, False), daemon=True
        ).start()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(0.0, remaining))
            except queue.Empty:
                self._kill()
                raise DevServerError(
                    f"dev server not ready after {self.startup_timeout}s: {self.stderr_tail()}"
                ) from None
            if line is None:  # stdout closed: the process died
                proc.wait(timeout=10)
                raise DevServerError(
                    f"dev server exited with {proc.returncode}: {self.stderr_tail()}"
                )
            if line.startswith(READY_PREFIX):
                self.url = line[len(READY_PREFIX) :].strip()
                self.port = int(self.url.rsplit(":", 1)[1])
                return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, SIGKILL after `timeout`; returns the exit status (None if not running)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        self._proc = None
        return proc.returncode

    def restart(self) -> Self:
        """Stop and start again on the same database, on the same port when it is still free."""
        self.stop()
        try:
            return self.start()
        except DevServerError:
            if self.port == 0:
                raise
            self.port = 0
            return self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(list(self._stderr)[-lines:])

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- database shortcuts (work whether or not the server runs) --------------------------------

    def token(self, name: str, ttl_s: float = 24 * 3600) -> str:
        """A bearer token for user `name` (created if missing)."""
        return admin.issue_token(self.db, name, ttl_s)

    def token_without_user(self, name: str, ttl_s: float = 24 * 3600) -> str:
        """A bearer token that verifies but has no Connvo user behind it: functions answer
        UNAUTHORIZED, getCurrentUser answers null."""
        return admin.issue_unprovisioned_token(self.db, name, ttl_s)

    def meeting(
        self,
        host: str,
        participants: Iterable[str] = (),
        title: str = "Dev meeting",
        state: admin.MeetingStartState = "active",
    ) -> str:
        """A meeting written straight into the database: active (default) or scheduled."""
        return admin.create_meeting(self.db, host, participants, title=title, state=state)

    def user_id(self, name: str) -> str:
        return admin.user_id(self.db, name)

    def set_user_active(self, name: str, active: bool) -> None:
        """A deactivated user's tokens still verify, but they have no Connvo user."""
        admin.set_user_active(self.db, name, active)

    # --- calls as a user, over HTTP ---------------------------------------------------------------

    def run(self, function: str, args: dict[str, Any], *, as_user: str) -> Any:
        """Call `function` as user `as_user` over HTTP; its value, or DevServerError."""
        if not self.url:
            raise DevServerError("not started")
        try:
            response = httpx.post(
                f"{self.url}/api/run/{function}",
                json={"args": args, "format": "json"},
                headers={"Authorization": f"Bearer {self.token(as_user)}"},
                timeout=10.0,
            )
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise DevServerError(f"{function} failed: {exc!r}") from exc
        # A function error is an envelope with status "error", whatever the HTTP status.
        if not isinstance(body, dict) or body.get("status") != "success":
            raise DevServerError(f"{function}: HTTP {response.status_code} {response.text}")
        return body.get("value")

    def start_meeting(self, meeting_id: str, host: str) -> dict[str, Any]:
        """The host starts a scheduled meeting (`startMeeting`)."""
        result: dict[str, Any] = self.run(
            "meetings/lifecycle/startMeeting", {"meetingId": meeting_id}, as_user=host
        )
        return result

    def end_meeting(self, meeting_id: str, host: str) -> dict[str, Any]:
        """The host ends an active meeting (`endMeeting`): getMeeting then shows "concluded"."""
        result: dict[str, Any] = self.run(
            "meetings/lifecycle/endMeeting", {"meetingId": meeting_id}, as_user=host
        )
        return result

    # --- admin API ------------------------------------------------------------------------------

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if not self.url:
            raise DevServerError("not started")
        try:
            response = httpx.request(
                method,
                self.url + path,
                json=body,
                headers={"X-Admin-Key": self.admin_key},
                timeout=10.0,
            )
        except httpx.HTTPError as exc:
            raise DevServerError(f"admin call {method} {path} failed: {exc!r}") from exc
        if response.status_code != 200:
            raise DevServerError(
                f"admin call {method} {path}: {response.status_code} {response.text}"
            )
        return response.json()

    def set_faults(self, **fields: Any) -> dict[str, Any]:
        """Replace the fault configuration (see docs/devserver.md for the fields)."""
        result: dict[str, Any] = self._admin("POST", "/admin/faults", fields)
        return result

    def faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._admin("GET", "/admin/faults")
        return result

    def clear_faults(self) -> None:
        self._admin("DELETE", "/admin/faults")

    def tokens(self, names: Sequence[str], ttl_s: float | None = None) -> dict[str, Any]:
        """`{name: {"token", "userId"}}` for many users at once, over HTTP (`/admin/tokens`)."""
        body: dict[str, Any] = {"names": list(names)}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        return dict(self._admin("POST", "/admin/tokens", body)["tokens"])

    def next_ids(self, table: str, sort_keys: Sequence[int]) -> None:
        """The next IDs inserted into `table` take these sort keys, in order (`/admin/next-ids`).

        A key is the ID's 8-byte prefix (0 <= key < 2**64): IDs of different keys sort as their
        keys do, whatever the rest. Replaces the keys still queued for the table; `[]` clears them.
        """
        self._admin("POST", "/admin/next-ids", {"table": table, "sortKeys": list(sort_keys)})

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._admin("GET", "/admin/stats")
        return result

    def reset_stats(self) -> None:
        self._admin("POST", "/admin/stats/reset")


def _pump(stream: IO[str], sink: Callable[[str | None], object], mark_eof: bool) -> None:
    # Keep draining the child's pipes so it never blocks on a full pipe; None marks EOF.
    for line in stream:
        sink(line.rstrip("\n"))
    if mark_eof:
        sink(None)
