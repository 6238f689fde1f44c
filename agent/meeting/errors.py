"""The errors a bot sees. All of the backend's come from agent.convex's one hierarchy."""

from __future__ import annotations

from typing import Literal

from agent.convex import FunctionError

JoinRefusal = Literal["not_a_participant", "meeting_not_found", "meeting_not_active", "refused"]


class JoinRefused(FunctionError):
    """The backend refused to let this identity into the meeting; `reason` says why."""

    reason: JoinRefusal

    @classmethod
    def from_error(cls, exc: FunctionError) -> JoinRefused:
        refused = cls(exc.function, exc.message, exc.data, exc.status)
        refused.reason = _reason(exc)
        return refused


class MeetingEndedError(Exception):
    """The agent is no longer in the meeting (it ended, this identity was removed, or the bot
    left), so what was asked cannot happen."""


def _reason(exc: FunctionError) -> JoinRefusal:
    if exc.code == "FORBIDDEN":
        return "not_a_participant"
    if exc.code == "NOT_FOUND":
        return "meeting_not_found"
    if exc.code in ("MEETING_NOT_ACTIVE", "VALIDATION_ERROR") and "active" in exc.message.lower():
        return "meeting_not_active"
    return "refused"
