"""The service's bots, in SQLite: requests, states and their history, what each bot saw.

The tables share one file (and its transactions) with the webhook outbox, so that a state
change and its `bot.state_changed` event are written together or not at all: after a crash,
neither is lost nor sent without the other. The file holds tokens and webhook secrets: it is
created readable by its owner only.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.service.models import (
    FINAL_STATES,
    Bot,
    BotState,
    Connection,
    ParticipantSeen,
    RecordedFile,
    StateChange,
    TranscriptCounts,
    TranscriptEntry,
)
from agent.service.webhooks import WebhookOutbox

SCHEMA = """
CREATE TABLE IF NOT EXISTS bots (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT NOT NULL,
    request TEXT NOT NULL,          -- the request as taken, token included
    meeting_id TEXT NOT NULL,
    role TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    media_connected INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    worker TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    manifest TEXT
);
CREATE INDEX IF NOT EXISTS bots_by_state ON bots (state);
CREATE TABLE IF NOT EXISTS bot_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    bot_id TEXT NOT NULL,
    state TEXT NOT NULL,
    at REAL NOT NULL,
    reason TEXT,
    detail TEXT,
    worker TEXT
);
CREATE INDEX IF NOT EXISTS history_by_bot ON bot_history (bot_id, seq);
CREATE TABLE IF NOT EXISTS bot_participants (
    bot_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    display_name TEXT,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    present INTEGER NOT NULL,
    PRIMARY KEY (bot_id, user_id)
);
CREATE TABLE IF NOT EXISTS bot_connections (
    bot_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    state TEXT NOT NULL,
    rtt_ms REAL,
    packets_received INTEGER NOT NULL DEFAULT 0,
    packets_lost INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    PRIMARY KEY (bot_id, session_id)
);
CREATE TABLE IF NOT EXISTS bot_files (
    bot_id TEXT NOT NULL,
    path TEXT NOT NULL,
    user_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    duration_s REAL NOT NULL,
    error TEXT,
    PRIMARY KEY (bot_id, path)
);
CREATE TABLE IF NOT EXISTS bot_transcript (
    bot_id TEXT NOT NULL,
    chunk_id TEXT NOT NULL,
    sequence INTEGER,
    speaker_id TEXT NOT NULL,
    text TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    language TEXT,
    confidence REAL,
    PRIMARY KEY (bot_id, chunk_id)
);
"""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request."""


@dataclass(frozen=True)
class BotRow:
    """A bot as the controller needs it (the request includes the token: never answer it)."""

    id: str
    request: dict[str, Any]
    meeting_id: str
    role: str
    state: BotState
    reason: str | None
    worker: str | None
    attempt: int
    created_at: float

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def webhook(self) -> tuple[str, str] | None:
        hook = self.request.get("webhook")
        if not hook:
            return None
        return str(hook["url"]), str(hook["secret"])


_ROW = "id, request, meeting_id, role, state, reason, worker, attempt, created_at"


