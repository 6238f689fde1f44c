"""Helpers for talking to a dev backend over real HTTP in tests (sync httpx)."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from typing import Any

import httpx

from agent.devserver.process import DevServerProcess

_names = itertools.count(1)


def unique(prefix: str) -> str:
    """A user name no other test in this process uses (users persist in the shared database)."""
    return f"{prefix}{os.getpid()}x{next(_names)}"


class Api:
    """One authenticated caller of `/api/run`."""

    def __init__(self, url: str, token: str | None, client: httpx.Client | None = None) -> None:
        self.url = url
        self.token = token
        self.client = client or httpx.Client(timeout=30.0)

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

    def error(self, function: str, status: int = 400, code: str | None = None, **args: Any) -> Any:
        """Call, expect an error envelope with `status` (and `code`); return the envelope."""
        response = self.call(function, args)
        body = response.json()
        assert response.status_code == status, (function, response.status_code, body)
        assert body["status"] == "error", body
        assert isinstance(body["errorMessage"], str) and body["errorMessage"]
        if code is not None:
            assert body["errorData"]["code"] == code, body
        return body


SIG = "meetings/webrtc/signaling/"
LIFE = "meetings/lifecycle/"


@dataclass
class MeetingSetup:
    server: DevServerProcess
    id: str
    users: dict[str, str]  # name -> user id
    apis: dict[str, Api] = field(default_factory=dict)

    def api(self, name: str) -> Api:
        return self.apis[name]


def setup_meeting(
    server: DevServerProcess, *roles: str, client: httpx.Client | None = None
) -> tuple[MeetingSetup, list[str]]:
    """An active meeting whose first user hosts; `roles` are name prefixes made unique.

    Returns the setup and the unique names in the order given.
    """
    names = [unique(r) for r in roles]
    meeting_id = server.meeting(names[0], names[1:])
    setup = MeetingSetup(server, meeting_id, {n: server.user_id(n) for n in names})
    for n in names:
        setup.apis[n] = Api(server.url, server.token(n), client)
    return setup, names
