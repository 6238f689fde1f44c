"""The ASGI application: Convex's `/api/run` transport, envelopes, limits, auth, faults and admin.

`/api/run/...` is served by a plain ASGI handler rather than a Starlette route: dropping a
connection without any response needs uvicorn's own `send`, and slow bodies need every body chunk.
Everything else (health, admin) is a small Starlette app.

A function error (a ConvexError, or arguments that do not match the validator) is an error envelope
with the configured HTTP status (`error_status`); every other failure is a transport error
`{"code", "message"}` with its own status (see agent/devserver/errors.py).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from agent.devserver import admin, auth, errors, joinpage
from agent.devserver.errors import transport_error
from agent.devserver.faults import FaultConfig, Faults
from agent.devserver.functions import FUNCTIONS, Context
from agent.devserver.functions.signaling import PAGE_SIZE
from agent.devserver.ids import TABLES
from agent.devserver.store import MAX_ID_KEY, Row, Store
from agent.devserver.validators import ArgumentValidationError, validate_args

log = logging.getLogger("connvo.devserver")

RUN_PREFIX = "/api/run/"
ACK_FUNCTION = "meetings/webrtc/signaling/markSignalsProcessed"
PENDING_FUNCTION = "meetings/webrtc/signaling/getPendingSignals"
# The dev backend's own limit on a request body (Convex's are far larger): 256 KiB holds any
# browser's SDP many times over and keeps a hostile client from making the server buffer megabytes.
MAX_REQUEST_BODY_BYTES = 256 * 1024
# An oversized body is read and discarded up to this much so the client gets its 413 instead of a
# broken pipe; beyond it the connection is answered and closed.
DRAIN_LIMIT_BYTES = 16 * MAX_REQUEST_BODY_BYTES
SLOW_BODY_CHUNKS = 10
MAX_QUEUED_ID_KEYS = 10_000


class _TooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class Stats:
    """Request counts since the last reset, per function path and per user."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.functions: Counter[str] = Counter()
        self.users: Counter[str] = Counter()
        self.since_wall_ms = int(time.time() * 1000)
        self.since = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "functions": dict(self.functions),
            "users": dict(self.users),
            "sinceMs": self.since_wall_ms,
            "elapsedS": time.monotonic() - self.since,
        }


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    names: list[str] = Field(min_length=1, max_length=10_000)
    ttl_s: float = Field(default=auth.DEFAULT_TTL_S, gt=0, le=30 * 86400)


class NextIdsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: str
    sortKeys: list[int] = Field(max_length=MAX_QUEUED_ID_KEYS)


