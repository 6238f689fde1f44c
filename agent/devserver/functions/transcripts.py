"""`transcripts/ingestion/ingestTranscriptChunk`, rate limited per user in fixed windows."""

from __future__ import annotations

import math
from typing import Any

from agent.devserver import errors
from agent.devserver.functions.base import Args, Context, FunctionMap, mutation, participant_of
from agent.devserver.store import now_ms
from agent.devserver.validators import v

# Connvo allows 50 chunks per minute per user (`--transcript-rate-limit` changes it). The dev
# backend counts them in fixed windows (window = floor(now / 60 s)); over the limit, a chunk waits
# for the next window.
RATE_LIMIT_CHUNKS = 50  # Connvo's limit, the default
RATE_LIMIT_WINDOW_MS = 60_000
RATE_LIMIT_ACTION = "transcriptIngestion"
# Chunks are stored in 5-minute buckets of their startTime; `bucketMs` names the chunk's bucket.
STORAGE_BUCKET_MS = 300_000
MAX_TEXT_CHARS = 10_000


def ingest_transcript_chunk(ctx: Context, args: Args) -> dict[str, Any]:
    meeting_id = args["meetingId"]
    participant_of(ctx, meeting_id)
    meeting = ctx.store.meeting(meeting_id)
    if meeting is None or meeting["state"] != "active":
        raise errors.meeting_not_active(meeting_id)
    text: str = args["text"]
    if not text.strip():
        raise errors.validation("Transcript text cannot be empty")
    if not 0 <= args["confidence"] <= 1:
        raise errors.validation("Confidence must be between 0 and 1")
    if args["startTime"] >= args["endTime"]:
        raise errors.validation("Start time must be before end time")
    if len(text) > MAX_TEXT_CHARS:
        raise errors.validation("Transcript text too long (max 10,000 characters)")

    user_id = ctx.user_id
    limit, window_s = ctx.transcript_rate_limit
    window_ms = max(1, round(window_s * 1000))
    now = now_ms()
    window = now - now % window_ms
    row = ctx.store.one(
        "SELECT count FROM rate_limits WHERE user_id = ? AND bucket_ms = ?", (user_id, window)
    )
    if row is not None and int(row["count"]) >= limit:
        # A refused chunk is not counted.
        retry_after_s = max(1, math.ceil((window + window_ms - now) / 1000))
        raise errors.rate_limit_exceeded(RATE_LIMIT_ACTION, limit, retry_after_s)
    ctx.store.run(
        "INSERT INTO rate_limits (user_id, bucket_ms, count) VALUES (?, ?, 1)"
        " ON CONFLICT (user_id, bucket_ms) DO UPDATE SET count = count + 1",
        (user_id, window),
    )

    bucket_ms = math.floor(args["startTime"] / STORAGE_BUCKET_MS) * STORAGE_BUCKET_MS
    sequence = int(meeting["transcript_seq"]) + 1
    ctx.store.run("UPDATE meetings SET transcript_seq = ? WHERE id = ?", (sequence, meeting_id))
    ctx.store.run(
        "INSERT INTO transcripts (id, meeting_id, user_id, speaker_id, text, confidence,"
        " start_time, end_time, language, is_interim, sequence, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            ctx.store.new_id("transcripts"),
            meeting_id,
            user_id,
            args.get("speakerId"),
            text.strip(),
            args["confidence"],
            args["startTime"],
            args["endTime"],
            args.get("language") or "en",
            int(bool(args.get("isInterim"))),
            sequence,
            now,
        ),
    )
    return {
        "success": True,
        "sequence": sequence,
        "bucketMs": bucket_ms,
        # Connvo's limiter does not expose what is left and always answers 0.
        "rateLimitRemaining": 0,
    }


FUNCTIONS: FunctionMap = {
    "transcripts/ingestion/ingestTranscriptChunk": mutation(
        v.object(
            {
                "meetingId": v.id("meetings"),
                "speakerId": v.optional(v.string()),
                "text": v.string(),
                "confidence": v.number(),
                "startTime": v.number(),
                "endTime": v.number(),
                "language": v.optional(v.string()),
                "isInterim": v.optional(v.boolean()),
            }
        ),
        ingest_transcript_chunk,
    ),
}
