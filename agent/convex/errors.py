"""Typed errors of the Convex HTTP API. None of them carries the bearer token."""

from __future__ import annotations

from typing import Any


class ConvexError(Exception):
    """Base class: a call to `POST /api/run/{path}` did not produce a value."""

    def __init__(self, function: str, message: str) -> None:
        super().__init__(f"{function}: {message}")
        self.function = function
        self.message = message


class FunctionError(ConvexError):
    """The function ran and threw (bad args, not found, forbidden, inactive meeting...).

    `message` is one line: the function's `code: message` when it threw a ConvexError, the path
    and validator of the first failure for an argument validation error, else what the server
    said ("Server Error" from a production deployment). `data` is `errorData` (a ConvexError's
    `{code, message, statusCode, metadata}`), empty when the server sent none.
    """

    def __init__(
        self,
        function: str,
        message: str,
        data: dict[str, Any] | None,
        status: int,
        *,
        request_id: str | None = None,
    ) -> None:
        super().__init__(function, message)
        self.data: dict[str, Any] = data or {}
        self.status = status
        self.request_id = request_id

    @property
    def code(self) -> str | None:
        code = self.data.get("code")
        return code if isinstance(code, str) else None

    @property
    def metadata(self) -> dict[str, Any]:
        metadata = self.data.get("metadata")
        return metadata if isinstance(metadata, dict) else {}


class AuthError(ConvexError):
    """The token was missing, expired or rejected, or its identity is not a Connvo user."""


class TransientError(ConvexError):
    """A failure worth retrying: 429/5xx, a dropped connection or a timeout."""

    def __init__(
        self,
        function: str,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(function, message)
        self.retry_after = retry_after
        self.status = status


class ProtocolError(ConvexError):
    """The server answered something that is not a Convex envelope (HTML, bad JSON...)."""

    def __init__(self, function: str, message: str, status: int) -> None:
        super().__init__(function, message)
        self.status = status