class DevServerApp:
    def __init__(
        self,
        store: Store,
        *,
        generation: int = 2,
        admin_key: str,
        ice_servers: Sequence[str] = (),
        error_status: int = 200,
        redact: bool = False,
        transcript_rate_limit: tuple[int, float] = (50, 60.0),
    ) -> None:
        if error_status not in errors.FUNCTION_ERROR_STATUSES:
            raise ValueError(f"error_status must be one of {errors.FUNCTION_ERROR_STATUSES}")
        self.store = store
        self.generation = generation
        self.admin_key = admin_key
        self.ice_servers = [{"urls": url} for url in ice_servers]
        self.error_status = error_status
        self.redact = redact
        self.transcript_rate_limit = transcript_rate_limit
        self.faults = Faults()
        self.stats = Stats()
        self.secret = store.jwt_secret()
        self.tokens = auth.TokenVerifier(self.secret)
        self.admin = Starlette(
            routes=[
                Route("/healthz", self._healthz, methods=["GET"]),
                Route("/admin/faults", self._faults, methods=["GET", "POST", "DELETE"]),
                Route("/admin/stats", self._stats, methods=["GET"]),
                Route("/admin/stats/reset", self._stats_reset, methods=["POST"]),
                Route("/admin/tokens", self._tokens, methods=["POST"]),
                Route("/admin/next-ids", self._next_ids, methods=["POST"]),
                *joinpage.routes(store, self.secret),  # the browser join page (dev only)
            ],
            exception_handlers={HTTPException: self._http_error},  # type: ignore[dict-item]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            scope["path"].startswith(RUN_PREFIX) or scope["path"] == RUN_PREFIX.rstrip("/")
        ):
            await self._api_run(scope, receive, send)
        else:
            await self.admin(scope, receive, send)

    # --- health and admin -----------------------------------------------------------------------

    async def _http_error(self, request: Request, exc: HTTPException) -> Response:
        code = {404: errors.ROUTE_NOT_FOUND, 405: errors.METHOD_NOT_ALLOWED}.get(
            exc.status_code, errors.BAD_REQUEST
        )
        return transport_error(exc.status_code, code, f"{exc.detail}: {request.url.path}")

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def _admin_denied(self, request: Request) -> Response | None:
        given = request.headers.get("x-admin-key", "")
        if not hmac.compare_digest(given.encode(), self.admin_key.encode()):
            return transport_error(401, errors.BAD_ADMIN_KEY, "missing or wrong X-Admin-Key")
        return None

    async def _faults(self, request: Request) -> Response:
        if (denied := self._admin_denied(request)) is not None:
            return denied
        if request.method == "POST":
            try:
                config = FaultConfig.model_validate_json(await request.body())
            except ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(p) for p in first["loc"]) or "(body)"
                return transport_error(
                    400, errors.BAD_REQUEST, f"bad fault config: {field}: {first['msg']}"
                )
            self.faults.replace(config)
            log.warning("faults set: %s", config.model_dump(exclude_defaults=True))
        elif request.method == "DELETE":
            self.faults.clear()
        return JSONResponse(self.faults.config.model_dump())

    async def _stats(self, request: Request) -> Response:
        if (denied := self._admin_denied(request)) is not None:
            return denied
        return JSONResponse(self.stats.snapshot())

    async def _stats_reset(self, request: Request) -> Response:
        if (denied := self._admin_denied(request)) is not None:
            return denied
        self.stats.reset()
        return JSONResponse(self.stats.snapshot())

    async def _tokens(self, request: Request) -> Response:
        """Users and bearer tokens for a load run: `{"names": [...], "ttl_s": 86400}`."""
        if (denied := self._admin_denied(request)) is not None:
            return denied
        try:
            body = TokenRequest.model_validate_json(await request.body())
            names = [admin.check_name(n) for n in body.names]
        except (ValidationError, ValueError) as exc:
            message = f"bad token request: {exc}".splitlines()[0]
            return transport_error(400, errors.BAD_REQUEST, message)
        issued = {}
        with self.store.transaction():
            rows = {name: self.store.ensure_user(name) for name in dict.fromkeys(names)}
        for name, row in rows.items():
            token = auth.issue_token(self.secret, str(row["workos_user_id"]), body.ttl_s)
            issued[name] = {"token": token, "userId": str(row["id"])}
        return JSONResponse({"tokens": issued})

    async def _next_ids(self, request: Request) -> Response:
        """`{"table": T, "sortKeys": [k, ...]}`: the next IDs inserted into table T get these sort
        keys (their 8-byte prefix, 0 <= k < 2**64) in order. Replaces the table's queue."""
        if (denied := self._admin_denied(request)) is not None:
            return denied
        try:
            body = NextIdsRequest.model_validate_json(await request.body())
            if body.table not in TABLES:
                raise ValueError(f"unknown table {body.table!r} (one of {', '.join(TABLES)})")
            if any(not 0 <= key < MAX_ID_KEY for key in body.sortKeys):
                raise ValueError("sort keys must be integers in [0, 2**64)")
        except (ValidationError, ValueError) as exc:
            message = f"bad next-ids request: {exc}".splitlines()[0]
            return transport_error(400, errors.BAD_REQUEST, message)
        self.store.queue_id_keys(body.table, body.sortKeys)
        return JSONResponse({"table": body.table, "pending": self.store.queued_id_keys(body.table)})

    # --- /api/run -------------------------------------------------------------------------------

    async def _api_run(self, scope: Scope, receive: Receive, send: Send) -> None:
        function = scope["path"][len(RUN_PREFIX) :].strip("/")
        slow_ms = 0.0
        try:
            response, slow_ms = await self._run(scope, receive, send, function)
        except _ClientGone:
            return
        except Exception:
            log.exception("internal error in %s", function)
            response = transport_error(500, errors.INTERNAL_SERVER_ERROR, "Internal server error")
        if response is None:
            return  # connection dropped on purpose
        if slow_ms > 0:
            await self._send_slowly(response, send, slow_ms)
        else:
            await response(scope, receive, send)

    def _function_error(self, detail: str, data: dict[str, Any] | None) -> Response:
        return errors.function_error(detail, data, status=self.error_status, redact=self.redact)

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, function: str
    ) -> tuple[Response | None, float]:
        request = Request(scope, receive)
        try:
            body = await self._read_body(request, receive)
        except _TooLarge:
            return transport_error(
                413,
                errors.PAYLOAD_TOO_LARGE,
                f"Request body exceeds {MAX_REQUEST_BODY_BYTES} bytes",
            ), 0
        self.stats.total += 1
        self.stats.functions[function] += 1
        if request.method != "POST":
            return transport_error(405, errors.METHOD_NOT_ALLOWED, "Use POST for /api/run"), 0
        declared = FUNCTIONS.get(function)
        if declared is None:
            return transport_error(
                404,
                errors.FUNCTION_NOT_FOUND,
                f"Could not find public function for '{function}'",
            ), 0

        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            return transport_error(
                400, errors.BAD_CONTENT_TYPE, "Content-Type must be application/json"
            ), 0
        try:
            payload = json.loads(body, parse_constant=_reject_constant)
            # Lone surrogates ("\ud800") parse in Python but are not valid JSON text for Convex.
            json.dumps(payload, ensure_ascii=False).encode()
        except (ValueError, UnicodeError, RecursionError):  # RecursionError: deep nesting
            return transport_error(400, errors.BAD_JSON_BODY, "Request body is not valid JSON"), 0
        if not isinstance(payload, dict) or not isinstance(payload.get("args"), dict):
            return transport_error(
                400, errors.BAD_JSON_BODY, 'Request body must be {"args": {...}, "format": "json"}'
            ), 0
        if set(payload) - {"args", "format"} or payload.get("format", "json") != "json":
            return transport_error(
                400,
                errors.BAD_JSON_BODY,
                'Only "args" and "format": "json" are accepted in the body',
            ), 0

        try:
            identity, user = self._authenticate(request)
        except auth.AuthError as exc:
            # A token that does not verify never reaches a function (none at all does).
            return transport_error(
                401,
                errors.UNAUTHENTICATED,
                f"Could not verify the token: {exc}",
                headers={"WWW-Authenticate": "Bearer"},
            ), 0
        if user is not None:
            self.stats.users[str(user["id"])] += 1

        faults = self.faults.config
        faulty = self.faults.applies_to(function)
        if faulty:
            early = await self._early_faults(receive, send)
            if early is None or isinstance(early, Response):
                return early, 0

        try:
            args = validate_args(declared.args, payload["args"])
        except ArgumentValidationError as exc:
            return self._function_error(str(exc), None), 0

        ctx = Context(
            self.store,
            identity,
            user,
            self.generation,
            self.ice_servers,
            self.transcript_rate_limit,
        )
        ack_fault = faulty and function == ACK_FUNCTION and self.faults.roll(faults.ack_fail_rate)
        if ack_fault and faults.ack_fail_mode == "before":
            return _injected_500("acknowledgement failed"), 0
        try:
            with self.store.transaction():
                value = declared.handler(ctx, args)
        except errors.ConvexError as exc:
            return self._function_error(exc.detail(), exc.data), 0
        if ack_fault:  # "after": applied, yet the client is told it failed
            return _injected_500("acknowledgement failed"), 0
        if faulty and function == PENDING_FUNCTION:
            value = self.faults.duplicate(value, PAGE_SIZE)
        response = Response(
            errors.encode({"status": "success", "value": value}), media_type="application/json"
        )
        return response, faults.slow_body_ms if faulty else 0.0

    async def _early_faults(self, receive: Receive, send: Send) -> Response | bool | None:
        """Latency, drop, timeout, 500 and 429: a response (or None: dropped) ends the request;
        False lets it through."""
        faults = self.faults.config
        if faults.latency_ms > 0 and not await _sleep_unless_gone(
            receive, faults.latency_ms / 1000
        ):
            raise _ClientGone
        if self.faults.roll(faults.drop_rate):
            await _drop_connection(receive, send)
            return None
        if self.faults.roll(faults.timeout_rate):
            # "the request never reached the backend" if the client gave up meanwhile
            if not await _sleep_unless_gone(receive, faults.timeout_s):
                raise _ClientGone
        if self.faults.roll(faults.error_rate):
            return _injected_500("internal error")
        if self.faults.roll(faults.rate_limit_rate):
            return transport_error(
                429,
                errors.TOO_MANY_REQUESTS,
                "Injected fault: too many requests",
                headers={"Retry-After": str(faults.retry_after_s)},
            )
        return False

    def _authenticate(self, request: Request) -> tuple[str | None, Row | None]:
        """(identity, user): (None, None) without a token; AuthError when a token does not verify.

        A verified identity whose user row is missing, or deactivated, has no Connvo user."""
        header = request.headers.get("authorization")
        if header is None or not header.strip():
            return None, None
        subject = self.tokens.subject(auth.bearer_token(header))
        user = self.store.user_by_subject(subject)
        if user is not None and not user["is_active"]:
            user = None
        return subject, user

    async def _read_body(self, request: Request, receive: Receive) -> bytes:
        """The body; refuses more than MAX_REQUEST_BODY_BYTES while reading, never buffering it."""
        declared = request.headers.get("content-length")
        too_large = (
            declared is not None and declared.isdigit() and int(declared) > (MAX_REQUEST_BODY_BYTES)
        )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > MAX_REQUEST_BODY_BYTES:
                too_large = True
                chunks.clear()
            if not too_large:
                chunks.append(chunk)
            if not message.get("more_body", False) or size > DRAIN_LIMIT_BYTES:
                break
        if too_large:
            raise _TooLarge
        return b"".join(chunks)

    async def _send_slowly(self, response: Response, send: Send, total_ms: float) -> None:
        body = bytes(response.body)
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": response.raw_headers,
            }
        )
        step = max(1, -(-len(body) // SLOW_BODY_CHUNKS))
        parts = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
        pause = total_ms / 1000 / max(1, len(parts))
        for i, part in enumerate(parts):
            await asyncio.sleep(pause)
            await send(
                {"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1}
            )


def _injected_500(what: str) -> Response:
    return transport_error(500, errors.INTERNAL_SERVER_ERROR, f"Injected fault: {what}")


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; JSON (and Convex) does not.
    raise ValueError(f"{name} is not valid JSON")


async def _sleep_unless_gone(receive: Receive, seconds: float) -> bool:
    """Sleep, but stop early (returning False) when the client disconnects."""
    if seconds <= 0:
        return True
    waiter = asyncio.ensure_future(receive())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=seconds)
        if waiter in done:
            return waiter.result().get("type") != "http.disconnect"
        return True
    finally:
        if not waiter.done():
            waiter.cancel()


async def _drop_connection(receive: Receive, send: Send) -> None:
    """Close the connection without writing a byte of response.

    uvicorn's `send` is a bound method of its request cycle, which holds the transport; aborting it
    is the only ASGI-side way to hang up. Waiting for the disconnect event keeps uvicorn from then
    writing a 500 of its own.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        # Unknown server: start a response and fail, which servers turn into an aborted body.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("injected fault: connection dropped")
    transport.abort()
    try:
        async with asyncio.timeout(2):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        pass
