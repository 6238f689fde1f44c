"""One line from each shape of Convex error envelope a deployment sends (as documented in the
reference page: development and production deployments, ConvexError and argument validation)."""

from __future__ import annotations

import json

import pytest

from agent.convex.envelope import describe_error

FORBIDDEN = {
    "code": "FORBIDDEN",
    "message": "Access denied: not a participant of this meeting",
    "statusCode": 403,
}


def test_a_convex_error_from_a_development_deployment() -> None:
    message = (
        "[Request ID: 8a3f0c1d2e4b5a69] Server Error\n"
        f"Uncaught ConvexError: {json.dumps(FORBIDDEN)}"
    )
    described = describe_error(message, FORBIDDEN)
    assert described.message == "FORBIDDEN: Access denied: not a participant of this meeting"
    assert described.data["code"] == "FORBIDDEN" and described.request_id == "8a3f0c1d2e4b5a69"


def test_a_convex_error_from_a_production_deployment() -> None:
    # Only errorData tells what happened.
    described = describe_error("[Request ID: 77aa] Server Error", FORBIDDEN)
    assert described.message == "FORBIDDEN: Access denied: not a participant of this meeting"


def test_a_convex_error_whose_data_is_only_in_the_message() -> None:
    message = (
        f"[Request ID: 1] Server Error\nUncaught ConvexError: {json.dumps(FORBIDDEN)}\n"
        "    at handler (../convex/meetings/queries.ts:41:9)"
    )
    described = describe_error(message, None)
    assert described.message.startswith("FORBIDDEN: Access denied")
    assert described.data["statusCode"] == 403


def test_a_rate_limit_keeps_its_metadata() -> None:
    data = {
        "code": "RATE_LIMIT_EXCEEDED",
        "message": "Rate limit exceeded",
        "statusCode": 429,
        "metadata": {"retryAfterSeconds": 12},
    }
    described = describe_error("[Request ID: 2] Server Error", data)
    assert described.data["metadata"] == {"retryAfterSeconds": 12}


def test_argument_validation_names_the_path_and_the_validator() -> None:
    message = (
        "[Request ID: 3c] Server Error\nArgumentValidationError: Value does not match validator.\n"
        'Path: .meetingId\nValue: "nope"\nValidator: v.id("meetings")'
    )
    described = describe_error(message, None)
    assert described.message == (
        "invalid arguments: Value does not match validator."
        ' (path .meetingId, expected v.id("meetings"))'
    )
    assert described.data == {}


@pytest.mark.parametrize("request_id", ["f00d", None])
def test_a_production_server_error_says_so_in_one_line(request_id: str | None) -> None:
    prefix = f"[Request ID: {request_id}] " if request_id else ""
    described = describe_error(f"{prefix}Server Error", None)
    assert described.message.startswith("Server Error (no details from the deployment")
    assert (request_id or "") in described.message


def test_anything_else_is_one_line_and_bounded() -> None:
    described = describe_error("Uncaught Error: boom\n" + "x" * 5000 + "\n  at f()", {"code": 7})
    assert described.message.startswith("Error: boom") and "\n" not in described.message
    assert len(described.message) <= 300
