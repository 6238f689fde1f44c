"""SQLite state of the dev backend: one file in WAL mode, one connection, synchronous calls.

Nothing about users or meetings is cached in memory: the `token`/`meeting` CLI commands write to the
same file while a server runs, and the server must see their rows at once.
"""

from __future__ import annotations

import collections
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.devserver.ids import TABLES, IdMode, make_id

Row = sqlite3.Row
MAX_ID_KEY = 2**64

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- global insertion counter for "ordered" IDs (monotonic because rows are never deleted)
CREATE TABLE IF NOT EXISTS id_seq (n INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS users (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    workos_user_id TEXT NOT NULL UNIQUE,
    email TEXT NOT NULL,
    display_name TEXT,
    is_active INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS users_email ON users (email);
CREATE TABLE IF NOT EXISTS meetings (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    organizer_id TEXT NOT NULL,
    title TEXT NOT NULL,
    description TEXT,
    scheduled_at REAL,
    duration REAL,
    state TEXT NOT NULL,
    recording_enabled INTEGER NOT NULL DEFAULT 0,
    transcription_enabled INTEGER NOT NULL DEFAULT 1,
    meeting_type TEXT,
    max_participants INTEGER NOT NULL,
    started_at INTEGER,
    ended_at INTEGER,
    transcript_seq INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS participants (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    meeting_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    role TEXT NOT NULL,
    presence TEXT NOT NULL,
    joined_at INTEGER,
    left_at INTEGER,
    created_at INTEGER NOT NULL,
    UNIQUE (meeting_id, user_id)
);
CREATE TABLE IF NOT EXISTS sessions (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    meeting_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    state TEXT NOT NULL,
    metadata TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (meeting_id, session_id)
);
CREATE TABLE IF NOT EXISTS signals (
    seq INTEGER PRIMARY KEY,  -- insertion order: generation 1 reads "the oldest" by it
    id TEXT NOT NULL UNIQUE,
    meeting_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    from_user_id TEXT NOT NULL,
    to_user_id TEXT,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    processed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS signals_direct ON signals (meeting_id, to_user_id, processed, seq);
CREATE INDEX IF NOT EXISTS signals_direct_session
    ON signals (meeting_id, to_user_id, session_id, processed, seq);
-- generation 2 acknowledges broadcast signals per recipient
CREATE TABLE IF NOT EXISTS signal_acks (
    signal_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    acked_at INTEGER NOT NULL,
    PRIMARY KEY (signal_id, user_id)
);
CREATE TABLE IF NOT EXISTS transcripts (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    meeting_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    speaker_id TEXT,
    text TEXT NOT NULL,
    confidence REAL NOT NULL,
    start_time REAL NOT NULL,
    end_time REAL NOT NULL,
    language TEXT,
    is_interim INTEGER NOT NULL DEFAULT 0,
    sequence INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rate_limits (
    user_id TEXT NOT NULL,
    bucket_ms INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (user_id, bucket_ms)
);
"""


def now_ms() -> int:
    """Server `Date.now()`: wall-clock milliseconds (ties happen, as on Convex)."""
    return time.time_ns() // 1_000_000


def default_db_path() -> Path:
    import os

    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "connvo-agent" / "devserver.sqlite"


class Store:
    """The dev backend's tables. Use `transaction()` around every function call (atomic, as in
    Convex mutations); the helpers below run inside the caller's transaction."""

    def __init__(self, path: Path | str, ids: IdMode = "random") -> None:
        self.path = Path(path)
        self.ids: IdMode = ids
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit mode: transactions are explicit (BEGIN IMMEDIATE) so a concurrent CLI writer
        # waits on busy_timeout instead of failing mid-transaction.
        self.conn = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=10.0
        )
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA busy_timeout=10000")
        self.conn.executescript(SCHEMA)
        self._secret: str | None = None
        # Sort keys (ID prefixes) the next inserted IDs of a table take, in order: set by tests
        # through /admin/next-ids. In memory only: a restart forgets them.
        self._next_keys: dict[str, collections.deque[int]] = {}

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    # --- generic helpers ------------------------------------------------------------------------

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(self.conn.execute(sql, params).fetchall())

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self.conn.execute(sql, params).fetchone()
        return row

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute a write; returns the number of rows changed."""
        return self.conn.execute(sql, params).rowcount

    def new_id(self, table: str) -> str:
        queued = self._next_keys.get(table)
        if queued:
            return make_id(table, queued.popleft())
        if self.ids == "ordered":
            counter = self.conn.execute("INSERT INTO id_seq DEFAULT VALUES").lastrowid
            assert counter is not None
            return make_id(table, counter)
        return make_id(table)

    def queue_id_keys(self, table: str, keys: Sequence[int]) -> None:
        """The next IDs of `table` get these sort keys (8-byte prefixes), in order; replaces any
        keys still queued for the table (an empty list clears them)."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        for key in keys:
            if not 0 <= key < MAX_ID_KEY:
                raise ValueError(f"sort key {key} is not in [0, 2**64)")
        self._next_keys[table] = collections.deque(keys)

    def queued_id_keys(self, table: str) -> int:
        return len(self._next_keys.get(table, ()))

    # --- meta -----------------------------------------------------------------------------------

    def jwt_secret(self) -> str:
        """The HS256 secret, generated once per database and kept in it (so tokens survive
        restarts and the CLI can issue tokens the server accepts)."""
        if self._secret is None:
            with self.transaction():
                self.run(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('jwt_secret', ?)",
                    (secrets.token_hex(32),),
                )
                row = self.one("SELECT value FROM meta WHERE key = 'jwt_secret'")
            assert row is not None
            self._secret = str(row["value"])
        return self._secret

    # --- users ----------------------------------------------------------------------------------

    def user(self, user_id: str) -> Row | None:
        return self.one("SELECT * FROM users WHERE id = ?", (user_id,))

    def user_by_subject(self, subject: str) -> Row | None:
        return self.one("SELECT * FROM users WHERE workos_user_id = ?", (subject,))

    def user_by_email(self, email: str) -> Row | None:
        return self.one("SELECT * FROM users WHERE email = ? ORDER BY seq LIMIT 1", (email,))

    def set_user_active(self, name: str, active: bool) -> None:
        """Activate or deactivate user `name` (created if missing)."""
        row = self.ensure_user(name)
        self.run(
            "UPDATE users SET is_active = ?, updated_at = ? WHERE id = ?",
            (int(active), now_ms(), row["id"]),
        )

    def ensure_user(self, name: str) -> Row:
        """The user called `name`, created on first use (inside the caller's transaction)."""
        subject = subject_for(name)
        row = self.user_by_subject(subject)
        if row is None:
            now = now_ms()
            self.run(
                "INSERT INTO users (id, workos_user_id, email, display_name, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (self.new_id("users"), subject, f"{name}@example.com", name, now, now),
            )
            row = self.user_by_subject(subject)
        assert row is not None
        return row

    # --- meetings -------------------------------------------------------------------------------

    def meeting(self, meeting_id: str) -> Row | None:
        return self.one("SELECT * FROM meetings WHERE id = ?", (meeting_id,))

    def insert_meeting(
        self,
        organizer_id: str,
        title: str,
        state: str,
        *,
        description: str | None = None,
        scheduled_at: float | None = None,
        duration: float | None = None,
        recording_enabled: bool = False,
        transcription_enabled: bool = True,
        meeting_type: str | None = None,
        max_participants: int = 100,
    ) -> str:
        meeting_id = self.new_id("meetings")
        now = now_ms()
        self.run(
            "INSERT INTO meetings (id, organizer_id, title, description, scheduled_at, duration,"
            " state, recording_enabled, transcription_enabled, meeting_type, max_participants,"
            " started_at, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                meeting_id,
                organizer_id,
                title,
                description,
                scheduled_at,
                duration,
                state,
                int(recording_enabled),
                int(transcription_enabled),
                meeting_type,
                max_participants,
                now if state == "active" else None,
                now,
                now,
            ),
        )
        return meeting_id

    def participant(self, meeting_id: str, user_id: str) -> Row | None:
        return self.one(
            "SELECT * FROM participants WHERE meeting_id = ? AND user_id = ?",
            (meeting_id, user_id),
        )

    def participants(self, meeting_id: str) -> list[Row]:
        return self.all(
            "SELECT p.*, u.display_name AS display_name FROM participants p"
            " JOIN users u ON u.id = p.user_id WHERE p.meeting_id = ? ORDER BY p.seq",
            (meeting_id,),
        )

    def insert_participant(self, meeting_id: str, user_id: str, role: str) -> str:
        participant_id = self.new_id("meetingParticipants")
        self.run(
            "INSERT INTO participants (id, meeting_id, user_id, role, presence, created_at)"
            " VALUES (?, ?, ?, ?, 'invited', ?)",
            (participant_id, meeting_id, user_id, role, now_ms()),
        )
        return participant_id

    # --- sessions -------------------------------------------------------------------------------

    def session(self, meeting_id: str, session_id: str) -> Row | None:
        return self.one(
            "SELECT * FROM sessions WHERE meeting_id = ? AND session_id = ?",
            (meeting_id, session_id),
        )

    # --- signals --------------------------------------------------------------------------------

    def insert_signal(
        self,
        meeting_id: str,
        session_id: str,
        from_user_id: str,
        to_user_id: str | None,
        kind: str,
        data: dict[str, Any],
    ) -> str:
        signal_id = self.new_id("webrtcSignals")
        self.run(
            "INSERT INTO signals (id, meeting_id, session_id, from_user_id, to_user_id, type,"
            " data, timestamp) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                signal_id,
                meeting_id,
                session_id,
                from_user_id,
                to_user_id,
                kind,
                json.dumps(data, separators=(",", ":")),
                now_ms(),
            ),
        )
        return signal_id


def subject_for(name: str) -> str:
    """The JWT `sub` (the user's workosUserId) of a dev user called `name`."""
    return f"devuser_{name}"


def unprovisioned_subject_for(name: str) -> str:
    """A JWT `sub` that no dev user ever has: a signed-in identity without a Connvo user."""
    return f"devnouser_{name}"
