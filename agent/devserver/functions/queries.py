"""`meetings/queries/*` and `users/queries/getCurrentUser`."""

from __future__ import annotations

from typing import Any

from agent.devserver.functions.base import (
    Args,
    Context,
    FunctionMap,
    drop_none,
    participant_of,
    query,
    user_summary,
)
from agent.devserver.validators import v

_ACTIVE = "('connecting', 'connected', 'disconnected')"
MEETING_ONLY = v.object({"meetingId": v.id("meetings")})


def get_meeting(ctx: Context, args: Args) -> dict[str, Any] | None:
    participant = participant_of(ctx, args["meetingId"])
    meeting = ctx.store.meeting(args["meetingId"])
    if meeting is None:
        return None
    count_row = ctx.store.one(
        "SELECT COUNT(*) AS n FROM participants WHERE meeting_id = ?", (args["meetingId"],)
    )
    sessions_row = ctx.store.one(
        f"SELECT COUNT(*) AS n FROM sessions WHERE meeting_id = ? AND state IN {_ACTIVE}",
        (args["meetingId"],),
    )
    assert count_row is not None and sessions_row is not None
    return drop_none(
        {
            "_id": meeting["id"],
            "_creationTime": float(meeting["created_at"]),
            "organizerId": meeting["organizer_id"],
            "title": meeting["title"],
            "description": meeting["description"],
            "scheduledAt": meeting["scheduled_at"],
            "duration": meeting["duration"],
            "state": meeting["state"],
            "participantCount": count_row["n"],
            "webrtcEnabled": True,
            "activeWebRTCSessions": sessions_row["n"],
            "userRole": participant["role"],
            "userPresence": participant["presence"],
            "createdAt": meeting["created_at"],
            "updatedAt": meeting["updated_at"],
        }
    )


def list_meeting_participants(ctx: Context, args: Args) -> list[dict[str, Any]]:
    participant_of(ctx, args["meetingId"])
    rows = ctx.store.participants(args["meetingId"])
    # As Connvo: the count is of every session the user has in the meeting, whatever its state.
    sessions = ctx.store.all(
        "SELECT user_id, state FROM sessions WHERE meeting_id = ?", (args["meetingId"],)
    )
    result = []
    for p in rows:
        mine = [s["state"] for s in sessions if s["user_id"] == p["user_id"]]
        result.append(
            drop_none(
                {
                    "_id": p["id"],
                    "_creationTime": float(p["created_at"]),
                    "meetingId": p["meeting_id"],
                    "userId": p["user_id"],
                    "role": p["role"],
                    "presence": p["presence"],
                    "joinedAt": p["joined_at"],
                    "leftAt": p["left_at"],
                    "createdAt": p["created_at"],
                    "user": user_summary(p["user_id"], p["display_name"]),
                    "webrtcConnected": "connected" in mine,
                    "webrtcSessionCount": len(mine),
                }
            )
        )
    return result


def get_current_user(ctx: Context, args: Args) -> dict[str, Any] | None:
    # No guard here: without an identity, or for an identity without a Connvo user, the answer is
    # null (so that signed-out clients can subscribe without errors).
    u = ctx.user
    if ctx.identity is None or u is None:
        return None
    return drop_none(
        {
            "_id": u["id"],
            "_creationTime": float(u["created_at"]),
            "workosUserId": u["workos_user_id"],
            "email": u["email"],
            "displayName": u["display_name"],
            "isActive": bool(u["is_active"]),
            "createdAt": u["created_at"],
            "updatedAt": u["updated_at"],
        }
    )


FUNCTIONS: FunctionMap = {
    "meetings/queries/getMeeting": query(MEETING_ONLY, get_meeting),
    "meetings/queries/listMeetingParticipants": query(MEETING_ONLY, list_meeting_participants),
    "users/queries/getCurrentUser": query(v.object({}), get_current_user),
}
