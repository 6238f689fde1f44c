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
    """The function ran and threw (bad args, not found, forbidden, inactive meeting...)."""

    def __init__(
        self, function: str, message: str, data: dict[str, Any] | None, status: int
    ) -> None:
        super().__init__(function, message)
        self.data: dict[str, Any] = data or {}
        self.status = status

    @property
    def code(self) -> str | None:
        code = self.data.get("code")
        return code if isinstance(code, str) else None


class AuthError(ConvexError):
    """The token was missing, expired or rejected."""


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
