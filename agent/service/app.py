"""The HTTP API of `connvo-agent serve` (Starlette), described at `/openapi.json`.

Every route but `/healthz` and `/metrics` needs `Authorization: Bearer <key>`, a key of the key
file (one a line; the file is read again when it changes, so keys rotate without a restart).
Errors are `{"error": {"code", "message", "field"?}}`; a request that fails validation is a 422
naming the field, and creates nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from agent.config import AgentSettings, ConfigError
from agent.service.botrun import BotJob
from agent.service.control import Controller
from agent.service.models import (
    FINAL_STATES,
    Bot,
    BotList,
    BotRequest,
    BotState,
    ErrorAnswer,
    InvalidKey,
    Transcript,
    TranscriptEntry,
)
from agent.service.store import IdempotencyConflict

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
MAX_IDEMPOTENCY_KEY = 255
DEFAULT_PAGE, MAX_PAGE = 100, 1000  # bots per page of GET /v1/bots
PUBLIC_PATHS = frozenset({"/healthz", "/metrics"})


class ApiKeys:
    """The keys of a key file: one a line; blank lines and `#` comments are skipped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._keys: list[bytes] = []
        self.load()

    def load(self) -> None:
        """Read the file (ConfigError, one line, if it cannot be read or holds no key)."""
        try:
            stat = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"api key file {self.path}: {reason}") from None
        keys = [k.strip() for k in text.splitlines()]
        keys = [k for k in keys if k and not k.startswith("#")]
        if not keys:
            raise ConfigError(f"api key file {self.path}: holds no key")
        self._keys = [k.encode() for k in keys]
        self._mtime = stat.st_mtime

    def check(self, presented: str) -> str | None:
        """The key's id (a hash prefix, to scope idempotency keys) if it is one of the keys."""
        try:
            if self.path.stat().st_mtime != self._mtime:
                self.load()
        except (OSError, ConfigError) as exc:
            log.error("api key file: %s; keeping the keys read before", exc)
        given = presented.encode()
        found = False
        for key in self._keys:  # every key compared, in constant time each
            found |= hmac.compare_digest(key, given)
        return hashlib.sha256(given).hexdigest()[:16] if found else None


def error(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status)


def _model(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        model.model_dump_json(), status_code=status, media_type="application/json", headers=headers
    )


class _Auth(BaseHTTPMiddleware):
    def __init__(self, app: Any, keys: ApiKeys) -> None:
        super().__init__(app)
        self.keys = keys

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.url.path in PUBLIC_PATHS:
            return await call_next(request)
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        key_id = self.keys.check(presented.strip()) if scheme.lower() == "bearer" else None
        if key_id is None:
            response = error(401, "unauthorized", "an API key is required: Authorization: Bearer")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        request.state.key_id = key_id
        return await call_next(request)


def _validation_error(exc: ValidationError) -> JSONResponse:
    first = exc.errors(include_input=False, include_url=False)[0]
    loc = [str(p) for p in first["loc"]]
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, ValueError):
        message = str(cause)  # without pydantic's "Value error, "
        if isinstance(cause, InvalidKey):
            loc.append(cause.key)
    where = ".".join(loc) or None
    return error(422, "invalid_request", f"{where}: {message}" if where else message, where)


def _check_settings(request: BotRequest) -> JSONResponse | None:
    """Build the bot's settings now, so that a bad value is a 422 rather than a failed bot."""
    for key in request.settings:
        if key not in AgentSettings.model_fields:
            return error(422, "invalid_request", f"settings.{key}: unknown setting",
                         f"settings.{key}")  # fmt: skip
    body = request.model_dump(mode="json")
    if request.token is not None:
        body["token"] = request.token.get_secret_value()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            BotJob("check", 0, body, Path(tmp)).settings()
        except ConfigError as exc:
            message = str(exc).removeprefix("config: ")
            key = message.split(":", 1)[0].strip()
            if key in ("token", "token_file", "url", "display_name"):
                field = key
            elif key in ("audio", "video", "receive"):
                field = f"media.{key}"
            else:
                field = f"settings.{key}"
            return error(422, "invalid_request", f"{field}: {message.split(':', 1)[-1].strip()}",
                         field)  # fmt: skip
    return None


