"""The join page: a browser client of the same Convex HTTP API, served by the dev backend only.

- `GET /join?meeting=ID[&name=NAME]`: the page (static/join.html and static/join.js, plain
  JavaScript, no build step).
- `POST /dev/token {"name": NAME, "meeting": ID?}`: a bearer token for user NAME (created if
  missing) and its user id; with `meeting`, the user also becomes a participant of that meeting.
  Errors are `{"code", "message"}` with status 400 or 404.
  This route makes the page usable without the CLI, and it hands out a token for any name to
  anyone who can reach the server: it exists only in the dev backend, never in a real deployment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from agent.devserver import admin, auth, errors, ids
from agent.devserver.store import Store

STATIC = Path(__file__).resolve().parent / "static"
_NO_CACHE = {"Cache-Control": "no-store"}


def _error(status: int, message: str) -> Response:
    code = errors.ROUTE_NOT_FOUND if status == 404 else errors.BAD_REQUEST
    return errors.transport_error(status, code, message)


def routes(store: Store, secret: str) -> list[Route]:
    """The page's routes, for the dev backend's Starlette app."""

    async def join_page(request: Request) -> Response:
        return FileResponse(STATIC / "join.html", media_type="text/html", headers=_NO_CACHE)

    async def join_script(request: Request) -> Response:
        return FileResponse(STATIC / "join.js", media_type="text/javascript", headers=_NO_CACHE)

    async def dev_token(request: Request) -> Response:
        try:
            body: Any = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return _error(400, "body must be JSON")
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return _error(400, 'body must be {"name": NAME, "meeting": ID?}')
        meeting_id = body.get("meeting")
        if meeting_id is not None and (
            not isinstance(meeting_id, str) or not ids.is_id_of(meeting_id, "meetings")
        ):
            return _error(400, "meeting is not a meeting ID")
        try:
            name = admin.check_name(body["name"])
        except ValueError:
            return _error(400, "invalid user name")
        with store.transaction():
            user = store.ensure_user(name)
            if meeting_id is not None:
                if store.meeting(meeting_id) is None:
                    return _error(404, "meeting not found")
                if store.participant(meeting_id, str(user["id"])) is None:
                    store.insert_participant(meeting_id, str(user["id"]), "participant")
        token = auth.issue_token(secret, str(user["workos_user_id"]))
        return JSONResponse({"token": token, "userId": str(user["id"])}, headers=_NO_CACHE)

    return [
        Route("/join", join_page, methods=["GET"]),
        Route("/static/join.js", join_script, methods=["GET"]),
        Route("/dev/token", dev_token, methods=["POST"]),
    ]