class BotStore:
    def __init__(self, outbox: WebhookOutbox, *, clock: Callable[[], float] = time.time) -> None:
        self.outbox = outbox
        self.clock = clock
        with outbox.transaction() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    # --- bots ----------------------------------------------------------------------------------

    def create(
        self, request: dict[str, Any], request_hash: str, idempotency_key: str | None
    ) -> tuple[BotRow, bool]:
        """The new bot, queued (True); or the one created before with this key (False).
        IdempotencyConflict if the key came with another request."""
        with self.outbox.transaction() as db:
            if idempotency_key is not None:
                row = db.execute(
                    f"SELECT {_ROW}, request_hash FROM bots WHERE idempotency_key = ?",
                    (idempotency_key,),
                ).fetchone()
                if row is not None:
                    if row[-1] != request_hash:
                        raise IdempotencyConflict(idempotency_key)
                    return _bot_row(row[:-1]), False
            now = self.clock()
            bot_id = f"bot_{uuid.uuid4().hex}"
            db.execute(
                "INSERT INTO bots (id, idempotency_key, request_hash, request, meeting_id, role,"
                " state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    bot_id,
                    idempotency_key,
                    request_hash,
                    json.dumps(request),
                    request["meeting_id"],
                    request.get("role", "bot"),
                    BotState.QUEUED.value,
                    now,
                    now,
                ),
            )
            db.execute(
                "INSERT INTO bot_history (bot_id, state, at) VALUES (?, ?, ?)",
                (bot_id, BotState.QUEUED.value, now),
            )
            bot = self.get_row(bot_id)
            assert bot is not None
            return bot, True

    def get_row(self, bot_id: str) -> BotRow | None:
        rows = self.outbox.read(f"SELECT {_ROW} FROM bots WHERE id = ?", (bot_id,))
        return _bot_row(rows[0]) if rows else None

    def rows(self, states: frozenset[BotState] | None = None) -> list[BotRow]:
        rows = self.outbox.read(f"SELECT {_ROW} FROM bots ORDER BY created_at")
        bots = [_bot_row(r) for r in rows]
        return [b for b in bots if states is None or b.state in states]

    def set_state(
        self,
        bot_id: str,
        state: BotState,
        reason: str | None = None,
        detail: str | None = None,
        *,
        worker: str | None = None,
        attempt: int | None = None,
        at: float | None = None,
    ) -> None:
        """Record a state change (history too); the caller enqueues its webhook in the same
        transaction. `at`: when it happened (a worker's clock), if not now; the history keeps
        its order and never runs ahead of this clock (a worker's clock may be off)."""
        with self.outbox.transaction() as conn:
            now = self.clock()
            when = now if at is None else min(at, now)
            (last,) = conn.execute(
                "SELECT MAX(at) FROM bot_history WHERE bot_id = ?", (bot_id,)
            ).fetchone()
            if last is not None:
                when = max(when, last)
            conn.execute(
                "UPDATE bots SET state = ?, reason = ?, updated_at = ?,"
                " worker = COALESCE(?, worker), attempt = COALESCE(?, attempt) WHERE id = ?",
                (state.value, reason, now, worker, attempt, bot_id),
            )
            conn.execute(
                "INSERT INTO bot_history (bot_id, state, at, reason, detail, worker)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (bot_id, state.value, when, reason, detail, worker),
            )

    def assign(self, bot_id: str, worker: str | None, attempt: int) -> None:
        with self.outbox.transaction() as db:
            db.execute(
                "UPDATE bots SET worker = ?, attempt = ?, updated_at = ? WHERE id = ?",
                (worker, attempt, self.clock(), bot_id),
            )

    def losses(self, bot_id: str) -> int:
        """How often the bot was queued again because its worker was lost."""
        rows = self.outbox.read(
            "SELECT COUNT(*) FROM bot_history WHERE bot_id = ? AND state = ? AND reason = ?",
            (bot_id, BotState.QUEUED.value, "worker_lost"),
        )
        return int(rows[0][0])

    def set_error(self, bot_id: str, message: str) -> None:
        with self.outbox.transaction() as db:
            db.execute("UPDATE bots SET last_error = ? WHERE id = ?", (message[:2000], bot_id))

    def set_media_connected(self, bot_id: str) -> bool:
        """True the first time."""
        with self.outbox.transaction() as db:
            cursor = db.execute(
                "UPDATE bots SET media_connected = 1 WHERE id = ? AND media_connected = 0",
                (bot_id,),
            )
            return cursor.rowcount == 1

    # --- what a bot saw ------------------------------------------------------------------------

    def participant(
        self, bot_id: str, user_id: str, display_name: str | None, present: bool, at: float
    ) -> bool:
        """Record a participant's presence; True if it changed (worth a webhook)."""
        with self.outbox.transaction() as db:
            row = db.execute(
                "SELECT present FROM bot_participants WHERE bot_id = ? AND user_id = ?",
                (bot_id, user_id),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO bot_participants VALUES (?, ?, ?, ?, ?, ?)",
                    (bot_id, user_id, display_name, at, at, int(present)),
                )
                return present
            db.execute(
                "UPDATE bot_participants SET present = ?, last_seen = ?,"
                " display_name = COALESCE(?, display_name) WHERE bot_id = ? AND user_id = ?",
                (int(present), at, display_name, bot_id, user_id),
            )
            return bool(row[0]) != present

    def connection(self, bot_id: str, data: dict[str, Any], at: float) -> None:
        with self.outbox.transaction() as db:
            db.execute(
                "INSERT INTO bot_connections (bot_id, session_id, user_id, state, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (bot_id, session_id) DO UPDATE SET"
                " state = COALESCE(excluded.state, state), updated_at = excluded.updated_at",
                (bot_id, data["session_id"], data["user_id"], data.get("state") or "connected", at),
            )
            if "packets_received" in data:
                db.execute(
                    "UPDATE bot_connections SET rtt_ms = ?, packets_received = ?,"
                    " packets_lost = ? WHERE bot_id = ? AND session_id = ?",
                    (
                        data.get("rtt_ms"),
                        int(data["packets_received"]),
                        int(data.get("packets_lost") or 0),
                        bot_id,
                        data["session_id"],
                    ),
                )

    def transcript_chunk(self, bot_id: str, data: dict[str, Any]) -> bool:
        """Store a chunk; False if it was stored before (a retry of the same chunk)."""
        with self.outbox.transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO bot_transcript VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    bot_id,
                    data["chunk_id"],
                    data.get("sequence"),
                    data["speaker_id"],
                    data["text"],
                    int(data["start_ms"]),
                    int(data["end_ms"]),
                    data.get("language"),
                    data.get("confidence"),
                ),
            )
            return cursor.rowcount == 1

    def files(self, bot_id: str, manifest: str, files: list[dict[str, Any]]) -> None:
        with self.outbox.transaction() as db:
            db.execute("UPDATE bots SET manifest = ? WHERE id = ?", (manifest, bot_id))
            for f in files:
                db.execute(
                    "INSERT OR REPLACE INTO bot_files VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        bot_id,
                        f["path"],
                        f["user_id"],
                        f["session_id"],
                        f["kind"],
                        float(f["duration_s"]),
                        f.get("error"),
                    ),
                )

    def manifest(self, bot_id: str) -> str | None:
        rows = self.outbox.read("SELECT manifest FROM bots WHERE id = ?", (bot_id,))
        return rows[0][0] if rows else None

    # --- answers -------------------------------------------------------------------------------

    def view(self, bot_id: str) -> Bot | None:
        rows = self.outbox.read(
            "SELECT id, request, meeting_id, role, state, reason, media_connected, created_at,"
            " updated_at, worker, attempt, last_error FROM bots WHERE id = ?",
            (bot_id,),
        )
        if not rows:
            return None
        (id_, request, meeting_id, role, state, reason, media, created, updated, worker,
         attempt, last_error) = rows[0]  # fmt: skip
        read = self.outbox.read
        history = [
            StateChange(state=BotState(s), at=at, reason=r, detail=d, worker=w)
            for s, at, r, d, w in read(
                "SELECT state, at, reason, detail, worker FROM bot_history WHERE bot_id = ?"
                " ORDER BY seq",
                (bot_id,),
            )
        ]
        participants = [
            ParticipantSeen(
                user_id=u, display_name=n, first_seen=f, last_seen=last, present=bool(p)
            )
            for u, n, f, last, p in read(
                "SELECT user_id, display_name, first_seen, last_seen, present"
                " FROM bot_participants WHERE bot_id = ? ORDER BY first_seen",
                (bot_id,),
            )
        ]
        connections = [
            Connection(
                session_id=s,
                user_id=u,
                state=st,
                rtt_ms=rtt,
                packets_received=pr,
                packets_lost=pl,
                updated_at=at,
            )
            for s, u, st, rtt, pr, pl, at in read(
                "SELECT session_id, user_id, state, rtt_ms, packets_received, packets_lost,"
                " updated_at FROM bot_connections WHERE bot_id = ? ORDER BY updated_at",
                (bot_id,),
            )
        ]
        files = [
            RecordedFile(user_id=u, session_id=s, kind=k, path=p, duration_s=d, error=e)
            for p, u, s, k, d, e in read(
                "SELECT path, user_id, session_id, kind, duration_s, error FROM bot_files"
                " WHERE bot_id = ? ORDER BY path",
                (bot_id,),
            )
        ]
        chunks, speakers = read(
            "SELECT COUNT(*), COUNT(DISTINCT speaker_id) FROM bot_transcript WHERE bot_id = ?",
            (bot_id,),
        )[0]
        return Bot(
            id=id_,
            meeting_id=meeting_id,
            role=role,
            state=BotState(state),
            reason=reason,
            media_connected=bool(media),
            created_at=created,
            updated_at=updated,
            worker=worker,
            attempt=attempt,
            metadata=json.loads(request).get("metadata") or {},
            history=history,
            participants=participants,
            connections=connections,
            files=files,
            transcript=TranscriptCounts(chunks=chunks, speakers=speakers),
            last_error=last_error,
        )

    def ids(
        self, state: BotState | None = None, limit: int = 100, after: str | None = None
    ) -> list[str]:
        """Bot ids, oldest first (by creation, then id), optionally in one state, after the bot
        `after` (a page's last id: the next page; an unknown id gives nothing)."""
        where, args = ["1"], []
        if state is not None:
            where.append("state = ?")
            args.append(state.value)
        if after is not None:
            where.append("(created_at, id) > (SELECT created_at, id FROM bots WHERE id = ?)")
            args.append(after)
        rows = self.outbox.read(
            f"SELECT id FROM bots WHERE {' AND '.join(where)} ORDER BY created_at, id LIMIT ?",
            (*args, limit),
        )
        return [r[0] for r in rows]

    def transcript(self, bot_id: str) -> list[TranscriptEntry]:
        names = dict(
            self.outbox.read(
                "SELECT user_id, display_name FROM bot_participants WHERE bot_id = ?", (bot_id,)
            )
        )
        return [
            TranscriptEntry(
                sequence=seq,
                speaker_id=speaker,
                speaker_name=names.get(speaker),
                text=text,
                start_ms=start,
                end_ms=end,
                language=lang,
                confidence=conf,
            )
            for seq, speaker, text, start, end, lang, conf in self.outbox.read(
                "SELECT sequence, speaker_id, text, start_ms, end_ms, language, confidence"
                " FROM bot_transcript WHERE bot_id = ? ORDER BY start_ms, sequence",
                (bot_id,),
            )
        ]

    def counts_by_state(self) -> dict[str, int]:
        return dict(self.outbox.read("SELECT state, COUNT(*) FROM bots GROUP BY state"))


def _bot_row(row: tuple[Any, ...]) -> BotRow:
    id_, request, meeting_id, role, state, reason, worker, attempt, created = row
    return BotRow(
        id_, json.loads(request), meeting_id, role, BotState(state), reason, worker, attempt,
        created,
    )  # fmt: skip
