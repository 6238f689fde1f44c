"""What every function handler shares: the call context, the error type and the access checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.devserver.store import Row, Store
from agent.signaling.models import ERR_FORBIDDEN, ERR_MEETING_NOT_ACTIVE, ERR_NOT_FOUND


class FunctionError(Exception):
    """A function that throws: an error envelope (HTTP 400 unless `status` says otherwise)."""

    def __init__(self, code: str, message: str, status: int = 400, **data: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.data = data


@dataclass
class Context:
    store: Store
    user: Row
    generation: int = 2
    ice_servers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def user_id(self) -> str:
        return str(self.user["id"])


Handler = Callable[[Context, Any], Any]
HandlerMap = dict[str, Handler]


def meeting_of(ctx: Context, meeting_id: str) -> Row:
    meeting = ctx.store.meeting(meeting_id)
    if meeting is None:
        raise FunctionError(ERR_NOT_FOUND, "Meeting not found", meetingId=meeting_id)
    return meeting


def participant_of(ctx: Context, meeting_id: str) -> tuple[Row, Row]:
    """(meeting, caller's participant row); the caller must be a participant."""
    meeting = meeting_of(ctx, meeting_id)
    participant = ctx.store.participant(meeting_id, ctx.user_id)
    if participant is None:
        raise FunctionError(ERR_FORBIDDEN, "Access denied: not a participant of this meeting")
    return meeting, participant


def require_active(meeting: Row) -> None:
    if meeting["state"] != "active":
        raise FunctionError(
            ERR_MEETING_NOT_ACTIVE,
            f"Meeting is not active (state: {meeting['state']})",
            state=meeting["state"],
        )


def require_host(ctx: Context, meeting_id: str) -> Row:
    meeting, participant = participant_of(ctx, meeting_id)
    if participant["role"] != "host" and meeting["organizer_id"] != ctx.user_id:
        raise FunctionError(ERR_FORBIDDEN, "Only the meeting host can do this")
    return meeting


def public_role(role: str) -> str:
    # The published result types know host/participant/observer only; a co-host reads as a
    # participant (and has no host rights here).
    return "participant" if role == "co-host" else role


def drop_none(doc: dict[str, Any]) -> dict[str, Any]:
    """Convex omits undefined fields instead of sending null."""
    return {k: v for k, v in doc.items() if v is not None}


def user_summary(user_id: str, display_name: str | None) -> dict[str, Any]:
    return drop_none({"_id": user_id, "displayName": display_name})
