"""The Convex HTTP transport: envelopes and their statuses, error messages, transport errors,
limits, authentication and argument validation."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from agent.devserver import auth, ids
from agent.devserver.app import MAX_REQUEST_BODY_BYTES
from agent.devserver.process import DevServerProcess
from agent.devserver.store import Store, subject_for
from tests.conftest import DevServerFactory
from tests.support.devserver import (
    GET_USER,
    INGEST,
    LIFE,
    QUERIES,
    REQUEST_ID,
    SIG,
    Api,
    error_detail,
    setup_meeting,
    thrown_data,
    unique,
)


@pytest.fixture(scope="module")
def alice(server2: DevServerProcess, http: httpx.Client) -> Api:
    return Api(server2.url, server2.token(unique("alice")), http)


def valid_calls(server: DevServerProcess, meeting_id: str) -> dict[str, dict[str, Any]]:
    """Arguments that pass validation, for every served function."""
    user = server.user_id(unique("someone"))
    signal = ids.make_id("webrtcSignals")
    m, s = {"meetingId": meeting_id}, {"meetingId": meeting_id, "sessionId": "s"}
    return {
        SIG + "createWebRTCSession": s,
        SIG + "exchangeSessionDescription": {**s, "description": {"type": "offer", "sdp": "v=0"}},
        SIG + "exchangeICECandidate": {**s, "candidate": {"candidate": ""}},
        SIG + "getPendingSignals": m,
        SIG + "markSignalsProcessed": {"signalIds": [signal]},
        SIG + "updateSessionState": {**s, "state": "connected"},
        SIG + "getActiveSessions": m,
        SIG + "closeSession": s,
        LIFE + "createMeeting": {"title": "t"},
        LIFE + "addParticipant": {**m, "userId": user, "role": "participant"},
        LIFE + "startMeeting": m,
        LIFE + "endMeeting": m,
        LIFE + "joinMeeting": m,
        LIFE + "leaveMeeting": m,
        LIFE + "getMeetingConnectionInfo": m,
        QUERIES + "getMeeting": m,
        QUERIES + "listMeetingParticipants": m,
        GET_USER: {},
        INGEST: {**m, "text": "hi", "confidence": 0.5, "startTime": 0, "endTime": 1},
    }


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


def test_valid_calls_cover_every_function(server2: DevServerProcess) -> None:
    from agent.devserver.functions import FUNCTIONS

    assert set(valid_calls(server2, server2.meeting(unique("h")))) == set(FUNCTIONS)


# --- function errors: the envelope, its status and its message ----------------------------------


def test_function_errors_are_200_envelopes_by_default(
    server2: DevServerProcess, http: httpx.Client
) -> None:
    m, (_host, guest) = setup_meeting(server2, "host", "guest", client=http)
    r = m.api(guest).call(LIFE + "endMeeting", {"meetingId": m.id})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "error" and "value" not in body
    assert body["errorData"] == {
        "code": "INSUFFICIENT_PERMISSIONS",
        "message": "Requires host role",
        "statusCode": 403,
        "metadata": {"requiredRole": "host", "currentRole": "participant"},
    }
    r = m.api(guest).call(LIFE + "endMeeting", {"meetingId": "nope"})
    assert r.status_code == 200 and r.json()["status"] == "error"
    assert "errorData" not in r.json()


def test_function_errors_take_the_configured_status(
    server_other_status: DevServerProcess, http: httpx.Client
) -> None:
    server = server_other_status
    m, (host, guest) = setup_meeting(server, "host", "guest", client=http)
    assert m.api(guest).error_status == server.error_status in (400, 560)
    m.api(guest).error(LIFE + "endMeeting", code="INSUFFICIENT_PERMISSIONS", meetingId=m.id)
    m.api(guest).invalid(LIFE + "endMeeting", meetingId="nope")
    Api(server.url, None, http, server.error_status).error(
        QUERIES + "getMeeting", code="UNAUTHORIZED", meetingId=m.id
    )
    # success and the transport's own errors keep their statuses
    assert m.api(host).ok(QUERIES + "getMeeting", meetingId=m.id)["state"] == "active"
    assert m.api(host).call("meetings/nope/missing").status_code == 404
    assert Api(server.url, "not.a.jwt", http).call(GET_USER).status_code == 401


def test_error_message_has_a_random_request_id_then_the_cause(
    server2: DevServerProcess, http: httpx.Client
) -> None:
    m, (_host, guest) = setup_meeting(server2, "host", "guest", client=http)
    first = m.api(guest).error(LIFE + "startMeeting", meetingId=m.id)
    second = m.api(guest).error(LIFE + "startMeeting", meetingId=m.id)
    id1 = REQUEST_ID.match(first["errorMessage"])
    id2 = REQUEST_ID.match(second["errorMessage"])
    assert id1 and id2 and id1.group(1) != id2.group(1)
    # development mode: the ConvexError's data, as one line of JSON, after "Server Error"
    assert error_detail(first).count("\n") == 0
    assert thrown_data(first) == first["errorData"]


def test_undefined_fields_are_dropped_from_error_data_but_printed(
    server2: DevServerProcess, http: httpx.Client
) -> None:
    # Connvo's createError.validation(message) leaves metadata.field undefined; Convex leaves it
    # out of errorData and prints it as the string "undefined" in the message.
    m, (host,) = setup_meeting(server2, "host", client=http, state="scheduled")
    body = m.api(host).error(LIFE + "joinMeeting", code="VALIDATION_ERROR", meetingId=m.id)
    assert body["errorData"] == {
        "code": "VALIDATION_ERROR",
        "message": "Cannot join inactive meeting",
        "statusCode": 400,
        "metadata": {},
    }
    assert thrown_data(body)["metadata"] == {"field": "undefined"}


def test_redact_drops_everything_after_server_error(devserver_factory: DevServerFactory) -> None:
    server = devserver_factory(redact=True)
    m, (_host, guest) = setup_meeting(server, "host", "guest")
    body = m.api(guest).error(LIFE + "endMeeting", code="INSUFFICIENT_PERMISSIONS", meetingId=m.id)
    assert REQUEST_ID.fullmatch(body["errorMessage"])
    assert body["errorMessage"].endswith("] Server Error")
    assert body["errorData"]["message"] == "Requires host role"  # a ConvexError keeps its data
    r = m.api(guest).call(LIFE + "endMeeting", {"meetingId": "nope"})
    assert r.status_code == 200
    assert REQUEST_ID.fullmatch(r.json()["errorMessage"]) and "errorData" not in r.json()


# --- argument validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "args", "expected"),
    [
        (
            QUERIES + "getMeeting",
            {"meetingId": "not-an-id"},
            'Value does not match validator.\nPath: .meetingId\nValue: "not-an-id"\n'
            'Validator: v.id("meetings")',
        ),
        (
            QUERIES + "getMeeting",
            {"meetingId": 5},
            "Value does not match validator.\nPath: .meetingId\nValue: 5\n"
            'Validator: v.id("meetings")',
        ),
        (
            QUERIES + "getMeeting",
            {},
            "Object is missing the required field `meetingId`. Consider wrapping the field "
            'validator in `v.optional(...)` if this is expected.\nObject: {}\nValidator: '
            'v.object({meetingId: v.id("meetings")})',
        ),
        (
            GET_USER,
            {"bogus": 1},
            "Object contains extra field `bogus` that is not in the validator.\n"
            'Object: {"bogus": 1}\nValidator: v.object({})',
        ),
        (
            SIG + "updateSessionState",
            {"meetingId": "MEETING", "sessionId": "s", "state": "asleep"},
            "Path: .state\nValue: \"asleep\"\nValidator: v.union(v.literal(\"connecting\"), "
            'v.literal("connected"), v.literal("disconnected"), v.literal("failed"), '
            'v.literal("closed"))',
        ),
        (
            SIG + "updateSessionState",
            {"meetingId": "MEETING", "sessionId": "s", "state": "connected",
             "metadata": {"nested": {"a": 1}}},
            'Path: .metadata.nested\nValue: {"a": 1}\n'
            "Validator: v.union(v.string(), v.number(), v.boolean())",
        ),
        (
            SIG + "exchangeSessionDescription",
            {"meetingId": "MEETING", "sessionId": "s", "description": {"type": "offer", "sdp": 1}},
            "Path: .description.sdp\nValue: 1\nValidator: v.string()",
        ),
        (
            SIG + "exchangeICECandidate",
            {"meetingId": "MEETING", "sessionId": "s", "candidate": {"candidate": ""},
             "targetUserId": None},
            'Path: .targetUserId\nValue: null\nValidator: v.id("users")',
        ),
        (
            SIG + "markSignalsProcessed",
            {"signalIds": ["SIGNAL", "USER"]},
            'Path: .signalIds[1]\nValue: "USER"\nValidator: v.id("webrtcSignals")',
        ),
        (
            INGEST,
            {"meetingId": "MEETING", "text": "hi", "confidence": True, "startTime": 0,
             "endTime": 1},
            "Path: .confidence\nValue: true\nValidator: v.number()",
        ),
    ],
)  # fmt: skip
def test_argument_validation_reads_like_convex(
    server2: DevServerProcess, alice: Api, function: str, args: dict[str, Any], expected: str
) -> None:
    real = {
        "MEETING": server2.meeting(unique("h")),
        "SIGNAL": ids.make_id("webrtcSignals"),
        "USER": server2.user_id(unique("u")),  # an ID of another table than the one expected
    }
    detail = alice.invalid(function, **_fill(args, real))
    assert detail.startswith("ArgumentValidationError: ")
    assert expected.replace("USER", real["USER"]) in detail


def _fill(value: Any, real: dict[str, str]) -> Any:
    """`value` with the placeholder strings replaced by real IDs."""
    if isinstance(value, dict):
        return {k: _fill(v, real) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, real) for v in value]
    return real.get(value, value) if isinstance(value, str) else value


def test_long_values_are_cut_short_in_the_message(alice: Api) -> None:
    detail = alice.invalid(QUERIES + "getMeeting", meetingId="x" * 5000)
    value_line = next(line for line in detail.splitlines() if line.startswith("Value: "))
    assert len(value_line) < 100 and value_line.endswith("...")


def test_arguments_are_validated_before_the_caller_is_known(
    server2: DevServerProcess, http: httpx.Client
) -> None:
    # Convex checks arguments before the function (and so Connvo's guard) runs.
    Api(server2.url, None, http).invalid(QUERIES + "getMeeting", meetingId="nope")


def test_no_length_limits_but_the_body_limit(server2: DevServerProcess, http: httpx.Client) -> None:
    # Connvo's validators are v.string(): a 100 KB SDP is accepted; only the body limit applies.
    m, (host, guest) = setup_meeting(server2, "host", "guest", client=http)
    sdp = "v=0\r\n" + "a" * 100_000
    m.api(host).ok(
        SIG + "exchangeSessionDescription", meetingId=m.id, sessionId="h",
        description={"type": "offer", "sdp": sdp}, targetUserId=m.users[guest],
    )  # fmt: skip
    (signal,) = m.api(guest).ok(SIG + "getPendingSignals", meetingId=m.id)
    assert signal["data"]["sdp"] == sdp


def test_well_formed_unknown_meeting_is_forbidden(server2: DevServerProcess, alice: Api) -> None:
    # A meeting ID from another database decodes fine but names no row. Connvo's guard looks for
    # the caller's participant row, finds none, and refuses before it looks at the meeting.
    other = DevServerProcess()
    try:
        meeting_id = other.meeting(unique("h"))
    finally:
        other.close()
    body = alice.error(QUERIES + "getMeeting", code="FORBIDDEN", meetingId=meeting_id)
    assert body["errorData"]["message"] == "Access denied: Not a meeting participant"
    assert body["errorData"]["metadata"]["meetingId"] == meeting_id


# --- transport errors ---------------------------------------------------------------------------


def _transport(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "message"} and body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return str(body["message"])


def test_unknown_function_is_404(alice: Api) -> None:
    message = _transport(alice.call("meetings/nope/doesNotExist"), 404, "FunctionNotFound")
    assert "meetings/nope/doesNotExist" in message


def test_unknown_route_and_wrong_method(
    server2: DevServerProcess, http: httpx.Client, alice: Api
) -> None:
    _transport(http.get(server2.url + "/nowhere"), 404, "NotFound")
    _transport(http.get(f"{server2.url}/api/run/{GET_USER}"), 405, "MethodNotAllowed")


@pytest.mark.parametrize(
    ("content", "content_type", "code"),
    [
        (b'{"args": {}', "application/json", "BadJsonBody"),
        (b"args=1", "application/x-www-form-urlencoded", "BadContentType"),
        (b"{}", "application/json", "BadJsonBody"),
        (b'{"args": []}', "application/json", "BadJsonBody"),
        (b'{"args": {}, "format": "xml"}', "application/json", "BadJsonBody"),
        (b'{"args": {}, "extra": 1}', "application/json", "BadJsonBody"),
        (b'{"args": {"x": NaN}}', "application/json", "BadJsonBody"),
        (b'{"args": {"x": "\\ud800"}}', "application/json", "BadJsonBody"),
        (b"\xff\xfe", "application/json", "BadJsonBody"),
        (b'{"args": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}", "application/json",
         "BadJsonBody"),
    ],
)  # fmt: skip
def test_malformed_bodies_are_400(
    alice: Api, http: httpx.Client, content: bytes, content_type: str, code: str
) -> None:
    r = http.post(
        f"{alice.url}/api/run/{GET_USER}",
        content=content,
        headers={"Authorization": f"Bearer {alice.token}", "Content-Type": content_type},
    )
    _transport(r, 400, code)


def test_oversized_body_is_413(alice: Api) -> None:
    padding = "x" * (MAX_REQUEST_BODY_BYTES + 10)
    _transport(alice.call(GET_USER, {"pad": padding}), 413, "PayloadTooLarge")


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
    _transport(r, 413, "PayloadTooLarge")


def test_body_just_under_limit_reaches_argument_validation(alice: Api) -> None:
    padding = "x" * (MAX_REQUEST_BODY_BYTES - 200)
    detail = alice.invalid(GET_USER, pad=padding)
    assert "extra field `pad`" in detail and padding not in detail


# --- authentication ------------------------------------------------------------------------------


def _expect_401(api: Api, token: str | None = None) -> str:
    r = api.call(GET_USER)
    message = _transport(r, 401, "Unauthenticated")
    assert r.headers["WWW-Authenticate"] == "Bearer"
    if token:
        assert token not in r.text
    return message


def test_no_token_runs_the_function_without_identity(
    server2: DevServerProcess, http: httpx.Client
) -> None:
    m, _ = setup_meeting(server2, "host", client=http)
    anonymous = Api(server2.url, None, http)
    for function, args in valid_calls(server2, m.id).items():
        if function == GET_USER:
            assert anonymous.ok(function, **args) is None  # signed out: null, not an error
            continue
        data = anonymous.error(function, code="UNAUTHORIZED", **args)["errorData"]
        assert data["statusCode"] == 401, function
        expected = (
            "Unauthenticated meeting creation requires organizerId"
            if function == LIFE + "createMeeting"
            else "Authentication required"
        )
        assert data["message"] == expected, function


def test_token_without_connvo_user(server2: DevServerProcess, http: httpx.Client) -> None:
    m, _ = setup_meeting(server2, "host", client=http)
    ghost = Api(server2.url, server2.token_without_user(unique("ghost")), http)
    for function, args in valid_calls(server2, m.id).items():
        if function == GET_USER:
            assert ghost.ok(function, **args) is None
            continue
        data = ghost.error(function, code="UNAUTHORIZED", **args)["errorData"]
        assert data["message"] == "User not provisioned. Please complete sign-in and try again."


def test_deactivated_user_has_no_connvo_user(server2: DevServerProcess, http: httpx.Client) -> None:
    m, (host,) = setup_meeting(server2, "host", client=http)
    api = m.api(host)
    assert api.ok(GET_USER)["_id"] == m.users[host]
    server2.set_user_active(host, False)
    try:
        assert api.ok(GET_USER) is None  # the token still verifies
        api.error(QUERIES + "getMeeting", code="UNAUTHORIZED", meetingId=m.id)
    finally:
        server2.set_user_active(host, True)
    assert api.ok(QUERIES + "getMeeting", meetingId=m.id)["_id"] == m.id


def test_non_bearer_scheme_is_401(server2: DevServerProcess, http: httpx.Client) -> None:
    token = server2.token(unique("u"))
    r = http.post(
        f"{server2.url}/api/run/{GET_USER}",
        json={"args": {}},
        headers={"Authorization": f"Basic {token}"},
    )
    _transport(r, 401, "Unauthenticated")
    assert token not in r.text


def test_garbage_token_is_401(server2: DevServerProcess, http: httpx.Client) -> None:
    _expect_401(Api(server2.url, "not.a.jwt", http), "not.a.jwt")


def test_expired_token_is_401(server2: DevServerProcess, http: httpx.Client) -> None:
    token = server2.token(unique("u"), ttl_s=-5)
    assert "expired" in _expect_401(Api(server2.url, token, http), token)


def test_bad_token_is_refused_before_anything_runs(
    server2: DevServerProcess, http: httpx.Client
) -> None:
    # even arguments that would fail validation are not looked at
    r = Api(server2.url, "not.a.jwt", http).call(QUERIES + "getMeeting", {"meetingId": 1})
    _transport(r, 401, "Unauthenticated")


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
    assert "signature" in _expect_401(Api(server2.url, forged, http), forged)


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


def test_signed_token_of_an_unknown_subject_verifies(
    server2: DevServerProcess, http: httpx.Client
) -> None:
    # The server's own signature on a subject no user has: not a 401, an identity without user.
    store = Store(server2.db)
    try:
        secret = store.jwt_secret()
    finally:
        store.close()
    token = auth.issue_token(secret, subject_for(unique("ghost")))
    assert Api(server2.url, token, http).ok(GET_USER) is None


def test_served_functions_are_exactly_the_wire_models() -> None:
    from agent.devserver.functions import FUNCTIONS
    from agent.signaling.models import FUNCTION_ARGS

    assert set(FUNCTIONS) == set(FUNCTION_ARGS)
