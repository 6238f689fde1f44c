"""The Convex HTTP transport: envelopes, status codes, limits, authentication, argument checks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from agent.devserver import auth
from agent.devserver.process import DevServerProcess
from agent.devserver.store import Store, subject_for
from agent.signaling.models import MAX_REQUEST_BODY_BYTES, MAX_SDP_CHARS
from tests.support.devserver import SIG, Api, setup_meeting, unique

GET_USER = "users/queries/getCurrentUser"


@pytest.fixture(scope="module")
def alice(server2: DevServerProcess, http: httpx.Client) -> Api:
    return Api(server2.url, server2.token(unique("alice")), http)


def test_healthz(server2: DevServerProcess, http: httpx.Client) -> None:
    r = http.get(server2.url + "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_success_envelope(alice: Api) -> None:
    r = alice.call(GET_USER)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["status"] == "success"
    assert body["value"]["email"].endswith("@example.com")


def test_unknown_function_is_404_envelope(alice: Api) -> None:
    body = alice.error("meetings/nope/doesNotExist", status=404, code="UNKNOWN_FUNCTION")
    assert "meetings/nope/doesNotExist" in body["errorMessage"]


def test_unknown_route_and_wrong_method_are_envelopes(
    server2: DevServerProcess, http: httpx.Client, alice: Api
) -> None:
    r = http.get(server2.url + "/nowhere")
    assert r.status_code == 404 and r.json()["status"] == "error"
    r = http.get(f"{server2.url}/api/run/{GET_USER}")
    assert r.status_code == 405 and r.json()["status"] == "error"


@pytest.mark.parametrize(
    ("content", "content_type", "fragment"),
    [
        (b'{"args": {}', "application/json", "not valid JSON"),
        (b"args=1", "application/x-www-form-urlencoded", "Content-Type"),
        (b"{}", "application/json", '"args"'),
        (b'{"args": []}', "application/json", '"args"'),
        (b'{"args": {}, "format": "xml"}', "application/json", "format"),
        (b'{"args": {}, "extra": 1}', "application/json", "args"),
        (b'{"args": {"x": NaN}}', "application/json", "JSON"),
        (b"\xff\xfe", "application/json", "JSON"),
        (b'{"args": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}", "application/json", "JSON"),
    ],
)
def test_malformed_bodies_are_400(
    alice: Api, http: httpx.Client, content: bytes, content_type: str, fragment: str
) -> None:
    r = http.post(
        f"{alice.url}/api/run/{GET_USER}",
        content=content,
        headers={"Authorization": f"Bearer {alice.token}", "Content-Type": content_type},
    )
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["status"] == "error" and body["errorData"]["code"] == "BAD_ARGS"
    assert fragment in body["errorMessage"]


def test_oversized_body_is_413(alice: Api, http: httpx.Client) -> None:
    padding = "x" * (MAX_REQUEST_BODY_BYTES + 10)
    r = alice.call(GET_USER, {"pad": padding})
    assert r.status_code == 413
    assert r.json()["errorData"]["code"] == "TOO_LARGE"


def test_oversized_chunked_body_is_413_while_reading(alice: Api, http: httpx.Client) -> None:
    # No Content-Length: the limit must be enforced while the chunks arrive.
    chunk = b" " * 65536

    def body() -> Iterator[bytes]:
        yield b'{"args": {}, "format": "json"'
        for _ in range(MAX_REQUEST_BODY_BYTES // len(chunk) + 2):
            yield chunk
        yield b"}"

    r = http.post(
        f"{alice.url}/api/run/{GET_USER}",
        content=body(),
        headers={"Authorization": f"Bearer {alice.token}", "Content-Type": "application/json"},
    )
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    assert r.json()["errorData"]["code"] == "TOO_LARGE"


def test_body_just_under_limit_is_accepted_by_transport(alice: Api) -> None:
    # Reaches argument validation (400 BAD_ARGS for the extra field), not the size limit.
    padding = "x" * (MAX_REQUEST_BODY_BYTES - 200)
    body = alice.error(GET_USER, status=400, code="BAD_ARGS", pad=padding)
    assert padding not in body["errorMessage"]


def test_oversized_sdp_is_400_naming_the_field(
    server2: DevServerProcess, http: httpx.Client
) -> None:
    m, (host, _guest) = setup_meeting(server2, "host", "guest", client=http)
    api = m.api(host)
    api.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="s1")
    body = api.error(
        SIG + "exchangeSessionDescription",
        code="BAD_ARGS",
        meetingId=m.id,
        sessionId="s1",
        description={"type": "offer", "sdp": "v" * (MAX_SDP_CHARS + 1)},
    )
    assert "ArgumentValidationError" in body["errorMessage"]
    assert "Path: .description.sdp" in body["errorMessage"]
    assert body["errorData"]["path"] == ".description.sdp"


@pytest.mark.parametrize(
    ("args", "path"),
    [
        ({}, ".meetingId"),
        ({"meetingId": 5}, ".meetingId"),
        ({"meetingId": "not-an-id"}, ".meetingId"),
        ({"meetingId": "MEETING", "bogus": 1}, ".meetingId"),
    ],
)
def test_argument_errors_name_the_path(alice: Api, args: dict[str, Any], path: str) -> None:
    body = alice.error("meetings/queries/getMeeting", code="BAD_ARGS", **args)
    assert body["errorMessage"].startswith("ArgumentValidationError")
    assert f"Path: {path}" in body["errorMessage"]


def test_extra_argument_is_rejected(server2: DevServerProcess, alice: Api) -> None:
    meeting_id = server2.meeting(unique("h"))
    body = alice.error("meetings/queries/getMeeting", meetingId=meeting_id, bogus=1)
    assert "Path: .bogus" in body["errorMessage"]


def test_id_of_another_table_is_rejected(server2: DevServerProcess, alice: Api) -> None:
    user_id = server2.user_id(unique("u"))
    body = alice.error("meetings/queries/getMeeting", code="BAD_ARGS", meetingId=user_id)
    assert 'table "meetings"' in body["errorMessage"]
    body = alice.error(SIG + "markSignalsProcessed", code="BAD_ARGS", signalIds=[user_id])
    assert "Path: .signalIds[0]" in body["errorMessage"]


def test_well_formed_unknown_meeting_is_not_found(server2: DevServerProcess, alice: Api) -> None:
    # A meeting ID from another database decodes fine but names no row.
    other = DevServerProcess()
    try:
        meeting_id = other.meeting(unique("h"))
    finally:
        other.close()
    alice.error("meetings/queries/getMeeting", code="NOT_FOUND", meetingId=meeting_id)


# --- authentication ------------------------------------------------------------------------------


def _expect_401(api: Api, token: str | None = None) -> dict[str, Any]:
    r = api.call(GET_USER)
    assert r.status_code == 401, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == "error" and body["errorData"]["code"] == "UNAUTHENTICATED"
    if token:
        assert token not in r.text
    return body


def test_missing_token_is_401(server2: DevServerProcess, http: httpx.Client) -> None:
    _expect_401(Api(server2.url, None, http))


def test_non_bearer_scheme_is_401(server2: DevServerProcess, http: httpx.Client) -> None:
    token = server2.token(unique("u"))
    r = http.post(
        f"{server2.url}/api/run/{GET_USER}",
        json={"args": {}},
        headers={"Authorization": f"Basic {token}"},
    )
    assert r.status_code == 401 and token not in r.text


def test_garbage_token_is_401(server2: DevServerProcess, http: httpx.Client) -> None:
    _expect_401(Api(server2.url, "not.a.jwt", http), "not.a.jwt")


def test_expired_token_is_401(server2: DevServerProcess, http: httpx.Client) -> None:
    token = server2.token(unique("u"), ttl_s=-5)
    body = _expect_401(Api(server2.url, token, http), token)
    assert "expired" in str(body["errorMessage"])


def test_accepted_tokens_are_remembered_until_they_expire() -> None:
    secret = "a-test-secret-long-enough-for-hs256-keys"
    now = time.time()
    clock = [now]
    verifier = auth.TokenVerifier(secret, max_tokens=2, clock=lambda: clock[0])
    token = auth.issue_token(secret, "user-1", ttl_s=60)
    assert verifier.subject(token) == "user-1"
    assert verifier.subject(token) == "user-1"  # remembered
    clock[0] = now + 60  # the second `exp` names
    with pytest.raises(auth.AuthError, match="expired"):
        verifier.subject(token)
    forged = jwt.encode(
        {"sub": "user-1", "iat": int(now), "exp": int(now) + 600, "iss": auth.ISSUER,
         "aud": auth.AUDIENCE},
        "not-the-secret-but-long-enough-for-hs256",
        algorithm="HS256",
    )  # fmt: skip
    for _ in range(2):  # refused every time, never remembered
        with pytest.raises(auth.AuthError, match="signature"):
            verifier.subject(forged)
    clock[0] = now
    for i in range(5):  # bounded: the oldest are forgotten, and checked again when they return
        assert verifier.subject(auth.issue_token(secret, f"user-{i}", ttl_s=60)) == f"user-{i}"
    assert len(verifier._accepted) == 2


def test_forged_token_is_401(server2: DevServerProcess, http: httpx.Client) -> None:
    name = unique("u")
    server2.user_id(name)  # the user exists; only the signature is wrong
    now = int(time.time())
    forged = jwt.encode(
        {"sub": subject_for(name), "iat": now, "exp": now + 600, "iss": auth.ISSUER,
         "aud": auth.AUDIENCE},
        "not-the-server-secret-but-long-enough-for-hs256",
        algorithm="HS256",
    )  # fmt: skip
    body = _expect_401(Api(server2.url, forged, http), forged)
    assert "signature" in str(body["errorMessage"])


def test_alg_none_token_is_401(server2: DevServerProcess, http: httpx.Client) -> None:
    name = unique("u")
    server2.user_id(name)
    now = int(time.time())
    unsigned = jwt.encode(
        {"sub": subject_for(name), "iat": now, "exp": now + 600, "iss": auth.ISSUER,
         "aud": auth.AUDIENCE},
        None,  # type: ignore[arg-type]
        algorithm="none",
    )  # fmt: skip
    _expect_401(Api(server2.url, unsigned, http), unsigned)


def test_unknown_user_token_is_401(server2: DevServerProcess, http: httpx.Client) -> None:
    store = Store(server2.db)
    try:
        secret = store.jwt_secret()
    finally:
        store.close()
    token = auth.issue_token(secret, subject_for(unique("ghost")))
    body = _expect_401(Api(server2.url, token, http), token)
    assert "user" in str(body["errorMessage"])


def test_auth_checked_for_every_function(server2: DevServerProcess, http: httpx.Client) -> None:
    from agent.signaling.models import FUNCTION_ARGS

    anonymous = Api(server2.url, None, http)
    for function in FUNCTION_ARGS:
        r = anonymous.call(function, {})
        assert r.status_code == 401, function


def test_served_functions_are_exactly_the_wire_models() -> None:
    from agent.devserver.functions import HANDLERS
    from agent.signaling.models import FUNCTION_ARGS

    assert set(HANDLERS) == set(FUNCTION_ARGS)
