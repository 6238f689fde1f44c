"""How the dev backend fails: Connvo's ConvexErrors, and the transport's own error bodies.

Two kinds of failure, answered differently, as a Convex deployment answers them:

- A *function error* (a Connvo function threw a `ConvexError`, or its arguments did not match its
  validator) is the envelope `{"status": "error", "errorMessage", "errorData"?}` with the HTTP
  status chosen by `--error-status` (200 by default, as the open-source backend's `/api/run`).
  `errorMessage` is `[Request ID: <16 hex>] Server Error`, followed in development mode by the
  cause; `errorData` comes only with a ConvexError.
- A *transport error* (bad body, unknown function, wrong method, too large, bad token, injected
  fault, internal failure) keeps its own HTTP status and has the body `{"code", "message"}`, the
  shape of the Convex HTTP layer's own errors. It is not an envelope: no function ran.

The constructors below follow `createError` in Connvo's `convex/lib/errors.ts`: the same codes,
messages, `statusCode`s and `metadata`.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Final

from starlette.responses import Response

# --- Connvo's codes (errorData.code) and their statusCode ----------------------------------------

UNAUTHORIZED: Final = "UNAUTHORIZED"
FORBIDDEN: Final = "FORBIDDEN"
NOT_FOUND: Final = "NOT_FOUND"
VALIDATION_ERROR: Final = "VALIDATION_ERROR"
INSUFFICIENT_PERMISSIONS: Final = "INSUFFICIENT_PERMISSIONS"
MEETING_NOT_ACTIVE: Final = "MEETING_NOT_ACTIVE"
RATE_LIMIT_EXCEEDED: Final = "RATE_LIMIT_EXCEEDED"

STATUS_CODES: Final[dict[str, int]] = {
    UNAUTHORIZED: 401,
    FORBIDDEN: 403,
    NOT_FOUND: 404,
    VALIDATION_ERROR: 400,
    INSUFFICIENT_PERMISSIONS: 403,
    MEETING_NOT_ACTIVE: 400,
    RATE_LIMIT_EXCEEDED: 429,
}

# --- transport codes (body {"code", "message"}) ---------------------------------------------------

BAD_JSON_BODY: Final = "BadJsonBody"
BAD_CONTENT_TYPE: Final = "BadContentType"
FUNCTION_NOT_FOUND: Final = "FunctionNotFound"
ROUTE_NOT_FOUND: Final = "NotFound"
METHOD_NOT_ALLOWED: Final = "MethodNotAllowed"
PAYLOAD_TOO_LARGE: Final = "PayloadTooLarge"
UNAUTHENTICATED: Final = "Unauthenticated"
TOO_MANY_REQUESTS: Final = "TooManyRequests"
INTERNAL_SERVER_ERROR: Final = "InternalServerError"
BAD_ADMIN_KEY: Final = "BadAdminKey"
BAD_REQUEST: Final = "BadRequest"

FUNCTION_ERROR_STATUSES: Final = (200, 400, 560)
REQUEST_ID_BYTES = 8  # 16 hex characters, as Convex's request IDs


class _Undefined:
    """JavaScript's `undefined` inside a ConvexError's data.

    Convex drops object fields whose value is undefined when it sends `errorData`, but the error's
    message (`JSON.stringify` with a replacer) prints them as the string "undefined". Connvo's
    `createError.validation(message)` leaves `metadata.field` undefined, for instance.
    """

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "undefined"


UNDEFINED: Final = _Undefined()


class ConvexError(Exception):
    """A function that throws Connvo's `ConvexError({code, message, statusCode, metadata?})`."""

    def __init__(self, code: str, message: str, metadata: Any = UNDEFINED) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.metadata = metadata

    @property
    def _raw(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "statusCode": STATUS_CODES[self.code],
            "metadata": self.metadata,
        }

    @property
    def data(self) -> dict[str, Any]:
        """`errorData` as sent: undefined fields are left out."""
        cleaned: dict[str, Any] = _drop_undefined(self._raw)
        return cleaned

    def detail(self) -> str:
        """The development deployment's line after "Server Error"."""
        text = json.dumps(
            self._raw, separators=(",", ":"), ensure_ascii=False, default=_undefined_as_text
        )
        return f"Uncaught ConvexError: {text}"


def _drop_undefined(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_undefined(v) for k, v in value.items() if v is not UNDEFINED}
    if isinstance(value, list):
        return [_drop_undefined(v) for v in value]
    return value


def _undefined_as_text(value: Any) -> Any:
    if value is UNDEFINED:
        return "undefined"
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


# --- createError, as Connvo's convex/lib/errors.ts ------------------------------------------------


def unauthorized(message: str = "Authentication required") -> ConvexError:
    return ConvexError(UNAUTHORIZED, message)


def forbidden(message: str = "Access denied", metadata: Any = UNDEFINED) -> ConvexError:
    return ConvexError(FORBIDDEN, message, metadata)


def not_found(resource: str, id_: str | None = None) -> ConvexError:
    message = f"{resource} with ID {id_} not found" if id_ else f"{resource} not found"
    return ConvexError(NOT_FOUND, message, {"id": id_} if id_ else UNDEFINED)


def validation(message: str, field: str | None = None) -> ConvexError:
    return ConvexError(VALIDATION_ERROR, message, {"field": UNDEFINED if field is None else field})


def meeting_not_active(meeting_id: str) -> ConvexError:
    return ConvexError(
        MEETING_NOT_ACTIVE, "Meeting is not currently active", {"meetingId": meeting_id}
    )


def insufficient_permissions(required_role: str, current_role: str | None = None) -> ConvexError:
    return ConvexError(
        INSUFFICIENT_PERMISSIONS,
        f"Requires {required_role} role",
        {
            "requiredRole": required_role,
            "currentRole": UNDEFINED if current_role is None else current_role,
        },
    )


def rate_limit_exceeded(action: str, limit: int, retry_after_s: int) -> ConvexError:
    return ConvexError(
        RATE_LIMIT_EXCEEDED,
        f"Rate limit exceeded for {action}",
        {"action": action, "limit": limit, "retryAfterSeconds": retry_after_s},
    )


# --- responses ------------------------------------------------------------------------------------


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def function_error(
    detail: str, data: dict[str, Any] | None, *, status: int, redact: bool
) -> Response:
    """The error envelope of a function that failed; `data` is a ConvexError's (None otherwise)."""
    message = f"[Request ID: {secrets.token_hex(REQUEST_ID_BYTES)}] Server Error"
    if not redact:  # a development deployment says why; a production one does not
        message += "\n" + detail
    body: dict[str, Any] = {"status": "error", "errorMessage": message}
    if data is not None:
        body["errorData"] = data
    return Response(encode(body), status_code=status, media_type="application/json")


def transport_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """A failure before (or instead of) running a function: `{"code", "message"}`."""
    return Response(
        encode({"code": code, "message": message}),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )
