"""The ASGI application: Convex's `/api/run` transport, envelopes, limits, auth, faults and admin.

`/api/run/...` is served by a plain ASGI handler rather than a Starlette route: dropping a
connection without any response needs uvicorn's own `send`, and slow bodies need every body chunk.
Everything else (health, admin) is a small Starlette app.
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

from agent.devserver import admin, auth, ids, joinpage
from agent.devserver.faults import FaultConfig, Faults
from agent.devserver.functions import HANDLERS, Context, FunctionError
from agent.devserver.functions.signaling import PAGE_SIZE
from agent.devserver.store import Row, Store
from agent.signaling.models import (
    ERR_BAD_ARGS,
    ERR_INTERNAL,
    ERR_NOT_FOUND,
    ERR_RATE_LIMITED,
    ERR_TOO_LARGE,
    ERR_UNAUTHENTICATED,
    ERR_UNKNOWN_FUNCTION,
    FUNCTION_ARGS,
    ID_CHECKER_CONTEXT_KEY,
    MAX_REQUEST_BODY_BYTES,
)

log = logging.getLogger("connvo.devserver")

RUN_PREFIX = "/api/run/"
ACK_FUNCTION = "meetings/webrtc/signaling/markSignalsProcessed"
PENDING_FUNCTION = "meetings/webrtc/signaling/getPendingSignals"
# An oversized body is read and discarded up to this much so the client gets its 413 instead of a
# broken pipe; beyond it the connection is answered and closed.
DRAIN_LIMIT_BYTES = 16 * MAX_REQUEST_BODY_BYTES
SLOW_BODY_CHUNKS = 10


class _TooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


def envelope_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **data: Any
) -> Response:
    body = {"status": "error", "errorMessage": message, "errorData": {"code": code, **data}}
    return JSONResponse(body, status_code=status, headers=headers)


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _error_path(exc: ValidationError, raw: Any) -> tuple[str, str]:
    """(Convex-style path like `.description.sdp`, message) of the first validation error.

    pydantic adds union-member tags to `loc`; walking the actual input keeps only real segments.
    """
    err = exc.errors()[0]
    parts: list[str] = []
    value = raw
    for seg in err["loc"]:
        if isinstance(value, dict) and isinstance(seg, str) and seg in value:
            parts.append(f".{seg}")
            value = value[seg]
        elif isinstance(value, list) and isinstance(seg, int) and 0 <= seg < len(value):
            parts.append(f"[{seg}]")
            value = value[seg]
        elif isinstance(value, dict) and isinstance(seg, str) and err["type"] == "missing":
            parts.append(f".{seg}")
            break
        else:
            break
    return "".join(parts) or ".", str(err["msg"])


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


class DevServerApp:
    def __init__(
        self,
        store: Store,
        *,
        generation: int = 2,
        admin_key: str,
        ice_servers: Sequence[str] = (),
    ) -> None:
        self.store = store
        self.generation = generation
        self.admin_key = admin_key
        self.ice_servers = [{"urls": url} for url in ice_servers]
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
        code = ERR_NOT_FOUND if exc.status_code == 404 else ERR_BAD_ARGS
        return envelope_error(exc.status_code, code, f"{exc.detail}: {request.url.path}")

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def _admin_denied(self, request: Request) -> Response | None:
        given = request.headers.get("x-admin-key", "")
        if not hmac.compare_digest(given.encode(), self.admin_key.encode()):
            return envelope_error(401, ERR_UNAUTHENTICATED, "missing or wrong X-Admin-Key")
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
                return envelope_error(
                    400, ERR_BAD_ARGS, f"bad fault config: {field}: {first['msg']}"
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
            return envelope_error(400, ERR_BAD_ARGS, f"bad token request: {exc}".splitlines()[0])
        issued = {}
        with self.store.transaction():
            rows = {name: self.store.ensure_user(name) for name in dict.fromkeys(names)}
        for name, row in rows.items():
            token = auth.issue_token(self.secret, str(row["workos_user_id"]), body.ttl_s)
            issued[name] = {"token": token, "userId": str(row["id"])}
        return JSONResponse({"tokens": issued})

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
            response = envelope_error(500, ERR_INTERNAL, "Internal server error")
        if response is None:
            return  # connection dropped on purpose
        if slow_ms > 0:
            await self._send_slowly(response, send, slow_ms)
        else:
            await response(scope, receive, send)

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, function: str
    ) -> tuple[Response | None, float]:
        request = Request(scope, receive)
        try:
            body = await self._read_body(request, receive)
        except _TooLarge:
            return envelope_error(
                413,
                ERR_TOO_LARGE,
                f"Request body exceeds {MAX_REQUEST_BODY_BYTES} bytes",
                limit=MAX_REQUEST_BODY_BYTES,
            ), 0
        self.stats.total += 1
        self.stats.functions[function] += 1
        if request.method != "POST":
            return envelope_error(405, ERR_BAD_ARGS, "Use POST for /api/run"), 0
        args_model = FUNCTION_ARGS.get(function)
        if args_model is None:
            return envelope_error(
                404, ERR_UNKNOWN_FUNCTION, f"Could not find public function for '{function}'"
            ), 0

        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            return envelope_error(400, ERR_BAD_ARGS, "Content-Type must be application/json"), 0
        try:
            payload = json.loads(body, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: deep nesting
            return envelope_error(400, ERR_BAD_ARGS, "Request body is not valid JSON"), 0
        if not isinstance(payload, dict) or not isinstance(payload.get("args"), dict):
            return envelope_error(
                400, ERR_BAD_ARGS, 'Request body must be {"args": {...}, "format": "json"}'
            ), 0
        if set(payload) - {"args", "format"} or payload.get("format", "json") != "json":
            return envelope_error(
                400, ERR_BAD_ARGS, 'Only "args" and "format": "json" are accepted in the body'
            ), 0

        try:
            user = self._authenticate(request)
        except auth.AuthError as exc:
            return envelope_error(
                401,
                ERR_UNAUTHENTICATED,
                f"Unauthenticated: {exc}",
                headers={"WWW-Authenticate": "Bearer"},
            ), 0
        self.stats.users[str(user["id"])] += 1

        faults = self.faults.config
        faulty = self.faults.applies_to(function)
        if faulty:
            early = await self._early_faults(receive, send)
            if early is None or isinstance(early, Response):
                return early, 0

        raw_args = payload["args"]
        try:
            args = args_model.model_validate(
                raw_args, context={ID_CHECKER_CONTEXT_KEY: ids.is_id_of}
            )
        except ValidationError as exc:
            path, msg = _error_path(exc, raw_args)
            return envelope_error(
                400,
                ERR_BAD_ARGS,
                f"ArgumentValidationError: {msg}. Path: {path}",
                path=path,
            ), 0

        ctx = Context(self.store, user, self.generation, self.ice_servers)
        ack_fault = faulty and function == ACK_FUNCTION and self.faults.roll(faults.ack_fail_rate)
        if ack_fault and faults.ack_fail_mode == "before":
            return envelope_error(500, ERR_INTERNAL, "Injected fault: acknowledgement failed"), 0
        try:
            with self.store.transaction():
                value = HANDLERS[function](ctx, args)
        except FunctionError as exc:
            return envelope_error(exc.status, exc.code, exc.message, **exc.data), 0
        if ack_fault:  # "after": applied, yet the client is told it failed
            return envelope_error(500, ERR_INTERNAL, "Injected fault: acknowledgement failed"), 0
        if faulty and function == PENDING_FUNCTION:
            value = self.faults.duplicate(value, PAGE_SIZE)
        response = Response(
            _encode({"status": "success", "value": value}), media_type="application/json"
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
            return envelope_error(500, ERR_INTERNAL, "Injected fault: internal error")
        if self.faults.roll(faults.rate_limit_rate):
            return envelope_error(
                429,
                ERR_RATE_LIMITED,
                "Injected fault: too many requests",
                headers={"Retry-After": str(faults.retry_after_s)},
                retryAfterMs=faults.retry_after_s * 1000,
            )
        return False

    def _authenticate(self, request: Request) -> Row:
        token = auth.bearer_token(request.headers.get("authorization"))
        subject = self.tokens.subject(token)
        user = self.store.user_by_subject(subject)
        if user is None or not user["is_active"]:
            raise auth.AuthError("no user for this token")
        return user

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
