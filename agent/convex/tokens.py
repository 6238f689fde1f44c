"""Where the bearer token comes from: a value, the environment, or a file re-read on rotation."""

from __future__ import annotations

import os
from pathlib import Path


class TokenError(Exception):
    """The token could not be obtained (the message never contains the token)."""


class TokenSource:
    """Holds the current token; a file-backed source re-reads its file after an auth error."""

    def __init__(self, value: str | None = None, path: Path | None = None) -> None:
        if (value is None) == (path is None):
            raise TokenError("give exactly one of a token value or a token file")
        self._path = path
        self._value = value.strip() if value is not None else self._read()
        if not self._value:
            raise TokenError("the token is empty")

    @classmethod
    def from_env(cls, name: str = "CONNVO_TOKEN") -> TokenSource:
        value = os.environ.get(name)
        if not value:
            raise TokenError(f"{name} is not set")
        return cls(value=value)

    def _read(self) -> str:
        assert self._path is not None
        try:
            return self._path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TokenError(f"cannot read token file {self._path}: {exc.strerror}") from None

    @property
    def current(self) -> str:
        return self._value

    def refresh(self) -> bool:
        """Re-read the file; True when it now holds a different token (worth one more try)."""
        if self._path is None:
            return False
        try:
            fresh = self._read()
        except TokenError:
            return False
        if fresh and fresh != self._value:
            self._value = fresh
            return True
        return False

    def __repr__(self) -> str:
        source = f"file={self._path}" if self._path else "value"
        return f"TokenSource({source}, token=<redacted>)"
