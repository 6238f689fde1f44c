"""Fault injection switched at run time through the admin API, observed by a real HTTP client."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from agent.devserver.process import DevServerError, DevServerProcess
from tests.support.devserver import SIG, Api, MeetingSetup, setup_meeting

GET_MEETING = "meetings/queries/getMeeting"
GET_USER = "users/queries/getCurrentUser"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServerProcess]:
    # Faults are server-wide: this module has its own server.
    with DevServerProcess(tmp_path_factory.mktemp("faults") / "db.sqlite") as srv:
        yield srv


@pytest.fixture(autouse=True)
def no_faults(server: DevServerProcess) -> Iterator[None]:
    server.clear_faults()
    yield
    server.clear_faults()


@pytest.fixture
def meeting(server: DevServerProcess, http: httpx.Client) -> tuple[MeetingSetup, list[str]]:
    m, names = setup_meeting(server, "host", "guest", client=http)
    for n in names:
        m.api(n).ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId=n)
    return m, names


def _timed(api: Api, function: str, **args: object) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    r = api.call(function, args)
    return r, time.monotonic() - start


def _signal(m: MeetingSetup, sender: str, target: str, n: int = 1) -> None:
    for i in range(n):
        m.api(sender).ok(
            SIG + "exchangeICECandidate", meetingId=m.id, sessionId=sender,
            candidate={"candidate": f"c{i}"}, targetUserId=m.users[target],
        )  # fmt: skip


# --- the admin API -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_admin_requires_the_key(
    server: DevServerProcess, http: httpx.Client, key: str | None
) -> None:
    headers = {} if key is None else {"X-Admin-Key": key}
    url = server.url + "/admin/faults"
    denied = http.post(url, json={"error_rate": 1}, headers=headers)
    assert denied.status_code == 401 and denied.json()["code"] == "BadAdminKey"
    assert http.post(server.url + "/admin/next-ids", headers=headers).status_code == 401
    assert http.post(server.url + "/admin/tokens", headers=headers).status_code == 401
    assert http.get(url, headers=headers).status_code == 401
    assert http.delete(url, headers=headers).status_code == 401
    assert http.get(server.url + "/admin/stats", headers=headers).status_code == 401
    assert http.post(server.url + "/admin/stats/reset", headers=headers).status_code == 401
    assert server.faults()["error_rate"] == 0  # nothing was switched on


def test_admin_get_set_clear(server: DevServerProcess) -> None:
    set_ = server.set_faults(latency_ms=5, error_rate=0.25, functions=[GET_USER], seed=3)
    assert server.faults() == set_
    assert (set_["latency_ms"], set_["error_rate"], set_["functions"]) == (5, 0.25, [GET_USER])
    server.clear_faults()
    cleared = server.faults()
    assert (
        cleared["latency_ms"] == 0 and cleared["error_rate"] == 0 and cleared["functions"] is None
    )


@pytest.mark.parametrize(
    "config", [{"error_rate": 2}, {"bogus": 1}, {"ack_fail_mode": "sideways"}, {"latency_ms": -1}]
)
def test_admin_rejects_bad_configs(
    server: DevServerProcess, http: httpx.Client, config: dict[str, object]
) -> None:
    with pytest.raises(DevServerError, match="400"):
        server.set_faults(**config)
    r = http.post(server.url + "/admin/faults", json=config,
                  headers={"X-Admin-Key": server.admin_key})  # fmt: skip
    assert r.status_code == 400 and r.json()["code"] == "BadRequest"


def test_faults_do_not_touch_health_or_admin(server: DevServerProcess, http: httpx.Client) -> None:
    server.set_faults(error_rate=1, drop_rate=1)
    assert http.get(server.url + "/healthz").status_code == 200
    assert server.faults()["drop_rate"] == 1


# --- each fault ----------------------------------------------------------------------------------


def test_latency_on_and_off(server: DevServerProcess, http: httpx.Client) -> None:
    api = Api(server.url, server.token("lat"), http)
    server.set_faults(latency_ms=400)
    r, took = _timed(api, GET_USER)
    assert r.status_code == 200 and took >= 0.4
    server.clear_faults()
    r, took = _timed(api, GET_USER)
    assert r.status_code == 200 and took < 0.4


def test_functions_filter(server: DevServerProcess, http: httpx.Client) -> None:
    m, (host,) = setup_meeting(server, "host", client=http)
    server.set_faults(error_rate=1, functions=[GET_MEETING])
    assert m.api(host).call(GET_MEETING, {"meetingId": m.id}).status_code == 500
    assert m.api(host).call(GET_USER).status_code == 200


def test_error_rate_answers_500_without_running(
    server: DevServerProcess, meeting: tuple[MeetingSetup, list[str]]
) -> None:
    m, (host, guest) = meeting
    server.set_faults(error_rate=1)
    r = m.api(host).call(
        SIG + "exchangeICECandidate",
        {"meetingId": m.id, "sessionId": host, "candidate": {"candidate": "x"},
         "targetUserId": m.users[guest]},
    )  # fmt: skip
    assert r.status_code == 500
    # a transport error, not an envelope: no function ran
    assert r.json() == {"code": "InternalServerError", "message": "Injected fault: internal error"}
    server.clear_faults()
    assert m.api(guest).ok(SIG + "getPendingSignals", meetingId=m.id) == []


def test_rate_limit_429_with_retry_after(server: DevServerProcess, http: httpx.Client) -> None:
    api = Api(server.url, server.token("rl"), http)
    server.set_faults(rate_limit_rate=1, retry_after_s=7)
    r = api.call(GET_USER)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "7"
    assert r.json()["code"] == "TooManyRequests" and "status" not in r.json()


def test_drop_closes_connection_without_response(server: DevServerProcess) -> None:
    token = server.token("drop")
    server.set_faults(drop_rate=1)
    with (
        httpx.Client(timeout=10) as client,
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
    ):
        client.post(
            f"{server.url}/api/run/{GET_USER}",
            json={"args": {}},
            headers={"Authorization": f"Bearer {token}"},
        )
    server.clear_faults()
    with httpx.Client(timeout=10) as client:
        r = client.post(
            f"{server.url}/api/run/{GET_USER}",
            json={"args": {}},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert r.status_code == 200


def test_timeout_hangs_then_answers(server: DevServerProcess) -> None:
    token = server.token("slowpoke")
    headers = {"Authorization": f"Bearer {token}"}
    server.set_faults(timeout_rate=1, timeout_s=30)
    with httpx.Client(timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
        client.post(f"{server.url}/api/run/{GET_USER}", json={"args": {}}, headers=headers)
    server.set_faults(timeout_rate=1, timeout_s=0.4)
    with httpx.Client(timeout=10) as client:
        start = time.monotonic()
        r = client.post(f"{server.url}/api/run/{GET_USER}", json={"args": {}}, headers=headers)
        assert r.status_code == 200 and time.monotonic() - start >= 0.4


def test_slow_body(server: DevServerProcess, http: httpx.Client) -> None:
    token = server.token("trickle")
    server.set_faults(slow_body_ms=600)
    with http.stream(
        "POST",
        f"{server.url}/api/run/{GET_USER}",
        json={"args": {}},
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        headers_at = time.monotonic()
        chunks = list(r.iter_raw())
        body_took = time.monotonic() - headers_at
    assert r.status_code == 200
    assert len(chunks) > 1 and body_took >= 0.4  # the body trickled in after the headers
    assert b"".join(chunks).startswith(b'{"status":"success"')


@pytest.mark.parametrize("mode", ["before", "after"])
def test_ack_failure(
    server: DevServerProcess, meeting: tuple[MeetingSetup, list[str]], mode: str
) -> None:
    m, (host, guest) = meeting
    _signal(m, host, guest, 2)
    g = m.api(guest)
    ids_ = [s["_id"] for s in g.ok(SIG + "getPendingSignals", meetingId=m.id)]
    server.set_faults(ack_fail_rate=1, ack_fail_mode=mode)
    r = g.call(SIG + "markSignalsProcessed", {"signalIds": ids_})
    assert r.status_code == 500 and r.json()["code"] == "InternalServerError"
    # other functions are unaffected by ack faults
    still = g.ok(SIG + "getPendingSignals", meetingId=m.id)
    server.clear_faults()
    if mode == "before":
        assert sorted(s["_id"] for s in still) == sorted(ids_)  # not applied
    else:
        assert still == []  # applied, though the client was told it failed


def test_duplicate_deliveries(
    server: DevServerProcess, meeting: tuple[MeetingSetup, list[str]]
) -> None:
    m, (host, guest) = meeting
    _signal(m, host, guest, 3)
    g = m.api(guest)
    clean = [s["_id"] for s in g.ok(SIG + "getPendingSignals", meetingId=m.id)]
    server.set_faults(duplicate_rate=1)
    doubled = [s["_id"] for s in g.ok(SIG + "getPendingSignals", meetingId=m.id)]
    assert doubled == [i for i in clean for _ in range(2)]
    server.clear_faults()
    assert [s["_id"] for s in g.ok(SIG + "getPendingSignals", meetingId=m.id)] == clean


def test_seeded_faults_are_random_per_request_and_reproducible(
    server: DevServerProcess, http: httpx.Client
) -> None:
    api = Api(server.url, server.token("dice"), http)

    def run() -> list[int]:
        server.set_faults(error_rate=0.5, seed=1234)
        return [api.call(GET_USER).status_code for _ in range(30)]

    first = run()
    assert set(first) == {200, 500}  # each request draws independently
    assert run() == first


# --- stats ---------------------------------------------------------------------------------------


def test_stats_per_function_and_user(server: DevServerProcess, http: httpx.Client) -> None:
    m, (host, guest) = setup_meeting(server, "host", "guest", client=http)
    server.reset_stats()
    for _ in range(3):
        m.api(host).ok(GET_USER)
    m.api(guest).ok(GET_MEETING, meetingId=m.id)
    stats = server.stats()
    assert stats["total"] == 4
    assert stats["functions"] == {GET_USER: 3, GET_MEETING: 1}
    assert stats["users"] == {m.users[host]: 3, m.users[guest]: 1}
    assert stats["elapsedS"] > 0
    server.reset_stats()
    assert server.stats()["total"] == 0
