"""Helpers for talking to a dev backend over real HTTP in tests (sync httpx)."""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import httpx

from agent.devserver.admin import MeetingStartState
from agent.devserver.process import DevServerProcess

_names = itertools.count(1)

SIG = "meetings/webrtc/signaling/"
LIFE = "meetings/lifecycle/"
QUERIES = "meetings/queries/"
GET_USER = "users/queries/getCurrentUser"
INGEST = "transcripts/ingestion/ingestTranscriptChunk"

REQUEST_ID = re.compile(r"^\[Request ID: ([0-9a-f]{16})\] Server Error(?:\n|$)")
CONVEX_ERROR = "Uncaught ConvexError: "
VALIDATION_ERROR = "ArgumentValidationError: "


def unique(prefix: str) -> str:
    """A user name no other test in this process uses (users persist in the shared database)."""
    return f"{prefix}{os.getpid()}x{next(_names)}"


def error_detail(body: dict[str, Any]) -> str:
    """What follows "Server Error" in an error envelope's message (empty when redacted)."""
    message = body["errorMessage"]
    match = REQUEST_ID.match(message)
    assert match, message
    return str(message[match.end() :])


def thrown_data(body: dict[str, Any]) -> dict[str, Any]:
    """The ConvexError's data as the development message prints it."""
    detail = error_detail(body)
    assert detail.startswith(CONVEX_ERROR), detail
    data: dict[str, Any] = json.loads(detail[len(CONVEX_ERROR) :])
    return data


class Api:
    """One caller of `/api/run` (anonymous when `token` is None)."""

    def __init__(
        self,
        url: str,
        token: str | None,
        client: httpx.Client | None = None,
        error_status: int = 200,
    ) -> None:
        self.url = url
        self.token = token
        self.client = client or httpx.Client(timeout=30.0)
        self.error_status = error_status  # the server's --error-status

    def call(self, function: str, args: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
        headers = {} if self.token is None else {"Authorization": f"Bearer {self.token}"}
        return self.client.post(
            f"{self.url}/api/run/{function}",
            json={"args": {} if args is None else args, "format": "json"},
            headers=headers,
            **kw,
        )

    def ok(self, function: str, **args: Any) -> Any:
        response = self.call(function, args)
        body = response.json()
        assert response.status_code == 200, (function, response.status_code, body)
        assert body["status"] == "success", body
        return body["value"]

    def error(self, function: str, code: str | None = None, **args: Any) -> dict[str, Any]:
        """Call, expect a ConvexError envelope (with `code`) at the server's error status."""
        response = self.call(function, args)
        body: dict[str, Any] = response.json()
        assert response.status_code == self.error_status, (function, response.status_code, body)
        assert body["status"] == "error", body
        assert isinstance(body["errorMessage"], str) and REQUEST_ID.match(body["errorMessage"])
        data = body["errorData"]
        assert set(data) <= {"code", "message", "statusCode", "metadata"}, data
        if code is not None:
            assert data["code"] == code, body
        return body

    def invalid(self, function: str, **args: Any) -> str:
        """Call, expect an argument validation failure; returns its text after "Server Error"."""
        response = self.call(function, args)
        body = response.json()
        assert response.status_code == self.error_status, (function, response.status_code, body)
        assert body["status"] == "error" and "errorData" not in body, body
        detail = error_detail(body)
        assert detail.startswith(VALIDATION_ERROR), detail
        return detail


@dataclass
class MeetingSetup:
    server: DevServerProcess
    id: str
    users: dict[str, str]  # name -> user id
    apis: dict[str, Api] = field(default_factory=dict)

    def api(self, name: str) -> Api:
        return self.apis[name]


def setup_meeting(
    server: DevServerProcess,
    *roles: str,
    client: httpx.Client | None = None,
    state: MeetingStartState = "active",
) -> tuple[MeetingSetup, list[str]]:
    """A meeting (active unless `state` says scheduled) whose first user hosts; `roles` are name
    prefixes made unique. Returns the setup and the unique names in the order given."""
    names = [unique(r) for r in roles]
    meeting_id = server.meeting(names[0], names[1:], state=state)
    setup = MeetingSetup(server, meeting_id, {n: server.user_id(n) for n in names})
    for n in names:
        setup.apis[n] = Api(server.url, server.token(n), client, server.error_status)
    return setup, names
