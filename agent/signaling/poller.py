"""The signal poller: one per (meeting, identity), however many peer sessions that identity has.

Each cycle fetches pending signals, drops the ones already handled (by id, across restarts),
validates the rest one by one, orders them by send time and hands them to the sink. New signals
are written to the state store's inbox first and acknowledged right away: the server stops
returning them while they wait their turn (fifty offers waiting for a few negotiations at a time
came back with every fast poll, a full page of SDP each time). The next poll waits (briefly) for
those acknowledgements to land, or it would fetch the same page again. The sink (the session
manager) reports back through `handled()` once a signal was applied, rejected or ignored; that
moves it from the inbox to the handled ids in one transaction, and a restarted agent first
applies what its inbox still holds.

Cursor: the server filters `_id > lastSignalId` as plain strings, and IDs need not sort by time. A
cursor is therefore only used to page through a backlog while pages come back full; after the
first short page the next poll starts from the beginning again, so a newer signal whose id sorts
below the cursor is never skipped. Already-handled ids that come back are re-acknowledged, not
re-applied.

End-of-candidates: ICE takes no candidate after the marker, and a page can bring a sender's
marker before one of its earlier candidates (ids that do not sort by time, a cursor paging past a
backlog). A marker is therefore delivered only by a drain that saw everything pending (a whole
view, below), together with whatever else that drain brought, in send order; a marker fetched by
any other drain is held until the next whole view. By then every signal sent before the marker
has been delivered, whatever page it was on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from agent.aio import wait_event
from agent.convex import AuthError, ConvexError, FunctionError, TransientError
from agent.signaling.api import ConnvoApi
from agent.signaling.models import MAX_SIGNAL_IDS_PER_ACK, Signal
from agent.signaling.state import SignalStateStore

log = logging.getLogger(__name__)

# Poll intervals (ParticipantSettings takes its defaults from these): fast while negotiating or
# just after sending, idle otherwise (1.25 s keeps an idle identity under one request a second
# with discovery and the meeting check), fast for this long after the last activity.
FAST_INTERVAL_S = 0.02
IDLE_INTERVAL_S = 1.25
RECENT_WINDOW_S = 3.0
PAGE_SIZE = 50  # the server's cap: a page this long means more may be waiting
MAX_PAGES_PER_CYCLE = 8  # bound one drain so a huge backlog still gets applied in slices
CURSOR_KEY = "cursor"
# A poll failing with one of these codes means this identity can no longer read the meeting.
LATENCY_SAMPLES = 10_000
# How long a poll waits for the previous drain's acknowledgements before fetching anyway.
ACK_WAIT_S = 0.5
FATAL_CODES = frozenset({"FORBIDDEN", "NOT_FOUND", "MEETING_NOT_ACTIVE"})


class SignalSink(Protocol):
    def deliver(self, signal: Signal) -> None:
        """Take a validated signal; call `SignalPoller.handled(signal, outcome)` when done."""

    def negotiating(self) -> bool:
        """True while any session is mid-negotiation (poll fast)."""


class PollerObserver(Protocol):
    """Hooks for metrics (AgentMetrics implements them)."""

    def polled(self, seconds: float) -> None: ...

    def received(self, count: int) -> None: ...

    def handled(self, outcome: str) -> None: ...

    def acked(self, count: int) -> None: ...


class _NoObserver:
    def polled(self, seconds: float) -> None:
        pass

    def received(self, count: int) -> None:
        pass

    def handled(self, outcome: str) -> None:
        pass

    def acked(self, count: int) -> None:
        pass


def ends_candidates(signal: Signal) -> bool:
    return signal.type == "ice" and signal.candidate.ends_candidates


def send_order(signal: Signal) -> tuple[float, int]:
    """Key for a stable sort into send order: the server timestamp first.

    Ties are common (millisecond resolution). They are broken the way a sender produces signals: a
    description, then its candidates, then the end-of-candidates marker (ICE drops a candidate
    that comes after the marker). Other ties keep the order fetched: generation 1 pages are in
    insertion order, while generation 2's random ids carry no order at all.
    """
    if signal.type == "sdp":
        return (signal.timestamp, 0)
    return (signal.timestamp, 2 if signal.candidate.ends_candidates else 1)


@dataclass
class PollerStats:
    polls: int = 0
    received: int = 0
    duplicates: int = 0
    malformed: int = 0
    acked: int = 0
    ack_failures: int = 0
    poll_errors: int = 0
    reapplied: int = 0  # signals handled although already recorded: must stay 0
    markers_held: int = 0  # end-of-candidates markers held back for a whole view
    # seconds from server insert to handled (bounded: the most recent ones), for reports; the
    # "active" ones were fetched while polling fast (negotiating), the rest by an idle poll
    idle_latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    active_latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    # the part of the active latencies spent before delivery: insert -> fetched by a poll
    active_fetch_latencies: deque[float] = field(
        default_factory=lambda: deque(maxlen=LATENCY_SAMPLES)
    )


class SignalPoller:
    def __init__(
        self,
        api: ConnvoApi,
        meeting_id: str,
        store: SignalStateStore,
        sink: SignalSink,
        *,
        fast_interval: float = FAST_INTERVAL_S,
        idle_interval: float = IDLE_INTERVAL_S,
        recent_window: float = RECENT_WINDOW_S,
        observer: PollerObserver | None = None,
    ) -> None:
        self.api = api
        self.meeting_id = meeting_id
        self.store = store
        self.sink = sink
        self.fast_interval = fast_interval
        self.idle_interval = idle_interval
        self.recent_window = recent_window
        self.stats = PollerStats()
        self.observer: PollerObserver = observer or _NoObserver()
        self._in_flight: dict[str, bool] = {}  # delivered, not yet handled -> fetched while active
        self._replay = _load_inbox(store)  # fetched by a previous run and never handled
        self._in_flight.update(dict.fromkeys((signal.id for signal in self._replay), False))
        self._ack_queue: dict[str, None] = dict.fromkeys(store.unacked())  # ordered set
        self._ack_wake = asyncio.Event()
        self._acks_settled = asyncio.Event()  # nothing queued, or the last attempt failed
        self._acks_settled.set()
        self._ack_failures = 0
        self._poll_wake = asyncio.Event()
        self._changed = asyncio.Event()  # set and replaced whenever a signal is handled
        self._polled = asyncio.Event()  # set and replaced after every drain
        self._last_activity = -1e9
        self._brought_new = False  # the last drain delivered new signals
        self._interval = fast_interval
        self._cursor: str | None = store.get_meta(CURSOR_KEY)
        # End-of-candidates markers fetched by a drain that did not see everything pending: an
        # earlier candidate of the same sender may still be on a page not fetched yet.
        self._held_markers: dict[str, Signal] = {}
        # Polls that returned every signal pending at the backend: a short page from the start
        # (both generations then hold fewer than a page in all). A signal pending when such a
        # poll was made was delivered by it; while a backlog keeps pages full there are none.
        self.whole_views = 0

    # --- called by the owner and the sessions ------------------------------------------------

    def kick(self) -> None:
        """Poll now and stay fast for a while: something was just sent and an answer is due."""
        self._last_activity = time.monotonic()
        self._poll_wake.set()

    def handled(self, signal: Signal, outcome: str = "applied") -> None:
        """A delivered signal was applied, rejected or ignored: record it and acknowledge it."""
        active = self._in_flight.pop(signal.id, False)
        if self.store.is_known(signal.id):
            # Never expected: the store's `times` column counts it too (tests check both).
            self.stats.reapplied += 1
            log.error("signal %s handled a second time (%s)", signal.id, outcome)
        self.store.record(signal.id, outcome)  # acknowledged when it was received
        self.observer.handled(outcome)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        latency = max(0.0, time.time() - signal.timestamp / 1000.0)
        (self.stats.active_latencies if active else self.stats.idle_latencies).append(latency)

    async def next_change(self) -> None:
        """Return after the next signal is handled (for tests and reports)."""
        await self._changed.wait()

    async def next_poll(self) -> None:
        """Return after the next drain has delivered its signals (successful or not)."""
        await self._polled.wait()

    @property
    def idle(self) -> bool:
        """Nothing delivered and still waiting to be handled."""
        return not self._in_flight

    async def run(self) -> None:
        """Poll until cancelled. Raises FunctionError when the meeting is no longer readable."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._ack_loop(), name="ack-signals")
            replay, self._replay = self._replay, []
            if replay:
                log.info("applying %d signals received before a restart", len(replay))
            for signal in sorted(replay, key=send_order):
                if ends_candidates(signal):
                    self._held_markers[signal.id] = signal  # until the first whole view
                else:
                    self.sink.deliver(signal)
            await self._poll_loop()

    async def flush_acks(self) -> None:
        """Acknowledge everything handled so far (used at shutdown); one attempt per batch."""
        await self._send_acks()

    # --- polling -----------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        failures = 0
        while True:
            full = False
            cycle_started = time.monotonic()
            # Fetched before its acknowledgement lands, a page comes back whole once more.
            await wait_event(self._acks_settled, ACK_WAIT_S)
            try:
                full = await self.poll_once()
                failures = 0
            except FunctionError as exc:
                if exc.code in FATAL_CODES:
                    raise
                failures += 1
                log.warning("getPendingSignals failed: %s", exc)
            except (TransientError, AuthError, ConvexError) as exc:
                failures += 1
                self.stats.poll_errors += 1
                log.warning("getPendingSignals failed (attempt streak %d): %s", failures, exc)
            polled, self._polled = self._polled, asyncio.Event()
            polled.set()
            interval = self._next_interval(full, failures)
            if not failures:
                # The interval runs from the start of one poll to the start of the next: a signal
                # waits at most one interval for its poll, however long the last one took.
                interval -= time.monotonic() - cycle_started
            await self._sleep(interval)

    def _next_interval(self, full: bool, failures: int) -> float:
        if failures:
            # The client already retried with backoff; keep the outer loop from spinning too.
            self._interval = min(self.idle_interval * 2**failures, 30.0)
        elif full or self._brought_new:
            # More is waiting, or likely on its way: signals come in bursts (fifty answers to
            # fifty offers, a description and its candidates). The wait for this drain's
            # acknowledgements paces the next poll.
            self._interval = 0.0
        elif self._active():
            self._interval = self.fast_interval
        else:
            # Back off geometrically from fast to idle, so a late reply is still picked up quickly.
            self._interval = min(self.idle_interval, max(self._interval, self.fast_interval) * 1.5)
        return self._interval

    def _active(self) -> bool:
        recent = time.monotonic() - self._last_activity < self.recent_window
        return recent or self.sink.negotiating()

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        await wait_event(self._poll_wake, seconds)
        self._poll_wake.clear()

    async def poll_once(self) -> bool:
        """One drain: fetch up to MAX_PAGES_PER_CYCLE pages, deliver new signals in send order.

        Returns True when the last page was full (more is waiting).
        """
        batch: dict[str, Signal] = {}
        rows: dict[str, Any] = {}
        full = False
        whole = False  # this drain saw every signal pending at the backend
        active = self._interval <= self.fast_interval
        for _ in range(MAX_PAGES_PER_CYCLE):
            started = time.perf_counter()
            from_start = self._cursor is None
            page = await self.api.get_pending_signals(self.meeting_id, last_signal_id=self._cursor)
            self.observer.polled(time.perf_counter() - started)
            self.stats.polls += 1
            full = len(page) >= PAGE_SIZE
            if from_start and not full:
                self.whole_views += 1
                whole = True
            page_ids = [row["_id"] for row in page if _has_id(row)]
            for row in page:
                self._take(row, batch, rows)
            # Page through a backlog with the cursor; start over from the beginning after a short
            # page, so that ids sorting below the cursor are not skipped.
            self._set_cursor(max(page_ids) if full and page_ids else None)
            if not full:
                break
        if batch:
            # Kept before acknowledged: from here on a crash loses nothing the server forgot.
            self.store.receive((sid, json.dumps(rows[sid])) for sid in batch)
            for signal_id in batch:
                self._queue_ack(signal_id)
        now = time.time()
        for signal in batch.values():
            self._in_flight[signal.id] = active
            if active:
                self.stats.active_fetch_latencies.append(max(0.0, now - signal.timestamp / 1000.0))
        deliver = list(batch.values())
        if whole:
            deliver += self._held_markers.values()
            self._held_markers = {}
        else:
            for signal in deliver:
                if ends_candidates(signal):
                    self._held_markers[signal.id] = signal
                    self.stats.markers_held += 1
            if self._held_markers:
                deliver = [s for s in deliver if s.id not in self._held_markers]
        for signal in sorted(deliver, key=send_order):
            self.sink.deliver(signal)
        self._brought_new = bool(batch)
        if batch:
            self._last_activity = time.monotonic()
        return full

    def _take(self, row: Any, batch: dict[str, Signal], rows: dict[str, Any]) -> None:
        if not _has_id(row):
            # Without an id it cannot be acknowledged or deduplicated: log and drop.
            self.stats.malformed += 1
            log.warning("malformed signal without an id dropped: %.200r", row)
            return
        signal_id: str = row["_id"]
        if signal_id in batch or signal_id in self._in_flight:
            self.stats.duplicates += 1
            return
        if self.store.is_known(signal_id):
            # Handled before, but the acknowledgement has not landed (or was lost): ack again.
            self.stats.duplicates += 1
            self._queue_ack(signal_id)
            return
        self.stats.received += 1
        self.observer.received(1)
        try:
            batch[signal_id] = Signal.model_validate(row)
            rows[signal_id] = row
        except ValidationError as exc:
            self.stats.malformed += 1
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            log.warning("malformed signal %s rejected: %s: %s", signal_id, where, err["msg"])
            self.store.record(signal_id, "rejected")
            self.observer.handled("malformed")
            self._queue_ack(signal_id)

    def _set_cursor(self, cursor: str | None) -> None:
        if cursor != self._cursor:
            self._cursor = cursor
            self.store.set_meta(CURSOR_KEY, cursor)

    # --- acknowledgement ---------------------------------------------------------------------

    def _queue_ack(self, signal_id: str) -> None:
        self._ack_queue[signal_id] = None
        if not self._ack_failures:  # while acks fail, polls need not wait for them
            self._acks_settled.clear()
        self._ack_wake.set()

    async def _ack_loop(self) -> None:
        # No pause to batch: a drain queues its new signals' acks together, after its last page
        # (only re-acks of already handled ids are queued page by page).
        while True:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            if await self._send_acks():
                self._ack_failures = 0
                if not self._ack_queue:
                    self._acks_settled.set()
            else:
                self._ack_failures += 1
                self._acks_settled.set()  # polling goes on; re-fetched ids are re-acknowledged
                await asyncio.sleep(min(0.2 * 2**self._ack_failures, 10.0))
                self._ack_wake.set()

    async def _send_acks(self) -> bool:
        """Send all queued acks; False when some must be retried later."""
        ok = True
        while self._ack_queue:
            batch = list(self._ack_queue)[:MAX_SIGNAL_IDS_PER_ACK]
            if not await self._ack_batch(batch):
                ok = False
                break
        return ok

    async def _ack_batch(self, batch: list[str]) -> bool:
        try:
            await self.api.ack_signals(batch)
        except FunctionError as exc:
            # Generation 2 rejects the whole call for one foreign or unknown id: split to find it.
            if len(batch) == 1:
                log.warning("acknowledgement of signal %s refused: %s", batch[0], exc.message)
                self._acked(batch)
                return True
            half = len(batch) // 2
            return await self._ack_batch(batch[:half]) and await self._ack_batch(batch[half:])
        except ConvexError as exc:
            self.stats.ack_failures += 1
            log.warning("acknowledging %d signals failed, will retry: %s", len(batch), exc)
            return False
        self._acked(batch)
        return True

    def _acked(self, batch: list[str]) -> None:
        for signal_id in batch:
            self._ack_queue.pop(signal_id, None)
        self.store.mark_acked(batch)
        self.stats.acked += len(batch)
        self.observer.acked(len(batch))

    @property
    def pending_acks(self) -> int:
        return len(self._ack_queue)


def _has_id(row: Any) -> bool:
    return isinstance(row, dict) and isinstance(row.get("_id"), str) and 0 < len(row["_id"]) <= 128


def _load_inbox(store: SignalStateStore) -> list[Signal]:
    signals = []
    for row in store.inbox():
        try:
            signals.append(Signal.model_validate(json.loads(row)))
        except ValidationError:  # written by this code, so only a changed model gets here
            signal_id = json.loads(row).get("_id", "?")
            log.warning("signal %s kept from a previous run no longer reads; dropped", signal_id)
            store.record(signal_id, "rejected")
    return signals
