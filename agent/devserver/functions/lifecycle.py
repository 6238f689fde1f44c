"""`meetings/lifecycle/*`: meetings, participants, presence and connection info.

The dev backend plays Connvo's free tier, the only one without an organisation: every meeting is a
WebRTC meeting without recording, with transcription, for at most 4 participants (reported, not
enforced, as in Connvo).
"""

from __future__ import annotations

from typing import Any

from agent.devserver import errors
from agent.devserver.functions.base import (
    Args,
    Context,
    FunctionMap,
    meeting_of,
    mutation,
    participant_of,
)
from agent.devserver.store import now_ms
from agent.devserver.validators import v

DEFAULT_MAX_PARTICIPANTS = 10
WEBRTC_MAX_PARTICIPANTS = 4  # Connvo's "WebRTC practical limit" on its free tier
DEFAULT_DURATION_MS = 1_800_000
ENDED_STATES = ("concluded", "cancelled")
FEATURES = {"recording": False, "transcription": True, "maxParticipants": WEBRTC_MAX_PARTICIPANTS}
MEETING_ONLY = v.object({"meetingId": v.id("meetings")})


def room_id(meeting_id: str) -> str:
    return f"webrtc_{meeting_id}"


def create_meeting(ctx: Context, args: Args) -> dict[str, Any]:
    # With a token, the caller must be a Connvo user, and `organizerId` is ignored. Without one,
    # Connvo creates the meeting for `organizerId`, whoever asks: the dev backend does the same.
    organizer = ctx.require_user() if ctx.identity is not None else None
    title: str = args["title"]
    if not title.strip():
        raise errors.validation("Meeting title cannot be empty")
    scheduled_at = args.get("scheduledAt")
    if scheduled_at and scheduled_at < now_ms():
        raise errors.validation("Cannot schedule meeting in the past")
    max_participants = args.get("maxParticipants")
    if max_participants and max_participants < 1:
        raise errors.validation("Maximum participants must be at least 1")
    if organizer is None:
        organizer_id = args.get("organizerId")
        if not organizer_id:
            raise errors.unauthorized("Unauthenticated meeting creation requires organizerId")
        organizer = ctx.store.user(organizer_id)
        if organizer is None:
            raise errors.not_found("User", organizer_id)

    features = {
        **FEATURES,
        "maxParticipants": min(
            max_participants or DEFAULT_MAX_PARTICIPANTS, WEBRTC_MAX_PARTICIPANTS
        ),
    }
    description = args.get("description")
    meeting_id = ctx.store.insert_meeting(
        str(organizer["id"]),
        title.strip(),
        "scheduled",
        description=None if description is None else description.strip(),
        scheduled_at=scheduled_at,
        duration=args.get("duration") or DEFAULT_DURATION_MS,
        recording_enabled=False,
        transcription_enabled=True,
        meeting_type=args.get("meetingType"),
        max_participants=features["maxParticipants"],
    )
    ctx.store.insert_participant(meeting_id, str(organizer["id"]), "host")
    # `participantEmails` is accepted and ignored, as in Connvo.
    return {
        "meetingId": meeting_id,
        "webrtcReady": True,
        "videoProvider": "webrtc",
        "features": features,
    }


def add_participant(ctx: Context, args: Args) -> dict[str, Any]:
    meeting_id, user_id = args["meetingId"], args["userId"]
    caller = participant_of(ctx, meeting_id)
    if caller["role"] != "host":
        raise errors.insufficient_permissions("host", str(caller["role"]))
    if ctx.store.participant(meeting_id, user_id) is not None:
        raise errors.validation("User is already a participant in this meeting")
    if ctx.store.user(user_id) is None:
        raise errors.not_found("User", user_id)
    meeting = meeting_of(ctx, meeting_id)
    if meeting["state"] in ENDED_STATES:
        raise errors.validation("Cannot add participants to concluded or cancelled meeting")
    role = "participant" if args["role"] == "co-host" else args["role"]  # as Connvo, for now
    participant_id = ctx.store.insert_participant(meeting_id, user_id, role)
    ctx.store.run("UPDATE meetings SET updated_at = ? WHERE id = ?", (now_ms(), meeting_id))
    return {"participantId": participant_id, "success": True}


