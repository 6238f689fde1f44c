"""`meetings/webrtc/signaling/*`, including both deployed generations of getPendingSignals and
markSignalsProcessed (see docs/devserver.md)."""

from __future__ import annotations

import json
from typing import Any

from agent.devserver import errors
from agent.devserver.functions.base import (
    Args,
    Context,
    FunctionMap,
    meeting_of,
    mutation,
    participant_of,
    query,
    user_summary,
)
from agent.devserver.store import Row, now_ms
from agent.devserver.validators import v

PAGE_SIZE = 50
GEN1_SCAN = 200  # generation 1 reads this many oldest unprocessed signals before filtering
ACTIVE_STATES = ("connecting", "connected", "disconnected")

SESSION_STATE = v.literals("connecting", "connected", "disconnected", "failed", "closed")
SDP_DATA = v.object(
    {"type": v.literals("offer", "answer", "pranswer", "rollback"), "sdp": v.string()}
)
ICE_DATA = v.object(
    {
        "candidate": v.string(),
        "sdpMLineIndex": v.optional(v.number()),
        "sdpMid": v.optional(v.string()),
        "usernameFragment": v.optional(v.string()),
    }
)
METADATA = v.record(v.string(), v.union(v.string(), v.number(), v.boolean()))
MEETING_AND_SESSION = v.object({"meetingId": v.id("meetings"), "sessionId": v.string()})


def create_webrtc_session(ctx: Context, args: Args) -> dict[str, Any]:
    meeting_id, session_id = args["meetingId"], args["sessionId"]
    participant_of(ctx, meeting_id)
    meeting = meeting_of(ctx, meeting_id)
    if meeting["state"] != "active":
        raise errors.validation("Cannot create WebRTC session for inactive meeting")
    # Idempotent per (meeting, sessionId) whoever owns the row: another user's session, or one
    # already closed, is answered with success and left exactly as it is.
    if ctx.store.session(meeting_id, session_id) is None:
        now = now_ms()
        ctx.store.run(
            "INSERT INTO sessions (id, meeting_id, user_id, session_id, state, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, 'connecting', ?, ?)",
            (ctx.store.new_id("webrtcSessions"), meeting_id, ctx.user_id, session_id, now, now),
        )
    return {"sessionId": session_id, "success": True}


def _insert_signal(ctx: Context, args: Args, kind: str, data: dict[str, Any]) -> None:
    # As in Connvo: only the caller's participation is checked. Not the meeting's state, not that
    # `sessionId` is one of the caller's sessions, not that the target is a participant;
    # `fromUserId` is the only trustworthy sender identity, and clients must check it.
    participant_of(ctx, args["meetingId"])
    ctx.store.insert_signal(
        args["meetingId"], args["sessionId"], ctx.user_id, args.get("targetUserId"), kind, data
    )


def exchange_session_description(ctx: Context, args: Args) -> None:
    _insert_signal(ctx, args, "sdp", dict(args["description"]))


def exchange_ice_candidate(ctx: Context, args: Args) -> None:
    _insert_signal(ctx, args, "ice", dict(args["candidate"]))


def _signal_doc(row: Row) -> dict[str, Any]:
    # No `toUserId`: Connvo's rows do not say whether a signal was direct or a broadcast.
    return {
        "_id": row["id"],
        "_creationTime": float(row["timestamp"]),
        "sessionId": row["session_id"],
        "fromUserId": row["from_user_id"],
        "type": row["type"],
        "data": json.loads(row["data"]),
        "timestamp": row["timestamp"],
    }


def _pending_gen1(ctx: Context, args: Args) -> list[Row]:
    # Reproduces the published main branch: take the oldest 200 unprocessed direct signals, *then*
    # filter. Stale signals in front starve newer ones until they are acknowledged. (The filters
    # are JavaScript truthiness tests: an empty sessionId filters nothing.)
    rows = ctx.store.all(
        "SELECT * FROM signals WHERE meeting_id = ? AND to_user_id = ? AND processed = 0"
        " ORDER BY seq LIMIT ?",
        (args["meetingId"], ctx.user_id, GEN1_SCAN),
    )
    if session_id := args.get("sessionId"):
        rows = [r for r in rows if r["session_id"] == session_id]
    if cursor := args.get("lastSignalId"):
        rows = [r for r in rows if r["id"] > cursor]  # plain string comparison, as in JS
    return rows[:PAGE_SIZE]


