"""Signed webhooks per bot (Standard Webhooks), delivered from a durable outbox.

`WebhookOutbox` is a SQLite file (WAL). `enqueue` writes an event with its `webhook-id` and its
body, both fixed for good, and returns once the row is on disk. `WebhookDeliverer.run` sends what
is pending, one task per bot with pending events (in a TaskGroup): a bot's events go out in the
order they were enqueued, each only after the previous one was delivered or finally failed, and a
bot whose endpoint is failing holds up no other bot. A restarted process finds the pending events
in the file and sends them, with their original ids, in the same order.

One request: `POST url` with the body `{"type", "timestamp", "data"}` (the event's time, ISO 8601
UTC) and the headers `webhook-id`, `webhook-timestamp` (the attempt's time, Unix seconds) and
`webhook-signature` (`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`), signed by the
`standardwebhooks` package with the bot's `whsec_` secret. The signature is made afresh for each
attempt, since receivers refuse a timestamp more than five minutes off; the id and the body never
change, so a receiver deduplicates retries by `webhook-id`.

The answer decides (`classify`):

- 2xx: delivered.
- 408, 429, 5xx (and any status above 599), timeouts (`timeout` per attempt, 15 s, for the whole
  exchange) and connection errors: retried, after at least `Retry-After` when the answer has one.
- Any other status (4xx, and 1xx/3xx: redirects are not followed, so a signed body never goes
  anywhere but the URL the caller gave): failed for good, logged, never retried. The endpoint said
  the request itself is wrong; sending it again unchanged cannot help.

Retries wait `Backoff.delay` (exponential, jittered, 5 s doubling up to 1 h) and go on for at most
`max_age` (24 h) after the event was enqueued: an event older than that is marked failed without
being sent, and so is one whose next retry would come after that.

Delivery is at least once: a process stopped while a request is on the wire sends it again (with
the same `webhook-id`) after the restart. One deliverer per outbox file.

Secrets: the webhook secret is written to the outbox file (created 0600), needed to sign after a
restart. It is never logged nor put in an exception's text, and neither is the URL (which may
carry credentials of its own): log lines name the bot, the event id and type, and the URL's host.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import json
import logging
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from standardwebhooks import Webhook

from agent.convex import make_http_client, parse_retry_after

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 15.0
DEFAULT_MAX_AGE_S = 24 * 60 * 60.0
# Answers that mean "later": 408 Request Timeout and 429 Too Many Requests; 5xx are retried too.
RETRY_STATUS = frozenset({408, 429})
SECRET_PREFIX = "whsec_"
SECRET_BYTES = (24, 64)  # the key's length range Standard Webhooks recommends


class EventType(enum.StrEnum):
    BOT_STATE_CHANGED = "bot.state_changed"
    BOT_MEDIA_CONNECTED = "bot.media_connected"
    PARTICIPANT_JOINED = "participant.joined"
    PARTICIPANT_LEFT = "participant.left"
    TRANSCRIPT_CHUNK = "transcript.chunk"
    RECORDING_READY = "recording.ready"


class EventStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Outcome(enum.StrEnum):
    """What one attempt (or the lack of one) came to; the outbox counts each."""

    DELIVERED = "delivered"
    RETRIED = "retried"  # failed, another attempt is scheduled
    FAILED = "failed"  # failed for good: refused, or out of time


@dataclass(frozen=True)
class OutboxEvent:
    """One event as the outbox holds it. `secret` and `url` stay out of its repr."""

    seq: int  # enqueue order, across all bots
    event_id: str  # the `webhook-id`
    bot_id: str
    event_type: str
    url: str = field(repr=False)
    secret: str = field(repr=False)
    body: bytes = field(repr=False)  # the JSON payload, exactly as sent and signed
    created_at: float  # Unix time of the enqueue
    status: EventStatus
    attempts: int
    next_attempt_at: float  # Unix time; 0: at once
    last_error: str | None


@dataclass(frozen=True)
class OutboxCounts:
    """Events pending now, and outcomes since the file was created (monotonic, for Prometheus)."""

    pending: int
    delivered: int
    retried: int
    failed: int


@dataclass(frozen=True)
class Backoff:
    """How long to wait before a retry: exponential with "equal jitter".

    Retry n (1 after the first failed attempt) waits between half and all of
    `min(max_delay, first * factor ** (n - 1))`, so waits grow for sure and two bots failing
    together drift apart. A `Retry-After` from the endpoint raises the wait to at least that
    (believed up to `max_retry_after`). The defaults make about 40 attempts in 24 hours (10 in
    the first hour).
    """

    first: float = 5.0
    factor: float = 2.0
    max_delay: float = 3600.0
    max_retry_after: float = 3600.0

    def delay(
        self, retry: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        exponent = min(max(retry - 1, 0), 64)  # 2.0 ** 1100 overflows
        cap = min(self.max_delay, self.first * self.factor**exponent)
        wait = cap / 2 + (rng or random).uniform(0.0, cap / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait


SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,            -- the webhook-id
    bot_id TEXT NOT NULL,
    type TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',  -- pending | delivered | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,                    -- "HTTP 500", "ConnectError", "timeout", ...: no secrets
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS events_pending ON events (bot_id, seq) WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS counters (outcome TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""

_COLUMNS = (
    "seq, id, bot_id, type, url, secret, body, created_at, status, attempts, next_attempt_at, "
    "last_error"
)

EnqueueListener = Callable[[str], None]


class WebhookOutbox:
    """The durable queue of webhook events: a SQLite file in WAL mode.

    Synchronous on purpose, as `agent.signaling.state`: each call is one small transaction.
    `enqueue` commits with `synchronous=FULL`, so an event is on disk when it returns. Calls may
    come from any thread (one connection, behind a lock). `clock` (Unix seconds) stamps events and
    is the deliverer's clock for their age.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The file holds webhook secrets: readable by its owner only (SQLite gives the -wal and
        # -shm files the database's permissions).
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.path = path
        self.clock = clock
        self._lock = threading.RLock()
        self._depth = 0  # transactions open (nested ones join the outermost)
        self._notify: list[str] = []  # bots with events enqueued in the open transaction
        self._listeners: list[EnqueueListener] = []
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> WebhookOutbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- enqueueing ----------------------------------------------------------------------------

    def enqueue(
        self,
        bot_id: str,
        url: str,
        secret: str,
        event_type: EventType | str,
        data: Mapping[str, Any],
    ) -> str:
        """Queue one event for `bot_id`'s endpoint; its `webhook-id` is returned once it is on
        disk. ValueError for an unknown type, data that is not JSON, a URL that is not absolute
        http(s), or a secret that is not `whsec_` and the base64 of 24 to 64 bytes (the message
        quotes neither the URL nor the secret)."""
        kind = _event_type(event_type)
        _check_url(url)
        check_secret(secret)
        created_at = self.clock()
        body = _payload(kind, created_at, data)
        event_id = f"msg_{uuid.uuid4().hex}"
        with self.transaction():
            self._db.execute(
                "INSERT INTO events (id, bot_id, type, url, secret, body, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (event_id, bot_id, kind.value, url, secret, body, created_at),
            )
            self._notify.append(bot_id)
        return event_id

    def add_listener(self, listener: EnqueueListener) -> None:
        """Call `listener(bot_id)` after each enqueue (in the enqueuing thread)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: EnqueueListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    # --- reading -------------------------------------------------------------------------------

    def pending(self, bot_id: str | None = None) -> list[OutboxEvent]:
        """Events not yet delivered nor failed, in enqueue order (one bot's, or all)."""
        where, args = ("AND bot_id = ?", (bot_id,)) if bot_id is not None else ("", ())
        return self._select(f"status = 'pending' {where} ORDER BY seq", args)

    def next_pending(self, bot_id: str) -> OutboxEvent | None:
        """The bot's oldest pending event: the only one that may be sent."""
        rows = self._select("status = 'pending' AND bot_id = ? ORDER BY seq LIMIT 1", (bot_id,))
        return rows[0] if rows else None

    def pending_bots(self) -> list[str]:
        """Bots with pending events, the one waiting longest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT bot_id FROM events WHERE status = 'pending' "
                "GROUP BY bot_id ORDER BY MIN(seq)"
            ).fetchall()
        return [str(row[0]) for row in rows]

    def has_pending(self) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM events WHERE status = 'pending' LIMIT 1")
            return row.fetchone() is not None

    def event(self, event_id: str) -> OutboxEvent | None:
        rows = self._select("id = ?", (event_id,))
        return rows[0] if rows else None

    def counts(self) -> OutboxCounts:
        with self._lock:
            pending = self._db.execute(
                "SELECT COUNT(*) FROM events WHERE status = 'pending'"
            ).fetchone()[0]
            done = dict(self._db.execute("SELECT outcome, n FROM counters").fetchall())
        return OutboxCounts(
            pending=int(pending),
            delivered=int(done.get(Outcome.DELIVERED, 0)),
            retried=int(done.get(Outcome.RETRIED, 0)),
            failed=int(done.get(Outcome.FAILED, 0)),
        )

    # --- outcomes (the deliverer's) ------------------------------------------------------------

    def mark_delivered(self, event_id: str) -> None:
        self._finish(event_id, EventStatus.DELIVERED, None, attempted=True)

    def mark_failed(self, event_id: str, reason: str, *, attempted: bool = True) -> None:
        self._finish(event_id, EventStatus.FAILED, reason, attempted=attempted)

    def schedule_retry(self, event_id: str, at: float, reason: str) -> OutboxEvent:
        """Count a failed attempt and set the next one for `at` (Unix time)."""
        with self.transaction():
            self._db.execute(
                "UPDATE events SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? "
                "WHERE id = ? AND status = 'pending'",
                (at, reason, event_id),
            )
            self._count(Outcome.RETRIED)
        updated = self.event(event_id)
        assert updated is not None
        return updated

    def prune(self, older_than: float) -> int:
        """Forget events delivered or failed more than `older_than` seconds ago (the counts
        stay); how many were removed."""
        cutoff = self.clock() - older_than
        with self.transaction():
            cursor = self._db.execute(
                "DELETE FROM events WHERE status != 'pending' AND finished_at < ?", (cutoff,)
            )
        return int(cursor.rowcount)

    # --- internals -----------------------------------------------------------------------------

    def _finish(
        self, event_id: str, status: EventStatus, reason: str | None, *, attempted: bool
    ) -> None:
        outcome = Outcome.DELIVERED if status is EventStatus.DELIVERED else Outcome.FAILED
        with self.transaction():
            cursor = self._db.execute(
                "UPDATE events SET status = ?, attempts = attempts + ?, "
                "last_error = COALESCE(?, last_error), finished_at = ? "
                "WHERE id = ? AND status = 'pending'",
                (status.value, int(attempted), reason, self.clock(), event_id),
            )
            if cursor.rowcount:
                self._count(outcome)

    def _count(self, outcome: Outcome) -> None:
        self._db.execute(
            "INSERT INTO counters (outcome, n) VALUES (?, 1) "
            "ON CONFLICT(outcome) DO UPDATE SET n = n + 1",
            (outcome.value,),
        )

    def _select(self, where: str, args: tuple[Any, ...]) -> list[OutboxEvent]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM events WHERE {where}", args)
            return [_event(row) for row in rows.fetchall()]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction on the outbox's file, which other tables may share (the service's
        bots): what is written inside and the events enqueued inside are committed together.
        Nested calls join the outer transaction; listeners hear of events once it commits."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._db
                finally:
                    self._depth -= 1
                return
            self._depth = 1
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                self._notify.clear()
                raise
            finally:
                self._depth = 0
            self._db.execute("COMMIT")
            notify, self._notify = self._notify, []
        for bot_id in dict.fromkeys(notify):
            for listener in list(self._listeners):
                listener(bot_id)

    def read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query on the file (for the tables that share it)."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()


def _event(row: tuple[Any, ...]) -> OutboxEvent:
    seq, event_id, bot_id, kind, url, secret, body, created, status, attempts, next_at, error = row
    return OutboxEvent(
        seq=int(seq),
        event_id=str(event_id),
        bot_id=str(bot_id),
        event_type=str(kind),
        url=str(url),
        secret=str(secret),
        body=bytes(body),
        created_at=float(created),
        status=EventStatus(status),
        attempts=int(attempts),
        next_attempt_at=float(next_at),
        last_error=None if error is None else str(error),
    )


def _event_type(value: EventType | str) -> EventType:
    try:
        return EventType(value)
    except ValueError:
        known = ", ".join(kind.value for kind in EventType)
        raise ValueError(f"unknown webhook event type {value!r} (known: {known})") from None


def _check_url(url: str) -> None:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        # the URL is not quoted: it may carry credentials
        raise ValueError("the webhook URL must be an absolute http:// or https:// URL")


def check_secret(secret: str) -> None:
    """`whsec_` and the base64 of 24 to 64 random bytes, as Standard Webhooks recommends (the
    library alone would take a secret without the prefix, and skip characters that are not
    base64)."""
    key = b""
    if isinstance(secret, str) and secret.startswith(SECRET_PREFIX):
        with contextlib.suppress(ValueError):  # binascii.Error
            key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    if not SECRET_BYTES[0] <= len(key) <= SECRET_BYTES[1]:
        # raised outside the decoder's except: its error (and traceback) stays out of this one
        raise ValueError(
            f"the webhook secret must be {SECRET_PREFIX} followed by the base64 of "
            f"{SECRET_BYTES[0]} to {SECRET_BYTES[1]} bytes"
        )


def _payload(kind: EventType, created_at: float, data: Mapping[str, Any]) -> bytes:
    """The body Standard Webhooks recommends: `{"type", "timestamp", "data"}`, compact UTF-8."""
    timestamp = datetime.fromtimestamp(created_at, UTC).isoformat(timespec="microseconds")
    payload = {"type": kind.value, "timestamp": timestamp.replace("+00:00", "Z"), "data": data}
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"webhook data is not JSON: {exc}") from None
    return text.encode()


# --- delivery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What to do after one attempt."""

    outcome: Outcome  # DELIVERED, RETRIED (try again) or FAILED (for good)
    reason: str  # for the log and `last_error`: "HTTP 500", "timeout", "ConnectError", ...
    retry_after: float | None = None


def classify(status: int, retry_after: float | None = None) -> Verdict:
    """The verdict on an HTTP answer (see the module's docstring)."""
    reason = f"HTTP {status}"
    if 200 <= status < 300:
        return Verdict(Outcome.DELIVERED, reason)
    if status in RETRY_STATUS or status >= 500:
        return Verdict(Outcome.RETRIED, reason, retry_after)
    return Verdict(Outcome.FAILED, reason)


# (outcome, the event as recorded with it): for metrics, and for tests to wait on
DeliveryObserver = Callable[[Outcome, OutboxEvent], None]


class WebhookDeliverer:
    """Sends an outbox's pending events while `run()` runs; see the module's docstring.

    `http` is shared and left open (the process's client); without one, `run()` makes one and
    closes it. `backoff`, `timeout` and `max_age` are here so that tests run in seconds.
    """

    def __init__(
        self,
        outbox: WebhookOutbox,
        http: httpx.AsyncClient | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_age: float = DEFAULT_MAX_AGE_S,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        observer: DeliveryObserver | None = None,
    ) -> None:
        self._outbox = outbox
        self._http = http
        self._timeout = timeout
        self._max_age = max_age
        self._backoff = backoff or Backoff()
        self._rng = rng
        self._observer = observer
        self._running = False
        self._bots: dict[str, asyncio.Task[None]] = {}
        self._progress = asyncio.Condition()

    @property
    def active_bots(self) -> frozenset[str]:
        """Bots whose events are being sent now (one task each)."""
        return frozenset(self._bots)

    async def run(self) -> None:
        """Deliver until cancelled: what is pending now, then whatever is enqueued. Cancelling
        it cancels every bot's task; an attempt cut short stays pending, for the next run."""
        if self._running:
            raise RuntimeError("this WebhookDeliverer is already running")
        self._running = True
        loop = asyncio.get_running_loop()
        wakeups: asyncio.Queue[str] = asyncio.Queue()

        def enqueued(bot_id: str) -> None:  # in whichever thread enqueued
            with contextlib.suppress(RuntimeError):  # the loop is closed: the next run sends it
                loop.call_soon_threadsafe(wakeups.put_nowait, bot_id)

        try:
            async with contextlib.AsyncExitStack() as stack:
                http = self._http
                if http is None:
                    http = await stack.enter_async_context(make_http_client(timeout=self._timeout))
                # Listen first, then look: an event enqueued in between is seen twice, not never.
                self._outbox.add_listener(enqueued)
                stack.callback(self._outbox.remove_listener, enqueued)
                async with asyncio.TaskGroup() as tasks:
                    for bot_id in self._outbox.pending_bots():
                        self._start(tasks, http, bot_id)
                    while True:
                        bot_id = await wakeups.get()
                        if bot_id not in self._bots:
                            self._start(tasks, http, bot_id)
        finally:
            # a task cancelled before it started never ran its own `finally`
            self._bots.clear()
            self._running = False

    async def drain(self, seconds: float) -> bool:
        """Wait until nothing is pending (delivered or failed for good), while `run()` runs; False
        if `seconds` pass first (as `agent.aio.wait_event`; shutdown then cancels `run()`)."""
        try:
            async with asyncio.timeout(seconds), self._progress:
                await self._progress.wait_for(lambda: not self._outbox.has_pending())
        except TimeoutError:
            return False
        return True

    # --- one bot -------------------------------------------------------------------------------

    def _start(self, tasks: asyncio.TaskGroup, http: httpx.AsyncClient, bot_id: str) -> None:
        self._bots[bot_id] = tasks.create_task(
            self._deliver_bot(http, bot_id), name=f"webhooks {bot_id}"
        )

    async def _deliver_bot(self, http: httpx.AsyncClient, bot_id: str) -> None:
        try:
            # The lookup and the exit happen in one step of the loop: an enqueue either comes
            # before the lookup (and is found) or wakes `run()` after this task is gone.
            while (event := self._outbox.next_pending(bot_id)) is not None:
                await self._deliver(http, event)
        finally:
            self._bots.pop(bot_id, None)

    async def _deliver(self, http: httpx.AsyncClient, event: OutboxEvent) -> None:
        deadline = event.created_at + self._max_age
        while True:
            now = self._outbox.clock()
            if now >= deadline:
                why = f"expired after {event.attempts} attempts"
                if event.last_error:
                    why += f" (last: {event.last_error})"
                await self._fail(event, why, attempted=False)
                return
            if event.next_attempt_at > now:
                await asyncio.sleep(event.next_attempt_at - now)  # the backoff, kept on disk
                continue
            verdict = await self._attempt(http, event)
            if verdict.outcome is Outcome.DELIVERED:
                self._outbox.mark_delivered(event.event_id)
                log.debug("webhook %s delivered", _describe(event))
                await self._recorded(Outcome.DELIVERED, event.event_id)
                return
            if verdict.outcome is Outcome.FAILED:
                await self._fail(event, f"refused: {verdict.reason}")
                return
            retry = event.attempts + 1
            delay = self._backoff.delay(retry, verdict.retry_after, self._rng)
            at = self._outbox.clock() + delay
            if at >= deadline:
                await self._fail(event, f"{verdict.reason}; no retry within {self._max_age:g} s")
                return
            event = self._outbox.schedule_retry(event.event_id, at, verdict.reason)
            if event.status is not EventStatus.PENDING:  # finished by someone else meanwhile
                return
            log.info(
                "webhook %s: attempt %d failed (%s), retrying in %.1f s",
                _describe(event),
                event.attempts,
                verdict.reason,
                delay,
            )
            await self._recorded(Outcome.RETRIED, event.event_id)

    async def _attempt(self, http: httpx.AsyncClient, event: OutboxEvent) -> Verdict:
        sent_at = int(time.time())  # the receiver's clock, not the outbox's
        signature = Webhook(event.secret).sign(
            event.event_id, datetime.fromtimestamp(sent_at, UTC), event.body
        )
        headers = {
            "content-type": "application/json",
            "webhook-id": event.event_id,
            "webhook-timestamp": str(sent_at),
            "webhook-signature": signature,
        }
        try:
            async with asyncio.timeout(self._timeout):
                response = await http.post(
                    event.url, content=event.body, headers=headers, follow_redirects=False
                )
        except TimeoutError:
            return Verdict(Outcome.RETRIED, f"timeout after {self._timeout:g} s")
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return Verdict(Outcome.FAILED, type(exc).__name__)
        except httpx.TransportError as exc:  # refused, reset, httpx's own timeouts
            # the type only: an exception's text may quote the URL
            return Verdict(Outcome.RETRIED, type(exc).__name__)
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return classify(response.status_code, retry_after)

    async def _fail(self, event: OutboxEvent, reason: str, *, attempted: bool = True) -> None:
        self._outbox.mark_failed(event.event_id, reason, attempted=attempted)
        log.warning("webhook %s failed for good: %s", _describe(event), reason)
        await self._recorded(Outcome.FAILED, event.event_id)

    async def _recorded(self, outcome: Outcome, event_id: str) -> None:
        if self._observer is not None:
            event = self._outbox.event(event_id)
            if event is not None:  # pruned in between
                self._observer(outcome, event)
        async with self._progress:
            self._progress.notify_all()


def _describe(event: OutboxEvent) -> str:
    """Names an event in a log line: never its secret nor its full URL."""
    try:
        host = httpx.URL(event.url).host
    except httpx.InvalidURL:
        host = "?"
    return f"{event.event_id} ({event.event_type}) of bot {event.bot_id} to {host}"
