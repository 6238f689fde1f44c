"""`transcripts/ingestion/ingestTranscriptChunk`, rate limited per user in fixed windows."""

from __future__ import annotations

from typing import Any

from agent.devserver.functions.base import (
    Context,
    FunctionError,
    HandlerMap,
    participant_of,
    require_active,
)
from agent.devserver.store import now_ms
from agent.signaling.models import ERR_BAD_ARGS, ERR_RATE_LIMITED, IngestTranscriptChunkArgs

# A fixed window per user: 60 chunks in each 60-second bucket (bucket = floor(now / 60 s)). A
# transcriber emitting one final chunk per utterance stays well below it; a runaway loop does not.
RATE_LIMIT_CHUNKS = 60
RATE_LIMIT_WINDOW_MS = 60_000


def ingest_transcript_chunk(ctx: Context, args: IngestTranscriptChunkArgs) -> dict[str, Any]:
    meeting, _ = participant_of(ctx, args.meetingId)
    require_active(meeting)
    if args.endTime < args.startTime:
        raise FunctionError(ERR_BAD_ARGS, "endTime must not be before startTime")
    now = now_ms()
    bucket = now - now % RATE_LIMIT_WINDOW_MS
    row = ctx.store.one(
        "SELECT count FROM rate_limits WHERE user_id = ? AND bucket_ms = ?",
        (ctx.user_id, bucket),
    )
    used = 0 if row is None else int(row["count"])
    if used >= RATE_LIMIT_CHUNKS:
        raise FunctionError(
            ERR_RATE_LIMITED,
            "Rate limit exceeded for transcript ingestion",
            retryAfterMs=bucket + RATE_LIMIT_WINDOW_MS - now,
            bucketMs=bucket,
        )
    ctx.store.run(
        "INSERT INTO rate_limits (user_id, bucket_ms, count) VALUES (?, ?, 1)"
        " ON CONFLICT (user_id, bucket_ms) DO UPDATE SET count = count + 1",
        (ctx.user_id, bucket),
    )
    sequence = int(meeting["transcript_seq"]) + 1
    ctx.store.run("UPDATE meetings SET transcript_seq = ? WHERE id = ?", (sequence, args.meetingId))
    ctx.store.run(
        "INSERT INTO transcripts (id, meeting_id, user_id, speaker_id, text, confidence,"
        " start_time, end_time, language, is_interim, sequence, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            ctx.store.new_id("transcripts"),
            args.meetingId,
            ctx.user_id,
            args.speakerId,
            args.text,
            args.confidence,
            args.startTime,
            args.endTime,
            args.language,
            int(bool(args.isInterim)),
            sequence,
            now,
        ),
    )
    return {
        "success": True,
        "sequence": sequence,
        "bucketMs": bucket,
        "rateLimitRemaining": RATE_LIMIT_CHUNKS - used - 1,
    }


HANDLERS: HandlerMap = {
    "transcripts/ingestion/ingestTranscriptChunk": ingest_transcript_chunk,
}