def start_meeting(ctx: Context, args: Args) -> dict[str, Any]:
    meeting_id = args["meetingId"]
    participant_of(ctx, meeting_id, "host")
    meeting = meeting_of(ctx, meeting_id)
    if meeting["state"] == "active":
        raise errors.validation("Meeting is already active")
    if meeting["state"] in ENDED_STATES:
        raise errors.validation("Cannot start a concluded or cancelled meeting")
    now = now_ms()
    ctx.store.run(
        "UPDATE meetings SET state = 'active', started_at = ?, updated_at = ? WHERE id = ?",
        (now, now, meeting_id),
    )
    return {
        "success": True,
        "webrtcReady": True,
        "videoProvider": "webrtc",
        "roomInfo": {"iceServers": ctx.ice_servers},
    }


def end_meeting(ctx: Context, args: Args) -> dict[str, Any]:
    meeting_id = args["meetingId"]
    participant_of(ctx, meeting_id, "host")
    meeting = meeting_of(ctx, meeting_id)
    if meeting["state"] != "active":
        raise errors.validation("Can only end active meetings")
    now = now_ms()
    ctx.store.run(
        "UPDATE meetings SET state = 'concluded', ended_at = ?, updated_at = ? WHERE id = ?",
        (now, now, meeting_id),
    )
    # Sessions, signals and presence are left as they are: Connvo's endMeeting only schedules
    # post-processing (transcripts, insights, analytics), none of which touches them.
    result: dict[str, Any] = {"success": True}
    if meeting["started_at"] is not None:
        result["duration"] = now - meeting["started_at"]
    return result


def join_meeting(ctx: Context, args: Args) -> dict[str, Any]:
    participant = participant_of(ctx, args["meetingId"])
    meeting = meeting_of(ctx, args["meetingId"])
    if meeting["state"] != "active":
        raise errors.validation("Cannot join inactive meeting")
    ctx.store.run(
        "UPDATE participants SET presence = 'joined', joined_at = ? WHERE id = ?",
        (now_ms(), participant["id"]),
    )
    return {"success": True, "webrtcReady": True}


def leave_meeting(ctx: Context, args: Args) -> dict[str, Any]:
    # Presence only: the caller stays a participant (who can still signal), its sessions stay as
    # they are, and the meeting's state is not looked at.
    participant = participant_of(ctx, args["meetingId"])
    ctx.store.run(
        "UPDATE participants SET presence = 'left', left_at = ? WHERE id = ?",
        (now_ms(), participant["id"]),
    )
    return {"success": True}


def get_meeting_connection_info(ctx: Context, args: Args) -> dict[str, Any]:
    participant_of(ctx, args["meetingId"])
    meeting = meeting_of(ctx, args["meetingId"])
    if meeting["state"] != "active":
        raise errors.validation("Meeting is not active")
    return {
        "success": True,
        "videoProvider": "webrtc",
        "connectionInfo": {"roomId": room_id(args["meetingId"]), "iceServers": ctx.ice_servers},
        "features": dict(FEATURES),
    }


FUNCTIONS: FunctionMap = {
    "meetings/lifecycle/createMeeting": mutation(
        v.object(
            {
                "organizerId": v.optional(v.id("users")),
                "title": v.string(),
                "description": v.optional(v.string()),
                "scheduledAt": v.optional(v.number()),
                "duration": v.optional(v.number()),
                "participantEmails": v.optional(v.array(v.string())),
                "recordingEnabled": v.optional(v.boolean()),
                "transcriptionEnabled": v.optional(v.boolean()),
                "maxParticipants": v.optional(v.number()),
                "meetingType": v.optional(
                    v.literals("one-on-one", "small-group", "large-meeting", "webinar")
                ),
            }
        ),
        create_meeting,
    ),
    "meetings/lifecycle/addParticipant": mutation(
        v.object(
            {
                "meetingId": v.id("meetings"),
                "userId": v.id("users"),
                "role": v.literals("host", "co-host", "participant", "observer"),
            }
        ),
        add_participant,
    ),
    "meetings/lifecycle/startMeeting": mutation(MEETING_ONLY, start_meeting),
    "meetings/lifecycle/endMeeting": mutation(MEETING_ONLY, end_meeting),
    "meetings/lifecycle/joinMeeting": mutation(MEETING_ONLY, join_meeting),
    "meetings/lifecycle/leaveMeeting": mutation(MEETING_ONLY, leave_meeting),
    # A mutation in Connvo, though it changes nothing.
    "meetings/lifecycle/getMeetingConnectionInfo": mutation(
        MEETING_ONLY, get_meeting_connection_info
    ),
}