def create_app(controller: Controller, keys: ApiKeys, token_dir: Path | None = None) -> Starlette:
    """The API. `token_dir`: the only directory a request's `token_file` may name a file in
    (without it, requests must carry `token`): otherwise any API key could make a worker send any
    file it can read, as a bearer token, to a URL of the caller's choosing."""
    store = controller.store

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        return Response(
            generate_latest(controller.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def create_bot(request: Request) -> Response:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return error(413, "too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
        try:
            data = json.loads(raw)
        except ValueError:
            return error(400, "invalid_json", "the body is not JSON")
        if not isinstance(data, dict):
            return error(422, "invalid_request", "the body must be a JSON object")
        try:
            bot_request = BotRequest.model_validate(data)
        except ValidationError as exc:
            return _validation_error(exc)
        if (bot_request.token is None) == (bot_request.token_file is None):
            return error(422, "invalid_request", "token: give exactly one of token and "
                         "token_file", "token")  # fmt: skip
        if bot_request.token_file is not None:
            if token_dir is None:
                return error(422, "invalid_request", "token_file: not accepted by this service "
                             "(started without --token-dir); send token", "token_file")  # fmt: skip
            path = _inside(token_dir, bot_request.token_file)
            if path is None:
                return error(422, "invalid_request", "token_file: must name a file inside the "
                             "service's --token-dir", "token_file")  # fmt: skip
            bot_request = bot_request.model_copy(update={"token_file": str(path)})
        if (bad := _check_settings(bot_request)) is not None:
            return bad
        key = request.headers.get("idempotency-key")
        if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
            return error(422, "invalid_request", "Idempotency-Key: 1 to 255 characters",
                         "Idempotency-Key")  # fmt: skip
        scoped = f"{request.state.key_id}:{key}" if key is not None else None
        try:
            bot, created = controller.create(bot_request, scoped)
        except IdempotencyConflict:
            return error(409, "idempotency_conflict", "this Idempotency-Key was used with "
                         "another request", "Idempotency-Key")  # fmt: skip
        headers = {"Location": f"/v1/bots/{bot.id}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        return _model(bot, 201, headers)

    async def list_bots(request: Request) -> Response:
        state = request.query_params.get("state")
        wanted: BotState | None = None
        if state is not None:
            try:
                wanted = BotState(state)
            except ValueError:
                states = ", ".join(s.value for s in BotState)
                return error(422, "invalid_request", f"state: one of {states}", "state")
        try:
            limit = int(request.query_params.get("limit", DEFAULT_PAGE))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_PAGE:
            return error(422, "invalid_request", f"limit: 1 to {MAX_PAGE}", "limit")
        ids = store.ids(wanted, limit + 1, request.query_params.get("after"))
        bots = [b for i in ids[:limit] if (b := store.view(i)) is not None]
        more = len(ids) > limit
        return _model(BotList(bots=bots, next_after=bots[-1].id if more and bots else None))

    def _bot(request: Request) -> Bot | None:
        return store.view(request.path_params["bot_id"])

    async def get_bot(request: Request) -> Response:
        bot = _bot(request)
        return _model(bot) if bot is not None else _not_found()

    async def delete_bot(request: Request) -> Response:
        bot = controller.delete(request.path_params["bot_id"])
        if bot is None:
            return _not_found()
        # 202: it is leaving; 200: it is out already (a queued bot ends at once; a final one
        # stays as it was, so that a DELETE may be sent again safely)
        return _model(bot, 200 if bot.state in FINAL_STATES else 202)

    async def transcript(request: Request) -> Response:
        bot = _bot(request)
        if bot is None:
            return _not_found()
        entries = store.transcript(bot.id)
        fmt = request.query_params.get("format")
        if fmt is None and "text/vtt" in request.headers.get("accept", ""):
            fmt = "vtt"
        if fmt == "vtt":
            return PlainTextResponse(webvtt(entries), media_type="text/vtt")
        if fmt not in (None, "json"):
            return error(422, "invalid_request", "format: json or vtt", "format")
        return _model(Transcript(bot_id=bot.id, meeting_id=bot.meeting_id, entries=entries))

    async def recordings(request: Request) -> Response:
        bot = _bot(request)
        if bot is None:
            return _not_found()
        manifest = store.manifest(bot.id)
        if manifest is None:
            return error(404, "not_found", "no recording (yet): it is ready at recording.ready")
        path = controller.bots_dir / bot.id / manifest
        try:
            return JSONResponse(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return error(404, "not_found", "the manifest is not on this machine's state dir")

    async def recording_file(request: Request) -> Response:
        bot = _bot(request)
        if bot is None:
            return _not_found()
        manifest = store.manifest(bot.id)
        if manifest is None:
            return error(404, "not_found", "no such file among the bot's recordings")
        # the files' paths are the manifest's: relative to its directory
        root = (controller.bots_dir / bot.id / manifest).parent.resolve()
        wanted = request.path_params["path"]
        known = {f.path for f in bot.files}
        path = (root / wanted).resolve()
        if wanted not in known or not path.is_relative_to(root) or not path.is_file():
            return error(404, "not_found", "no such file among the bot's recordings")
        return FileResponse(path, filename=os.path.basename(path))

    routes = [
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi),
        Route("/v1/bots", create_bot, methods=["POST"]),
        Route("/v1/bots", list_bots, methods=["GET"]),
        Route("/v1/bots/{bot_id}", get_bot, methods=["GET"]),
        Route("/v1/bots/{bot_id}", delete_bot, methods=["DELETE"]),
        Route("/v1/bots/{bot_id}/transcript", transcript, methods=["GET"]),
        Route("/v1/bots/{bot_id}/recordings", recordings, methods=["GET"]),
        Route("/v1/bots/{bot_id}/recordings/{path:path}", recording_file, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_Auth, keys=keys)],
        exception_handlers={404: _not_found_handler, 405: _method_handler},
    )


def _inside(directory: Path, name: str) -> Path | None:
    """`name` resolved in `directory` (links followed), if it stays inside it."""
    root = directory.resolve()
    path = (root / name).resolve()
    return path if path.is_relative_to(root) and path != root else None


def _not_found() -> JSONResponse:
    return error(404, "not_found", "no such bot")


async def _not_found_handler(request: Request, exc: Exception) -> Response:
    return error(404, "not_found", f"no route {request.url.path}")


async def _method_handler(request: Request, exc: Exception) -> Response:
    return error(405, "method_not_allowed", f"{request.method} is not allowed here")


def webvtt(entries: list[TranscriptEntry]) -> str:
    """The transcript as WebVTT: cue times from the meeting's first utterance, the speaker as a
    voice tag."""
    lines = ["WEBVTT", ""]
    origin = min((e.start_ms for e in entries), default=0)
    for number, e in enumerate(entries, 1):
        speaker = (e.speaker_name or e.speaker_id).replace(">", "")
        text = e.text.replace("-->", "->")
        lines += [
            str(number),
            f"{_vtt_time(e.start_ms - origin)} --> "
            f"{_vtt_time(max(e.end_ms, e.start_ms + 1) - origin)}",
            f"<v {speaker}>{text}",
            "",
        ]
    return "\n".join(lines)


def _vtt_time(ms: int) -> str:
    hours, rest = divmod(max(0, ms), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API, its schemas from the pydantic models."""
    models: list[tuple[type[BaseModel], Any]] = [
        (BotRequest, "validation"),
        (Bot, "serialization"),
        (BotList, "serialization"),
        (Transcript, "serialization"),
        (ErrorAnswer, "serialization"),
    ]
    _, schemas = models_json_schema(models, ref_template="#/components/schemas/{model}")
    components = schemas.get("$defs", {})

    def ref(name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    def answer(description: str, schema: str | None = None) -> dict[str, Any]:
        if schema is None:
            return {"description": description}
        return {
            "description": description,
            "content": {"application/json": {"schema": ref(schema)}},
        }

    errors = {
        "401": answer("No or unknown API key", "ErrorAnswer"),
        "404": answer("No such bot", "ErrorAnswer"),
    }
    bot_id = {"name": "bot_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "connvo-agent service", "version": "1"},
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/healthz": {"get": {"security": [], "summary": "Liveness",
                                 "responses": {"200": answer("Up")}}},
            "/metrics": {"get": {"security": [], "summary": "Prometheus metrics",
                                 "responses": {"200": answer("Metrics, text format")}}},
            "/openapi.json": {"get": {"summary": "This document",
                                      "responses": {"200": answer("OpenAPI 3.1"),
                                                    "401": errors["401"]}}},
            "/v1/bots": {
                "post": {
                    "summary": "Send a bot into a meeting",
                    "parameters": [{"name": "Idempotency-Key", "in": "header",
                                    "schema": {"type": "string", "maxLength": 255}}],
                    "requestBody": {"required": True,
                                    "content": {"application/json": {"schema": ref("BotRequest")}}},
                    "responses": {
                        "201": answer("Created (or replayed for a known Idempotency-Key)", "Bot"),
                        "400": answer("Not JSON", "ErrorAnswer"),
                        "409": answer("Idempotency-Key reused with another request",
                                      "ErrorAnswer"),
                        "422": answer("A field is invalid (named in error.field)", "ErrorAnswer"),
                        **errors,
                    },
                },
                "get": {
                    "summary": "List bots",
                    "parameters": [{"name": "state", "in": "query",
                                    "schema": {"enum": [s.value for s in BotState]}},
                                   {"name": "limit", "in": "query",
                                    "schema": {"type": "integer", "minimum": 1,
                                               "maximum": MAX_PAGE, "default": DEFAULT_PAGE}},
                                   {"name": "after", "in": "query", "schema": {"type": "string"},
                                    "description": "next_after of the previous page"}],
                    "responses": {"200": answer("Bots, oldest first", "BotList"),
                                  "422": answer("A bad state or limit", "ErrorAnswer"),
                                  **errors},
                },
            },
            "/v1/bots/{bot_id}": {
                "parameters": [bot_id],
                "get": {"summary": "A bot", "responses": {"200": answer("The bot", "Bot"),
                                                          **errors}},
                "delete": {"summary": "Make the bot leave now (files finalised)",
                           "responses": {"202": answer("Leaving", "Bot"),
                                         "200": answer("Out already (queued, or final)", "Bot"),
                                         **errors}},
            },
            "/v1/bots/{bot_id}/transcript": {
                "parameters": [bot_id, {"name": "format", "in": "query",
                                        "schema": {"enum": ["json", "vtt"]}}],
                "get": {"summary": "The transcript (JSON, or WebVTT)",
                        "responses": {"200": answer("The transcript", "Transcript"), **errors}},
            },
            "/v1/bots/{bot_id}/recordings": {
                "parameters": [bot_id],
                "get": {"summary": "The recording's manifest",
                        "responses": {"200": answer("The manifest"), **errors}},
            },
            "/v1/bots/{bot_id}/recordings/{path}": {
                "parameters": [bot_id, {"name": "path", "in": "path", "required": True,
                                        "schema": {"type": "string"}}],
                "get": {"summary": "One recorded file",
                        "responses": {"200": answer("The file"), **errors}},
            },
        },
    }  # fmt: skip
