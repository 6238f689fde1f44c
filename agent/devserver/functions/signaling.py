"""`meetings/webrtc/signaling/*`, including both deployed generations of getPendingSignals and
markSignalsProcessed (see docs/devserver.md)."""

from __future__ import annotations

import json
from typing import Any

from agent.devserver.functions.base import (
    Context,
    FunctionError,
    HandlerMap,
    participant_of,
    require_active,
    user_summary,
)
from agent.devserver.store import Row, now_ms
from agent.signaling.models import (
    ERR_FORBIDDEN,
    ERR_NOT_FOUND,
    CloseSessionArgs,
    CreateWebRTCSessionArgs,
    ExchangeICECandidateArgs,
    ExchangeSessionDescriptionArgs,
    GetActiveSessionsArgs,
    GetPendingSignalsArgs,
    MarkSignalsProcessedArgs,
    UpdateSessionStateArgs,
)

PAGE_SIZE = 50
GEN1_SCAN = 200  # generation 1 reads this many oldest unprocessed signals before filtering
ACTIVE_STATES = ("connecting", "connected", "disconnected")


def _session_not_found() -> FunctionError:
    return FunctionError(ERR_NOT_FOUND, "WebRTC session not found")


def create_webrtc_session(ctx: Context, args: CreateWebRTCSessionArgs) -> dict[str, Any]:
    meeting, _ = participant_of(ctx, args.meetingId)
    require_active(meeting)
    existing = ctx.store.session(args.meetingId, args.sessionId)
    now = now_ms()
    if existing is not None:
        if existing["user_id"] != ctx.user_id:
            raise FunctionError(ERR_FORBIDDEN, "Session ID is in use by another participant")
        # Idempotent; a closed/failed session created again is live again (a reconnect).
        if existing["state"] in ("closed", "failed"):
            ctx.store.run(
                "UPDATE sessions SET state = 'connecting', updated_at = ? WHERE id = ?",
                (now, existing["id"]),
            )
        return {"sessionId": args.sessionId, "success": True}
    ctx.store.run(
        "INSERT INTO sessions (id, meeting_id, user_id, session_id, state, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, 'connecting', ?, ?)",
        (ctx.store.new_id("webrtcSessions"), args.meetingId, ctx.user_id, args.sessionId, now, now),
    )
    return {"sessionId": args.sessionId, "success": True}


def _insert_signal(
    ctx: Context,
    meeting_id: str,
    session_id: str,
    target: str | None,
    kind: str,
    data: dict[str, Any],
) -> None:
    meeting, _ = participant_of(ctx, meeting_id)
    require_active(meeting)
    # Like the real backend, the sender's `sessionId` is not checked against its session rows:
    # `fromUserId` is the only trustworthy sender identity, and clients must check it.
    if target is not None and ctx.store.participant(meeting_id, target) is None:
        raise FunctionError(ERR_NOT_FOUND, "Target user is not a participant of this meeting")
    ctx.store.insert_signal(meeting_id, session_id, ctx.user_id, target, kind, data)


def exchange_session_description(ctx: Context, args: ExchangeSessionDescriptionArgs) -> None:
    data = args.description.model_dump(exclude_none=True)
    _insert_signal(ctx, args.meetingId, args.sessionId, args.targetUserId, "sdp", data)


def exchange_ice_candidate(ctx: Context, args: ExchangeICECandidateArgs) -> None:
    data = args.candidate.model_dump(exclude_none=True)
    _insert_signal(ctx, args.meetingId, args.sessionId, args.targetUserId, "ice", data)


def _signal_doc(row: Row) -> dict[str, Any]:
    return {
        "_id": row["id"],
        "sessionId": row["session_id"],
        "fromUserId": row["from_user_id"],
        "type": row["type"],
        "data": json.loads(row["data"]),
        "timestamp": row["timestamp"],
    }


def _pending_gen1(ctx: Context, args: GetPendingSignalsArgs) -> list[Row]:
    # Reproduces the published main branch: take the oldest 200 unprocessed direct signals, *then*
    # filter. Stale signals in front starve newer ones until they are acknowledged.
    rows = ctx.store.all(
        "SELECT * FROM signals WHERE meeting_id = ? AND to_user_id = ? AND processed = 0"
        " ORDER BY seq LIMIT ?",
        (args.meetingId, ctx.user_id, GEN1_SCAN),
    )
    if args.sessionId is not None:
        rows = [r for r in rows if r["session_id"] == args.sessionId]
    if args.lastSignalId is not None:
        cursor = args.lastSignalId
        rows = [r for r in rows if r["id"] > cursor]  # plain string comparison, as in JS
    return rows[:PAGE_SIZE]


def _pending_gen2(ctx: Context, args: GetPendingSignalsArgs) -> list[Row]:
    # Direct signals (per sender session when filtered) merged with broadcasts from other users that
    # this caller has not acknowledged; sorted by _id as a string, then the cursor, then the cap.
    # SQLite's default BINARY collation compares these ASCII IDs like JavaScript does.
    session_clause = "" if args.sessionId is None else " AND s.session_id = :session"
    cursor_clause = "" if args.lastSignalId is None else " AND s.id > :cursor"
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
        "meeting": args.meetingId,
        "me": ctx.user_id,
        "session": args.sessionId,
        "cursor": args.lastSignalId,
        "limit": PAGE_SIZE,
    }
    return list(ctx.store.conn.execute(sql, params).fetchall())


