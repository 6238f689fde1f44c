"""`meetings/queries/*` and `users/queries/getCurrentUser`."""

from __future__ import annotations

from typing import Any

from agent.devserver.functions.base import (
    Context,
    HandlerMap,
    drop_none,
    participant_of,
    public_role,
    user_summary,
)
from agent.signaling.models import GetCurrentUserArgs, MeetingArgs

_ACTIVE = "('connecting', 'connected', 'disconnected')"


def get_meeting(ctx: Context, args: MeetingArgs) -> dict[str, Any]:
    meeting, participant = participant_of(ctx, args.meetingId)
    count_row = ctx.store.one(
        "SELECT COUNT(*) AS n FROM participants WHERE meeting_id = ?", (args.meetingId,)
    )
    sessions_row = ctx.store.one(
        f"SELECT COUNT(*) AS n FROM sessions WHERE meeting_id = ? AND state IN {_ACTIVE}",
        (args.meetingId,),
    )
    assert count_row is not None and sessions_row is not None
    return drop_none(
        {
            "_id": meeting["id"],
            "_creationTime": meeting["created_at"],
            "organizerId": meeting["organizer_id"],
            "title": meeting["title"],
            "description": meeting["description"],
            "scheduledAt": meeting["scheduled_at"],
            "duration": meeting["duration"],
            "state": meeting["state"],
            "participantCount": count_row["n"],
            "webrtcEnabled": True,
            "activeWebRTCSessions": sessions_row["n"],
            "userRole": public_role(participant["role"]),
            "userPresence": participant["presence"],
            "createdAt": meeting["created_at"],
            "updatedAt": meeting["updated_at"],
        }
    )


def list_meeting_participants(ctx: Context, args: MeetingArgs) -> list[dict[str, Any]]:
    participant_of(ctx, args.meetingId)
    rows = ctx.store.participants(args.meetingId)
    sessions = ctx.store.all(
        f"SELECT user_id, state FROM sessions WHERE meeting_id = ? AND state IN {_ACTIVE}",
        (args.meetingId,),
    )
    result = []
    for p in rows:
        mine = [s["state"] for s in sessions if s["user_id"] == p["user_id"]]
        result.append(
            drop_none(
                {
                    "_id": p["id"],
                    "_creationTime": p["created_at"],
                    "meetingId": p["meeting_id"],
                    "userId": p["user_id"],
                    "role": public_role(p["role"]),
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


def get_current_user(ctx: Context, args: GetCurrentUserArgs) -> dict[str, Any]:
    u = ctx.user
    return drop_none(
        {
            "_id": u["id"],
            "_creationTime": u["created_at"],
            "workosUserId": u["workos_user_id"],
            "email": u["email"],
            "displayName": u["display_name"],
            "isActive": bool(u["is_active"]),
            "createdAt": u["created_at"],
            "updatedAt": u["updated_at"],
        }
    )


HANDLERS: HandlerMap = {
    "meetings/queries/getMeeting": get_meeting,
    "meetings/queries/listMeetingParticipants": list_meeting_participants,
    "users/queries/getCurrentUser": get_current_user,
}