def _pending_gen2(ctx: Context, args: Args) -> list[Row]:
    # Direct signals (per sender session when filtered) merged with broadcasts from other users that
    # this caller has not acknowledged; sorted by _id as a string, then the cursor, then the cap.
    # SQLite's default BINARY collation compares these ASCII IDs like JavaScript does.
    session_id, cursor = args.get("sessionId"), args.get("lastSignalId")
    session_clause = " AND s.session_id = :session" if session_id else ""
    cursor_clause = " AND s.id > :cursor" if cursor else ""
    sql = (
        "SELECT s.* FROM signals s WHERE s.meeting_id = :meeting AND s.to_user_id = :me"
        f" AND s.processed = 0{session_clause}{cursor_clause}"
        " UNION ALL "
        "SELECT s.* FROM signals s WHERE s.meeting_id = :meeting AND s.to_user_id IS NULL"
        f" AND s.from_user_id != :me{session_clause}{cursor_clause}"
        " AND NOT EXISTS (SELECT 1 FROM signal_acks a WHERE a.signal_id = s.id AND a.user_id = :me)"
        " ORDER BY id LIMIT :limit"
    )
    params = {
        "meeting": args["meetingId"],
        "me": ctx.user_id,
        "session": session_id,
        "cursor": cursor,
        "limit": PAGE_SIZE,
    }
    return list(ctx.store.conn.execute(sql, params).fetchall())


def get_pending_signals(ctx: Context, args: Args) -> list[dict[str, Any]]:
    participant_of(ctx, args["meetingId"])
    rows = _pending_gen1(ctx, args) if ctx.generation == 1 else _pending_gen2(ctx, args)
    return [_signal_doc(r) for r in rows]


def _mark_gen1(ctx: Context, signal_ids: list[str]) -> None:
    # Signals addressed to the caller are marked; every other id is silently ignored.
    user_id = ctx.user_id
    for signal_id in dict.fromkeys(signal_ids):
        ctx.store.run(
            "UPDATE signals SET processed = 1 WHERE id = ? AND to_user_id = ?",
            (signal_id, user_id),
        )


def _mark_gen2(ctx: Context, signal_ids: list[str]) -> None:
    # Check everything first: one bad id fails the whole call with nothing applied.
    user_id = ctx.user_id
    direct: list[str] = []
    broadcast: list[str] = []
    for signal_id in dict.fromkeys(signal_ids):
        row = ctx.store.one(
            "SELECT id, meeting_id, to_user_id FROM signals WHERE id = ?", (signal_id,)
        )
        if row is None:
            raise errors.not_found("Signal", signal_id)
        if row["to_user_id"] is None:
            if ctx.store.participant(row["meeting_id"], user_id) is None:
                raise errors.forbidden(
                    "Cannot acknowledge a signal of another meeting", {"signalId": signal_id}
                )
            broadcast.append(signal_id)
        elif row["to_user_id"] != user_id:
            raise errors.forbidden(
                "Cannot acknowledge a signal addressed to another user", {"signalId": signal_id}
            )
        else:
            direct.append(signal_id)
    now = now_ms()
    for signal_id in direct:
        ctx.store.run("UPDATE signals SET processed = 1 WHERE id = ?", (signal_id,))
    for signal_id in broadcast:
        ctx.store.run(
            "INSERT OR IGNORE INTO signal_acks (signal_id, user_id, acked_at) VALUES (?, ?, ?)",
            (signal_id, user_id, now),
        )


def mark_signals_processed(ctx: Context, args: Args) -> None:
    if ctx.generation == 1:
        _mark_gen1(ctx, args["signalIds"])
    else:
        _mark_gen2(ctx, args["signalIds"])


def _own_session(ctx: Context, meeting_id: str, session_id: str) -> Row | None:
    """The caller's session with this id (another user's session with the same id is not it)."""
    participant_of(ctx, meeting_id)
    return ctx.store.one(
        "SELECT * FROM sessions WHERE meeting_id = ? AND user_id = ? AND session_id = ?",
        (meeting_id, ctx.user_id, session_id),
    )


