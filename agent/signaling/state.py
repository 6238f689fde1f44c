"""What the agent remembers between restarts, per (meeting, identity): SQLite in the state dir.

- `inbox`: signals fetched but not yet handled, as fetched. A signal is written here before it is
  acknowledged, so the server can forget it at once; a restarted agent applies what is left here.
- `signals`: every signal id the agent applied (or rejected), when, how often, and whether its
  acknowledgement landed. A restarted agent skips ids found here and only re-sends their acks.
  `times` counts applications; anything above 1 is an exactly-once violation (tests check it).
  Handling a signal moves it from `inbox` to `signals` in one transaction.
- `meta`: the agent's own WebRTC session id and the poller cursor.
- `peers`: remote sessions known when the agent stopped, so a restart can re-establish them.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signals (
    id TEXT PRIMARY KEY,
    outcome TEXT NOT NULL,          -- applied | rejected | ignored
    applied_at REAL NOT NULL,
    acked_at REAL,
    times INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS signals_unacked ON signals (acked_at) WHERE acked_at IS NULL;
CREATE TABLE IF NOT EXISTS inbox (
    id TEXT PRIMARY KEY,
    row TEXT NOT NULL,              -- the getPendingSignals row, JSON
    received_at REAL NOT NULL,
    acked_at REAL
);
CREATE TABLE IF NOT EXISTS peers (
    session_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""

# Acked ids are kept this long: long enough to outlive any page the server could still return.
ACKED_RETENTION_S = 15 * 60


def state_file(state_dir: Path, meeting_id: str, user_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{meeting_id}--{user_id}")
    return state_dir / f"{safe}.sqlite"


class SignalStateStore:
    """Synchronous on purpose: each call is a tiny WAL transaction, cheaper than a thread hop."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._known: set[str] = {row[0] for row in self._db.execute("SELECT id FROM signals")}

    def close(self) -> None:
        self._db.close()

    # --- signals -----------------------------------------------------------------------------

    def is_known(self, signal_id: str) -> bool:
        """Applied, rejected or ignored before (possibly by a previous run)."""
        return signal_id in self._known

    def receive(self, rows: Iterable[tuple[str, str]]) -> None:
        """Keep fetched signals, (id, row as JSON), until they are handled (one transaction)."""
        now = time.time()
        with self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO inbox (id, row, received_at) VALUES (?, ?, ?)",
                [(sid, row, now) for sid, row in rows],
            )

    def inbox(self) -> list[str]:
        """Rows fetched and not yet handled (by a previous run), in the order they came."""
        return [
            row[0] for row in self._db.execute("SELECT row FROM inbox ORDER BY received_at, rowid")
        ]

    def record(self, signal_id: str, outcome: str) -> None:
        """Remember that a signal was handled; a second call for one id counts a repeat."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO signals (id, outcome, applied_at, acked_at) "
                "VALUES (?, ?, ?, (SELECT acked_at FROM inbox WHERE id = ?)) "
                "ON CONFLICT(id) DO UPDATE SET times = times + 1",
                (signal_id, outcome, time.time(), signal_id),
            )
            self._db.execute("DELETE FROM inbox WHERE id = ?", (signal_id,))
        self._known.add(signal_id)

    def mark_acked(self, signal_ids: Iterable[str]) -> None:
        now = time.time()
        rows = [(now, sid) for sid in signal_ids]
        with self._transaction():
            for table in ("signals", "inbox"):
                self._db.executemany(
                    f"UPDATE {table} SET acked_at = ? WHERE id = ? AND acked_at IS NULL", rows
                )

    def unacked(self) -> list[str]:
        return [
            row[0]
            for row in self._db.execute(
                "SELECT id FROM inbox WHERE acked_at IS NULL "
                "UNION ALL SELECT id FROM signals WHERE acked_at IS NULL"
            )
        ]

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def times_applied(self, signal_id: str) -> int:
        row = self._db.execute("SELECT times FROM signals WHERE id = ?", (signal_id,)).fetchone()
        return int(row[0]) if row else 0

    def prune(self, now: float | None = None) -> int:
        cutoff = (now or time.time()) - ACKED_RETENTION_S
        gone = [
            row[0]
            for row in self._db.execute(
                "SELECT id FROM signals WHERE acked_at IS NOT NULL AND acked_at < ?", (cutoff,)
            )
        ]
        self._db.executemany("DELETE FROM signals WHERE id = ?", [(sid,) for sid in gone])
        self._known.difference_update(gone)
        return len(gone)

    # --- meta and peers ----------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def remember_peer(self, session_id: str, user_id: str) -> None:
        self._db.execute(
            "INSERT INTO peers (session_id, user_id, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(session_id) DO UPDATE SET updated_at = excluded.updated_at",
            (session_id, user_id, time.time()),
        )

    def forget_peer(self, session_id: str) -> None:
        self._db.execute("DELETE FROM peers WHERE session_id = ?", (session_id,))

    def peers(self) -> dict[str, str]:
        return {row[0]: row[1] for row in self._db.execute("SELECT session_id, user_id FROM peers")}
