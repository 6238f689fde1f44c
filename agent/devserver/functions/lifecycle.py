"""`meetings/lifecycle/*`: meetings, participants, presence and connection info."""

from __future__ import annotations

from typing import Any

from agent.devserver.functions.base import (
    Context,
    FunctionError,
    HandlerMap,
    meeting_of,
    participant_of,
    require_active,
    require_host,
)
from agent.devserver.store import Row, now_ms
from agent.signaling.models import (
    ERR_BAD_ARGS,
    ERR_FORBIDDEN,
    ERR_MEETING_NOT_ACTIVE,
    ERR_NOT_FOUND,
    AddParticipantArgs,
    CreateMeetingArgs,
    MeetingArgs,
)

DEFAULT_MAX_PARTICIPANTS = 100  # reported in `features`, not enforced
ENDED_STATES = ("concluded", "cancelled")


def features(meeting: Row) -> dict[str, Any]:
    return {
        "recording": bool(meeting["recording_enabled"]),
        "transcription": bool(meeting["transcription_enabled"]),
        "maxParticipants": meeting["max_participants"],
    }


def room_id(meeting_id: str) -> str:
    return f"webrtc_{meeting_id}"


def create_meeting(ctx: Context, args: CreateMeetingArgs) -> dict[str, Any]:
    if args.organizerId is not None and args.organizerId != ctx.user_id:
        raise FunctionError(ERR_FORBIDDEN, "organizerId must be the caller")
    meeting_id = ctx.store.insert_meeting(
        ctx.user_id,
        args.title,
        "scheduled",
        description=args.description,
        scheduled_at=args.scheduledAt,
        duration=args.duration,
        recording_enabled=bool(args.recordingEnabled),
        transcription_enabled=args.transcriptionEnabled is not False,
        meeting_type=args.meetingType,
        max_participants=args.maxParticipants or DEFAULT_MAX_PARTICIPANTS,
    )
    ctx.store.insert_participant(meeting_id, ctx.user_id, "host")
    # Invitations by email: existing users become participants; unknown addresses are ignored
    # (the real backend would email them).
    for email in dict.fromkeys(args.participantEmails or []):
        user = ctx.store.user_by_email(email)
        if user is not None and ctx.store.participant(meeting_id, user["id"]) is None:
            ctx.store.insert_participant(meeting_id, user["id"], "participant")
    meeting = meeting_of(ctx, meeting_id)
    return {
        "meetingId": meeting_id,
        "webrtcReady": True,
        "videoProvider": "webrtc",
        "features": features(meeting),
    }


def add_participant(ctx: Context, args: AddParticipantArgs) -> dict[str, Any]:
    meeting = require_host(ctx, args.meetingId)
    if meeting["state"] in ENDED_STATES:
        raise FunctionError(
            ERR_MEETING_NOT_ACTIVE,
            f"Cannot add participants to a {meeting['state']} meeting",
            state=meeting["state"],
        )
    if ctx.store.user(args.userId) is None:
        raise FunctionError(ERR_NOT_FOUND, "User not found", userId=args.userId)
    if ctx.store.participant(args.meetingId, args.userId) is not None:
        raise FunctionError(ERR_BAD_ARGS, "User is already a participant of this meeting")
    participant_id = ctx.store.insert_participant(args.meetingId, args.userId, args.role)
    ctx.store.run("UPDATE meetings SET updated_at = ? WHERE id = ?", (now_ms(), args.meetingId))
    return {"participantId": participant_id, "success": True}


def start_meeting(ctx: Context, args: MeetingArgs) -> dict[str, Any]:
    meeting = require_host(ctx, args.meetingId)
    if meeting["state"] in ENDED_STATES:
        raise FunctionError(
            ERR_MEETING_NOT_ACTIVE,
            f"Cannot start a {meeting['state']} meeting",
            state=meeting["state"],
        )
    if meeting["state"] != "active":  # starting an active meeting again is a no-op
        now = now_ms()
        ctx.store.run(
            "UPDATE meetings SET state = 'active', started_at = ?, updated_at = ? WHERE id = ?",
            (now, now, args.meetingId),
        )
    return {
        "success": True,
        "webrtcReady": True,
        "videoProvider": "webrtc",
        "roomInfo": {"roomId": room_id(args.meetingId), "iceServers": ctx.ice_servers},
    }


def end_meeting(ctx: Context, args: MeetingArgs) -> dict[str, Any]:
    meeting = require_host(ctx, args.meetingId)
    require_active(meeting)
    now = now_ms()
    ctx.store.run(
        "UPDATE meetings SET state = 'concluded', ended_at = ?, updated_at = ? WHERE id = ?",
        (now, now, args.meetingId),
    )
    ctx.store.run(
        "UPDATE sessions SET state = 'closed', updated_at = ? WHERE meeting_id = ?"
        " AND state != 'closed'",
        (now, args.meetingId),
    )
    return {"success": True, "duration": now - (meeting["started_at"] or meeting["created_at"])}


def join_meeting(ctx: Context, args: MeetingArgs) -> dict[str, Any]:
    meeting, participant = participant_of(ctx, args.meetingId)
    require_active(meeting)
    ctx.store.run(
        "UPDATE participants SET presence = 'joined', joined_at = ?, left_at = NULL WHERE id = ?",
        (now_ms(), participant["id"]),
    )
    return {"success": True, "webrtcReady": True}


def leave_meeting(ctx: Context, args: MeetingArgs) -> dict[str, Any]:
    _, participant = participant_of(ctx, args.meetingId)
    now = now_ms()
    ctx.store.run(
        "UPDATE participants SET presence = 'left', left_at = ? WHERE id = ?",
        (now, participant["id"]),
    )
    ctx.store.run(
        "UPDATE sessions SET state = 'closed', updated_at = ? WHERE meeting_id = ? AND user_id = ?"
        " AND state != 'closed'",
        (now, args.meetingId, ctx.user_id),
    )
    return {"success": True}


def get_meeting_connection_info(ctx: Context, args: MeetingArgs) -> dict[str, Any]:
    meeting, _ = participant_of(ctx, args.meetingId)
    require_active(meeting)
    return {
        "success": True,
        "videoProvider": "webrtc",
        "connectionInfo": {"roomId": room_id(args.meetingId), "iceServers": ctx.ice_servers},
        "features": features(meeting),
    }


HANDLERS: HandlerMap = {
    "meetings/lifecycle/createMeeting": create_meeting,
    "meetings/lifecycle/addParticipant": add_participant,
    "meetings/lifecycle/startMeeting": start_meeting,
    "meetings/lifecycle/endMeeting": end_meeting,
    "meetings/lifecycle/joinMeeting": join_meeting,
    "meetings/lifecycle/leaveMeeting": leave_meeting,
    "meetings/lifecycle/getMeetingConnectionInfo": get_meeting_connection_info,
}