def update_session_state(ctx: Context, args: Args) -> None:
    session = _own_session(ctx, args["meetingId"], args["sessionId"])
    if session is None:
        # Connvo calls createError.notFound("WebRTC session not found"), which appends its own
        # " not found": the message really is "WebRTC session not found not found".
        raise errors.not_found("WebRTC session not found")
    # A patch with `metadata: undefined` removes the field: omitting metadata clears it.
    metadata = args.get("metadata")
    ctx.store.run(
        "UPDATE sessions SET state = ?, metadata = ?, updated_at = ? WHERE id = ?",
        (
            args["state"],
            None if metadata is None else json.dumps(metadata),
            now_ms(),
            session["id"],
        ),
    )


def get_active_sessions(ctx: Context, args: Args) -> list[dict[str, Any]]:
    participant_of(ctx, args["meetingId"])
    # Connvo reads each state through an index and concatenates: connecting sessions first, then
    # connected, then disconnected, each oldest first. Nothing expires.
    rows = ctx.store.all(
        "SELECT s.*, u.display_name AS user_display_name FROM sessions s"
        " JOIN users u ON u.id = s.user_id WHERE s.meeting_id = ? AND s.state IN (?, ?, ?)"
        " ORDER BY CASE s.state WHEN 'connecting' THEN 0 WHEN 'connected' THEN 1 ELSE 2 END,"
        " s.seq",
        (args["meetingId"], *ACTIVE_STATES),
    )
    result = []
    for r in rows:
        doc: dict[str, Any] = {
            "_id": r["id"],
            "_creationTime": float(r["created_at"]),
            "meetingId": r["meeting_id"],
            "sessionId": r["session_id"],
            "userId": r["user_id"],
            "state": r["state"],
            "createdAt": r["created_at"],
            "updatedAt": r["updated_at"],
            "user": user_summary(r["user_id"], r["user_display_name"]),
        }
        if r["metadata"] is not None:
            doc["metadata"] = json.loads(r["metadata"])
        result.append(doc)
    return result


def close_session(ctx: Context, args: Args) -> None:
    # Only the caller's own session can be closed; an unknown id, or another user's, is ignored.
    session = _own_session(ctx, args["meetingId"], args["sessionId"])
    if session is not None:
        ctx.store.run(
            "UPDATE sessions SET state = 'closed', updated_at = ? WHERE id = ?",
            (now_ms(), session["id"]),
        )


FUNCTIONS: FunctionMap = {
    "meetings/webrtc/signaling/createWebRTCSession": mutation(
        MEETING_AND_SESSION, create_webrtc_session
    ),
    "meetings/webrtc/signaling/exchangeSessionDescription": mutation(
        v.object(
            {
                "meetingId": v.id("meetings"),
                "sessionId": v.string(),
                "description": SDP_DATA,
                "targetUserId": v.optional(v.id("users")),
            }
        ),
        exchange_session_description,
    ),
    "meetings/webrtc/signaling/exchangeICECandidate": mutation(
        v.object(
            {
                "meetingId": v.id("meetings"),
                "sessionId": v.string(),
                "candidate": ICE_DATA,
                "targetUserId": v.optional(v.id("users")),
            }
        ),
        exchange_ice_candidate,
    ),
    "meetings/webrtc/signaling/getPendingSignals": query(
        v.object(
            {
                "meetingId": v.id("meetings"),
                "sessionId": v.optional(v.string()),
                "lastSignalId": v.optional(v.id("webrtcSignals")),
            }
        ),
        get_pending_signals,
    ),
    "meetings/webrtc/signaling/markSignalsProcessed": mutation(
        v.object({"signalIds": v.array(v.id("webrtcSignals"))}), mark_signals_processed
    ),
    "meetings/webrtc/signaling/updateSessionState": mutation(
        v.object(
            {
                "meetingId": v.id("meetings"),
                "sessionId": v.string(),
                "state": SESSION_STATE,
                "metadata": v.optional(METADATA),
            }
        ),
        update_session_state,
    ),
    "meetings/webrtc/signaling/getActiveSessions": query(
        v.object({"meetingId": v.id("meetings")}), get_active_sessions
    ),
    "meetings/webrtc/signaling/closeSession": mutation(MEETING_AND_SESSION, close_session),
}