def get_pending_signals(ctx: Context, args: GetPendingSignalsArgs) -> list[dict[str, Any]]:
    participant_of(ctx, args.meetingId)
    rows = _pending_gen1(ctx, args) if ctx.generation == 1 else _pending_gen2(ctx, args)
    docs = [_signal_doc(r) for r in rows]
    if ctx.generation == 2:
        # Extension: generation 2 mixes direct and broadcast rows, so each row says which it is
        # (null = broadcast). The published result shape has no field for it.
        for doc, row in zip(docs, rows, strict=True):
            doc["toUserId"] = row["to_user_id"]
    return docs


def _mark_gen1(ctx: Context, args: MarkSignalsProcessedArgs) -> None:
    # Signals addressed to the caller are marked; every other id is silently ignored.
    for signal_id in dict.fromkeys(args.signalIds):
        ctx.store.run(
            "UPDATE signals SET processed = 1 WHERE id = ? AND to_user_id = ?",
            (signal_id, ctx.user_id),
        )


def _mark_gen2(ctx: Context, args: MarkSignalsProcessedArgs) -> None:
    # Check everything first: one bad id fails the whole call with nothing applied.
    direct: list[str] = []
    broadcast: list[str] = []
    for signal_id in dict.fromkeys(args.signalIds):
        row = ctx.store.one(
            "SELECT id, meeting_id, to_user_id FROM signals WHERE id = ?", (signal_id,)
        )
        if row is None:
            raise FunctionError(ERR_NOT_FOUND, "Signal not found", signalId=signal_id)
        if row["to_user_id"] is None:
            if ctx.store.participant(row["meeting_id"], ctx.user_id) is None:
                raise FunctionError(
                    ERR_FORBIDDEN,
                    "Cannot acknowledge a signal of another meeting",
                    signalId=signal_id,
                )
            broadcast.append(signal_id)
        elif row["to_user_id"] != ctx.user_id:
            raise FunctionError(
                ERR_FORBIDDEN,
                "Cannot acknowledge a signal addressed to another user",
                signalId=signal_id,
            )
        else:
            direct.append(signal_id)
    now = now_ms()
    for signal_id in direct:
        ctx.store.run("UPDATE signals SET processed = 1 WHERE id = ?", (signal_id,))
    for signal_id in broadcast:
        ctx.store.run(
            "INSERT OR IGNORE INTO signal_acks (signal_id, user_id, acked_at) VALUES (?, ?, ?)",
            (signal_id, ctx.user_id, now),
        )


def mark_signals_processed(ctx: Context, args: MarkSignalsProcessedArgs) -> None:
    if ctx.generation == 1:
        _mark_gen1(ctx, args)
    else:
        _mark_gen2(ctx, args)


def _own_session(ctx: Context, meeting_id: str, session_id: str) -> Row:
    participant_of(ctx, meeting_id)
    session = ctx.store.session(meeting_id, session_id)
    if session is None or session["user_id"] != ctx.user_id:
        raise _session_not_found()
    return session


def update_session_state(ctx: Context, args: UpdateSessionStateArgs) -> None:
    session = _own_session(ctx, args.meetingId, args.sessionId)
    metadata = session["metadata"] if args.metadata is None else json.dumps(args.metadata)
    ctx.store.run(
        "UPDATE sessions SET state = ?, metadata = ?, updated_at = ? WHERE id = ?",
        (args.state, metadata, now_ms(), session["id"]),
    )


def get_active_sessions(ctx: Context, args: GetActiveSessionsArgs) -> list[dict[str, Any]]:
    participant_of(ctx, args.meetingId)
    rows = ctx.store.all(
        "SELECT s.*, u.display_name AS user_display_name FROM sessions s"
        " JOIN users u ON u.id = s.user_id WHERE s.meeting_id = ? AND s.state IN (?, ?, ?)"
        " ORDER BY s.seq",
        (args.meetingId, *ACTIVE_STATES),
    )
    result = []
    for r in rows:
        doc: dict[str, Any] = {
            "_id": r["id"],
            "_creationTime": r["created_at"],
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


def close_session(ctx: Context, args: CloseSessionArgs) -> None:
    session = _own_session(ctx, args.meetingId, args.sessionId)
    ctx.store.run(
        "UPDATE sessions SET state = 'closed', updated_at = ? WHERE id = ?",
        (now_ms(), session["id"]),
    )


HANDLERS: HandlerMap = {
    "meetings/webrtc/signaling/createWebRTCSession": create_webrtc_session,
    "meetings/webrtc/signaling/exchangeSessionDescription": exchange_session_description,
    "meetings/webrtc/signaling/exchangeICECandidate": exchange_ice_candidate,
    "meetings/webrtc/signaling/getPendingSignals": get_pending_signals,
    "meetings/webrtc/signaling/markSignalsProcessed": mark_signals_processed,
    "meetings/webrtc/signaling/updateSessionState": update_session_state,
    "meetings/webrtc/signaling/getActiveSessions": get_active_sessions,
    "meetings/webrtc/signaling/closeSession": close_session,
}
