"""What a Convex error envelope says, in one line.

A function that throws is answered with `{"status": "error", "errorMessage", "errorData"?}`,
whatever the HTTP status (200 from the open-source backend's /api/run, 400 per the published
spec, 560 as some clients see it). `errorMessage` is `[Request ID: <id>] Server Error`, to which a
development deployment appends the cause on further lines (`Uncaught ConvexError: {json}`, or
`ArgumentValidationError: ...` with `Path:` and `Validator:` lines, or a stack trace); production
deployments send nothing after "Server Error". `errorData` comes only with a ConvexError.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

MAX_MESSAGE_CHARS = 300
_REQUEST_ID = re.compile(r"^\s*\[Request ID: ([^\]]{1,100})\]\s*")
_CONVEX_ERROR = "Uncaught ConvexError:"
_VALIDATION = "ArgumentValidationError:"


@dataclass(frozen=True)
class ErrorDescription:
    message: str  # one line
    data: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None


def describe_error(error_message: Any, error_data: Any) -> ErrorDescription:
    """The envelope's error as one line, with `errorData` (or what the message reveals of it)."""
    raw = error_message if isinstance(error_message, str) else ""
    data: dict[str, Any] = dict(error_data) if isinstance(error_data, dict) else {}
    if not isinstance(data.get("code"), str | None):
        data["code"] = None  # a code that is not a string is no code
    request_id = None
    if match := _REQUEST_ID.match(raw):
        request_id = match.group(1)
        raw = raw[match.end() :]
    lines = [line.strip() for line in raw.splitlines() if line.strip()]

    if not data.get("code"):
        # A development deployment without errorData (or an older client path): the
        # ConvexError's data is in the message.
        thrown = _convex_error_data(lines)
        if isinstance(thrown, dict):
            data = {**thrown, **{k: v for k, v in data.items() if v is not None}}
        elif isinstance(thrown, str) and thrown:
            return ErrorDescription(_one_line(thrown), data, request_id)
    code, text = data.get("code"), data.get("message")
    if isinstance(code, str) and code:
        if not (isinstance(text, str) and text):
            text = _first_detail(lines)  # a server that puts its message in errorMessage only
        detail = f"{code}: {text}" if text else code
        return ErrorDescription(_one_line(detail), data, request_id)
    if validation := _validation_failure(lines):
        return ErrorDescription(_one_line(validation), data, request_id)
    detail = _first_detail(lines)
    if not detail:
        # A production deployment says nothing more; the request ID is what its owner can trace.
        detail = "Server Error (no details from the deployment"
        detail += f"; request ID {request_id})" if request_id else ")"
    return ErrorDescription(_one_line(detail), data, request_id)


def _first_detail(lines: list[str]) -> str:
    detail = next((line for line in lines if line != "Server Error"), "")
    return detail.removeprefix("Uncaught ")


def _convex_error_data(lines: list[str]) -> Any:
    for line in lines:
        if line.startswith(_CONVEX_ERROR):
            payload = line[len(_CONVEX_ERROR) :].strip()
            try:
                return json.loads(payload)
            except ValueError:
                return payload
    return None


def _validation_failure(lines: list[str]) -> str | None:
    """`invalid arguments: <reason> (path .x, expected v.id("meetings"))` from Convex's text."""
    for i, line in enumerate(lines):
        position = line.find(_VALIDATION)
        if position < 0:
            continue
        reason = line[position + len(_VALIDATION) :].strip()
        path = validator = None
        for later in lines[i:]:
            if later.startswith("Path:"):
                path = later[len("Path:") :].strip()
            elif later.startswith("Validator:"):
                validator = later[len("Validator:") :].strip()
        # An older one-line form: "ArgumentValidationError: <why>. Path: .x"
        if path is None and " Path: " in reason:
            reason, path = (part.strip() for part in reason.rsplit(" Path: ", 1))
        where = ", ".join(
            part
            for part in (
                f"path {path}" if path else "",
                f"expected {_short(validator, 80)}" if validator else "",
            )
            if part
        )
        text = f"invalid arguments: {reason or 'value does not match validator'}"
        return f"{text} ({where})" if where else text
    return None


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _one_line(text: str) -> str:
    return _short(" ".join(text.split()), MAX_MESSAGE_CHARS)
