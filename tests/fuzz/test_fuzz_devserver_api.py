"""Property: every request to the dev backend's `/api/run`, however wrong (unknown functions, bad
methods and content types, non-JSON, wrong argument names, types and sizes, bad tokens, other
people's meetings), is answered promptly, never with a 500: a 200 envelope (success, or a function
error: a ConvexError with its errorData, or an argument validation failure without), or a transport
error `{"code", "message"}` with its own status."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.devserver.functions import FUNCTIONS as SERVED
from agent.devserver.process import DevServerProcess
from tests.support.devserver import REQUEST_ID

FUNCTIONS = sorted(SERVED)
LONG_CANDIDATE = "z" * 2000
ARG_NAMES = ["meetingId", "sessionId", "description", "candidate", "targetUserId", "lastSignalId",
             "signalIds", "state", "metadata", "userId", "title", "text", "startTime", "endTime",
             "participantEmails", "organizerId", "role", "speakerId", "confidence", "language",
             "scheduledAt", "duration", "maxParticipants", "extra"]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=10,
)  # fmt: skip


class World:
    meeting = ""
    other_meeting = ""
    users: list[str] = []
    tokens: dict[str, str] = {}


def _values() -> st.SearchStrategy[Any]:
    ids = st.sampled_from([World.meeting, World.other_meeting, *World.users, "peer-1", ""])
    descriptions = st.fixed_dictionaries(
        {"type": st.sampled_from(["offer", "answer", "pranswer", "rollback", "bogus"]),
         "sdp": st.sampled_from(["v=0\r\n", "", "x" * 70_000])})  # fmt: skip
    candidates = st.fixed_dictionaries(
        {"candidate": st.sampled_from(["", "candidate:1 1 udp 1 127.0.0.1 9 typ host",
                                       LONG_CANDIDATE])},
        optional={"sdpMid": json_values, "sdpMLineIndex": json_values})  # fmt: skip
    return st.one_of(ids, json_values, descriptions, candidates, st.lists(ids, max_size=3),
                     st.just("y" * 300_000))  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    function = draw(
        st.sampled_from(FUNCTIONS)
        | st.sampled_from(
            ["nope/x", "", "meetings/webrtc/signaling", "../admin/faults", "meetings/%00"]
        )
    )
    args = draw(st.dictionaries(st.sampled_from(ARG_NAMES), _values(), max_size=5))
    body_kind = draw(st.integers(0, 9))
    if body_kind == 0:
        content: bytes = draw(st.binary(max_size=100))
    elif body_kind == 1:
        content = json.dumps(draw(json_values)).encode()
    elif body_kind == 2:
        content = b'{"args": ' + b"[" * 100_000
    elif body_kind == 3:
        content = json.dumps({"args": args, "format": "json", "extra": 1}).encode()
    else:
        content = json.dumps({"args": args, "format": "json"}).encode()
    return {
        "function": function,
        "method": draw(st.sampled_from(["POST"] * 8 + ["GET", "PUT", "DELETE"])),
        "content": content,
        "content_type": draw(st.sampled_from(["application/json"] * 6 + [
            "text/plain", "", "application/json; charset=utf-8", "text/html",
            "application/x-www-form-urlencoded"])),
        "auth": draw(st.sampled_from(["member"] * 5 + ["outsider", "none", "garbage", "forged"])),
    }  # fmt: skip


@pytest.fixture
def world(devserver: DevServerProcess) -> DevServerProcess:
    World.users = [devserver.user_id(n) for n in ("host", "member", "outsider")]
    World.meeting = devserver.meeting("host", ["member"])
    World.other_meeting = devserver.meeting("outsider")
    World.tokens = {n: devserver.token(n) for n in ("host", "member", "outsider")}
    return devserver


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])  # fmt: skip
@given(data=st.data())
def test_every_request_gets_an_envelope_never_a_500(world: DevServerProcess, data: Any) -> None:
    req = data.draw(requests())
    headers = {}
    if req["content_type"]:
        headers["Content-Type"] = req["content_type"]
    tokens = {"member": World.tokens.get("member"), "outsider": World.tokens.get("outsider"),
              "garbage": "not.a.jwt", "forged": _forged(World.tokens["member"])}  # fmt: skip
    token = tokens.get(req["auth"])
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with httpx.Client(timeout=10) as http:
        response = http.request(req["method"], f"{world.url}/api/run/{req['function']}",
                                content=req["content"], headers=headers)  # fmt: skip
    assert response.status_code != 500, response.text[:300]
    assert response.status_code in (200, 400, 401, 404, 405, 413), response.status_code
    body = response.json()
    if response.status_code == 200:
        if body["status"] == "success":
            assert "value" in body
        else:
            assert body["status"] == "error" and REQUEST_ID.match(body["errorMessage"])
            if "errorData" in body:  # a ConvexError
                assert isinstance(body["errorData"]["code"], str)
                assert isinstance(body["errorData"]["statusCode"], int)
            else:
                assert "\nArgumentValidationError: " in body["errorMessage"]
    else:
        assert set(body) == {"code", "message"}, body
        assert isinstance(body["code"], str) and isinstance(body["message"], str)
    if token:
        assert token not in response.text
    # Nothing reached the server's catch-all handler either.
    assert "internal error" not in world.stderr_tail(50)


def _forged(token: str) -> str:
    head, payload, sig = token.split(".")
    return f"{head}.{payload}.{sig[::-1]}"
