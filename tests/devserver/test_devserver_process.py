"""The command line, the subprocess wrapper, signals and persistence across restarts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agent.devserver.process import DevServerError, DevServerProcess
from agent.devserver.server import READY_PREFIX
from agent.devserver.store import Store
from tests.conftest import DevServerFactory
from tests.support.devserver import LIFE, REQUEST_ID, SIG, Api, setup_meeting, unique

CLI = [sys.executable, "-m", "agent", "devserver"]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def _spawn(
    *args: str, env: dict[str, str] | None = None, stderr: Path
) -> tuple[subprocess.Popen[str], str]:
    """Start the server by hand; returns it and its ready line (read from stdout, no sleeping)."""
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [*CLI, "--port", "0", *args], stdout=subprocess.PIPE, stderr=err, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(READY_PREFIX), (line, stderr.read_text())
    return proc, line


# --- persistence ---------------------------------------------------------------------------------


def test_restart_keeps_everything(devserver_factory: DevServerFactory) -> None:
    server = devserver_factory()
    m, (host, guest) = setup_meeting(server, "host", "guest")
    h, g = m.api(host), m.api(guest)
    created = h.ok(LIFE + "createMeeting", title="persisted")["meetingId"]
    h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="h")
    h.ok(SIG + "updateSessionState", meetingId=m.id, sessionId="h", state="connected")
    h.ok(
        SIG + "exchangeSessionDescription", meetingId=m.id, sessionId="h",
        description={"type": "offer", "sdp": "v=0"}, targetUserId=m.users[guest],
    )  # fmt: skip
    before = g.ok(SIG + "getPendingSignals", meetingId=m.id)
    old_url = server.url

    server.restart()
    assert server.url == old_url  # same port when it is still free
    h2, g2 = Api(server.url, h.token), Api(server.url, g.token)  # the old tokens still work
    assert g2.ok(SIG + "getPendingSignals", meetingId=m.id) == before
    assert h2.ok("meetings/queries/getMeeting", meetingId=created)["title"] == "persisted"
    (s,) = g2.ok(SIG + "getActiveSessions", meetingId=m.id)
    assert (s["sessionId"], s["state"]) == ("h", "connected")
    assert g2.ok("users/queries/getCurrentUser")["_id"] == m.users[guest]
    assert server.user_id(guest) == m.users[guest]


def test_generation_switch_on_same_db(devserver_factory: DevServerFactory, tmp_path: Path) -> None:
    db = tmp_path / "shared.sqlite"
    server = devserver_factory(db=db, generation=2)
    m, (host, a) = setup_meeting(server, "host", "a")
    m.api(host).ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="h")
    m.api(host).ok(
        SIG + "exchangeICECandidate", meetingId=m.id, sessionId="h", candidate={"candidate": ""}
    )  # a broadcast
    assert len(m.api(a).ok(SIG + "getPendingSignals", meetingId=m.id)) == 1
    server.stop()
    gen1 = devserver_factory(db=db, generation=1)
    assert Api(gen1.url, m.api(a).token).ok(SIG + "getPendingSignals", meetingId=m.id) == []


# --- the wrapper ---------------------------------------------------------------------------------


def test_stop_exits_zero_and_context_manager(tmp_path: Path) -> None:
    with DevServerProcess(tmp_path / "db.sqlite") as server:
        assert server.running and server.url.startswith("http://127.0.0.1:")
        assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
        assert server.stop() == 0
        assert not server.running
    with DevServerProcess() as temp:  # a temporary database of its own
        db = temp.db
        assert db.exists()
    assert not db.exists()


def test_start_failure_is_reported(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = DevServerProcess(tmp_path / "db.sqlite", port=port)
        with pytest.raises(DevServerError, match="cannot serve"):
            server.start()
        server.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    proc, line = _spawn("--db", str(tmp_path / "db.sqlite"), "--admin-key", "k",
                        stderr=tmp_path / "err")  # fmt: skip
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, (tmp_path / "err").read_text()
    assert out == ""  # the ready line was the only output
    assert line.rstrip("\n").startswith(READY_PREFIX + "http://127.0.0.1:")


def test_generated_and_env_admin_keys(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CONNVO_DEVSERVER_ADMIN_KEY"}
    proc, line = _spawn("--db", str(tmp_path / "db.sqlite"), env=env, stderr=tmp_path / "err")
    try:
        url = line.removeprefix(READY_PREFIX).strip()
        printed = [ln for ln in (tmp_path / "err").read_text().splitlines() if "admin key:" in ln]
        key = printed[0].rsplit(" ", 1)[1]
        assert httpx.get(url + "/admin/faults", headers={"X-Admin-Key": key}).status_code == 200
        assert httpx.get(url + "/admin/faults", headers={"X-Admin-Key": "x"}).status_code == 401
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    proc, line = _spawn(
        "--db", str(tmp_path / "db.sqlite"), env={"CONNVO_DEVSERVER_ADMIN_KEY": "from-env"},
        stderr=tmp_path / "err2",
    )  # fmt: skip
    try:
        url = line.removeprefix(READY_PREFIX).strip()
        r = httpx.get(url + "/admin/faults", headers={"X-Admin-Key": "from-env"})
        assert r.status_code == 200
        assert "admin key:" not in (tmp_path / "err2").read_text()
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


# --- token and meeting commands ------------------------------------------------------------------


def test_cli_token_and_meeting_against_running_server(devserver_factory: DevServerFactory) -> None:
    server = devserver_factory()
    host, guest = unique("host"), unique("guest")
    r = _cli("meeting", "--db", str(server.db), "--host", host, "--participant", guest)
    assert r.returncode == 0, r.stderr
    meeting_id = r.stdout.strip()
    r = _cli("token", "--db", str(server.db), "--user", guest, "--ttl", "600")
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert r.stdout.count("\n") == 1 and token.count(".") == 2
    # the running server sees rows written by another process at once
    api = Api(server.url, token)
    meeting = api.ok("meetings/queries/getMeeting", meetingId=meeting_id)
    assert (meeting["state"], meeting["userRole"], meeting["participantCount"]) == (
        "active", "participant", 2
    )  # fmt: skip
    me = api.ok("users/queries/getCurrentUser")
    assert (me["displayName"], me["email"]) == (guest, f"{guest}@example.com")


def test_cli_unprovisioned_token_and_scheduled_meeting(
    devserver_factory: DevServerFactory,
) -> None:
    server = devserver_factory()
    host, ghost = unique("host"), unique("ghost")
    r = _cli("meeting", "--db", str(server.db), "--host", host, "--scheduled")
    assert r.returncode == 0, r.stderr
    meeting_id = r.stdout.strip()
    assert Api(server.url, server.token(host)).ok(
        "meetings/queries/getMeeting", meetingId=meeting_id
    )["state"] == "scheduled"  # fmt: skip
    r = _cli("token", "--db", str(server.db), "--user", ghost, "--unprovisioned")
    assert r.returncode == 0, r.stderr
    api = Api(server.url, r.stdout.strip())
    assert api.ok("users/queries/getCurrentUser") is None  # verifies, but no Connvo user
    api.error("meetings/queries/getMeeting", code="UNAUTHORIZED", meetingId=meeting_id)
    store = Store(server.db)
    try:  # nobody was created
        assert store.one("SELECT id FROM users WHERE display_name = ?", (ghost,)) is None
    finally:
        store.close()


@pytest.mark.parametrize(("flags", "status"), [([], 200), (["--error-status", "560"], 560)])
def test_cli_error_status_and_redact(tmp_path: Path, flags: list[str], status: int) -> None:
    proc, line = _spawn(
        "--db", str(tmp_path / "db.sqlite"), "--admin-key", "k", *flags, "--redact",
        stderr=tmp_path / "err",
    )  # fmt: skip
    try:
        url = line.removeprefix(READY_PREFIX).strip()
        r = httpx.post(
            f"{url}/api/run/meetings/queries/getMeeting", json={"args": {}, "format": "json"}
        )
        assert r.status_code == status
        body = r.json()
        assert body["status"] == "error" and "errorData" not in body
        assert REQUEST_ID.fullmatch(body["errorMessage"])  # redacted: nothing after it
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_process_passes_error_status_and_redact(tmp_path: Path) -> None:
    with DevServerProcess(tmp_path / "db.sqlite", error_status=400, redact=True) as server:
        m, (host,) = setup_meeting(server, "host")
        body = Api(server.url, None, error_status=400).error(
            "meetings/queries/getMeeting", code="UNAUTHORIZED", meetingId=m.id
        )
        assert REQUEST_ID.fullmatch(body["errorMessage"])
        assert m.api(host).error_status == 400


def test_cli_default_db_follows_xdg_state_home(tmp_path: Path) -> None:
    r = _cli("token", "--user", "alice", env={"XDG_STATE_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "connvo-agent" / "devserver.sqlite").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--generation", "3"], "--generation"),
        (["--ids", "sorted"], "--ids"),
        (["--port", "70000"], "--port"),
        (["--port", "x"], "--port"),
        (["--ice-server", "http://example.org"], "--ice-server"),
        (["--error-status", "500"], "--error-status"),
        (["--error-status", "x"], "--error-status"),
        (["--transcript-rate-limit", "50"], "--transcript-rate-limit"),
        (["--transcript-rate-limit", "0/60"], "--transcript-rate-limit"),
        (["--transcript-rate-limit", "5/0"], "--transcript-rate-limit"),
        (["--redact", "yes"], "yes"),
        (["--admin-key", ""], "--admin-key"),
        (["--bogus"], "--bogus"),
        (["token"], "--user"),
        (["token", "--user", ""], "--user"),
        (["token", "--user", "a", "--ttl", "0"], "--ttl"),
        (["meeting"], "--host"),
        (["meeting", "--host", "a@b"], "user name"),
    ],
)
def test_bad_flags_give_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    r = _cli(*args, env={"XDG_STATE_HOME": str(tmp_path)})
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("connvo-agent: error:") and fragment in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = _cli("--port", str(port), "--db", str(tmp_path / "db"), "--admin-key", "k")
    assert r.returncode == 1
    assert r.stderr.strip().startswith("connvo-agent: error: cannot serve on 127.0.0.1:")
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["token", "--user", "a"], ["--port", "0"]])
def test_unusable_db_is_one_line(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "file").write_text("not a directory")
    r = _cli(*command, "--db", str(tmp_path / "file" / "db.sqlite"))
    assert r.returncode == 1
    assert r.stderr.startswith("connvo-agent: error: cannot use database")
    assert len(r.stderr.strip().splitlines()) == 1


def test_admin_tokens_issue_working_tokens_and_need_the_key(devserver: DevServerProcess) -> None:
    issued = devserver.tokens(["load-0", "load-1"])
    assert set(issued) == {"load-0", "load-1"}
    for name, entry in issued.items():
        me = httpx.post(
            f"{devserver.url}/api/run/users/queries/getCurrentUser",
            json={"args": {}, "format": "json"},
            headers={"Authorization": f"Bearer {entry['token']}"},
        ).json()
        assert me["value"]["_id"] == entry["userId"] == devserver.user_id(name)
    denied = httpx.post(f"{devserver.url}/admin/tokens", json={"names": ["x"]})
    assert denied.status_code == 401 and denied.json()["code"] == "BadAdminKey"
    bad = httpx.post(
        f"{devserver.url}/admin/tokens",
        json={"names": ["a@b"]},
        headers={"X-Admin-Key": devserver.admin_key},
    )
    assert bad.status_code == 400 and bad.json()["code"] == "BadRequest"
