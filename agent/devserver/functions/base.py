"""What every function shares: the call context, the declaration type, and Connvo's guards
(`requireIdentity` and `assertMeetingAccess` of `convex/auth/guards.ts`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.devserver import errors
from agent.devserver.store import Row, Store
from agent.devserver.validators import ObjectValidator

Args = dict[str, Any]


@dataclass
class Context:
    """One call: the database, who calls, and the server's settings.

    `identity` is the verified token's subject (None without a token); `user` is that identity's
    Connvo user, None when it has none (no row, or a deactivated one).
    """

    store: Store
    identity: str | None
    user: Row | None
    generation: int = 2
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    transcript_rate_limit: tuple[int, float] = (50, 60.0)  # chunks per window of seconds

    def require_user(self) -> Row:
        """Connvo's `requireIdentity`: the caller's user, or UNAUTHORIZED."""
        if self.identity is None:
            raise errors.unauthorized("Authentication required")
        if self.user is None:
            raise errors.unauthorized(
                "User not provisioned. Please complete sign-in and try again."
            )
        return self.user

    @property
    def user_id(self) -> str:
        return str(self.require_user()["id"])


Handler = Callable[[Context, Args], Any]


@dataclass(frozen=True)
class Function:
    """A served function: its kind, its argument validator and its handler."""

    kind: Literal["query", "mutation"]
    args: ObjectValidator
    handler: Handler


FunctionMap = dict[str, Function]


def query(args: ObjectValidator, handler: Handler) -> Function:
    return Function("query", args, handler)


def mutation(args: ObjectValidator, handler: Handler) -> Function:
    return Function("mutation", args, handler)


def participant_of(ctx: Context, meeting_id: str, required_role: str | None = None) -> Row:
    """Connvo's `assertMeetingAccess`: the caller's participant row in the meeting.

    It does not look at the meeting itself: an unknown meeting has no participants, so its callers
    are FORBIDDEN too. Only the host role is ever required by the served functions.
    """
    user_id = ctx.user_id
    participant = ctx.store.participant(meeting_id, user_id)
    if participant is None:
        raise errors.forbidden(
            "Access denied: Not a meeting participant", {"meetingId": meeting_id, "userId": user_id}
        )
    if required_role is not None and participant["role"] != required_role:
        raise errors.insufficient_permissions(required_role, str(participant["role"]))
    return participant


def meeting_of(ctx: Context, meeting_id: str) -> Row:
    meeting = ctx.store.meeting(meeting_id)
    if meeting is None:
        raise errors.not_found("Meeting", meeting_id)
    return meeting


def drop_none(doc: dict[str, Any]) -> dict[str, Any]:
    """Convex omits undefined fields instead of sending null."""
    return {k: v for k, v in doc.items() if v is not None}


def user_summary(user_id: str, display_name: str | None) -> dict[str, Any]:
    return drop_none({"_id": user_id, "displayName": display_name})
