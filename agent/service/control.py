"""The service's core: takes requests, hands bots to workers, turns what workers report into
states, history and webhooks.

Workers are reached through a `Dispatcher` (a local pool of processes, or Redis). Everything a
worker reports names the bot and its attempt; reports of an attempt that is no longer the bot's
(a worker presumed lost that still talks) are ignored. A bot whose worker is lost runs again,
from `queued`, up to `max_attempts` times; then it fails with `worker_lost`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agent.service.models import (
    FINAL_STATES,
    Bot,
    BotRequest,
    BotState,
    FailureReason,
    LeaveReason,
)
from agent.service.store import BotRow, BotStore
from agent.service.webhooks import EventType, WebhookOutbox

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


class Dispatcher(Protocol):
    """How bots reach workers."""

    async def run(self, controller: Controller) -> None:
        """Until cancelled: keep workers, feed `controller.on_message` and `worker_lost`."""

    def submit(self, message: dict[str, Any]) -> str | bool | None:
        """Hand a `start` message to a worker: the worker's id; None if it was queued for any
        worker to take (Redis); False if no worker has room now (try again later)."""

    def stop(
        self, worker: str | None, bot_id: str, reason: str, attempt: int | None = None
    ) -> None:
        """Make the bot leave; with `attempt`, only if the worker runs that attempt or an older
        one (a stop meant for an old attempt must not reach the new one)."""

    def workers(self) -> dict[str, dict[str, Any]]:
        """Each live worker's last heartbeat."""

    async def recover(self, bots: list[BotRow]) -> list[BotRow]:
        """After a restart of the service: of the bots that were not final, those that no
        worker runs any more (to run again)."""


@dataclass
class ServiceMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.joins = Counter("connvo_service_joins", "Bots that reached in_meeting.", registry=r)
        self.failures = Counter(
            "connvo_service_failures", "Bots that failed, by reason.", ["reason"], registry=r
        )
        self.ended = Counter(
            "connvo_service_ended", "Bots that ended, by reason.", ["reason"], registry=r
        )
        self.requeued = Counter(
            "connvo_service_requeued", "Bots run again after their worker was lost.", registry=r
        )
        self.join_seconds = Gauge(
            "connvo_service_last_join_seconds",
            "Seconds from the request to in_meeting, of the last bot that joined.",
            registry=r,
        )


class _StoreCollector(Collector):
    """Figures read from the store and the workers when scraped."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def collect(self) -> Any:
        c = self.controller
        bots = GaugeMetricFamily("connvo_service_bots", "Bots by state.", labels=["state"])
        counts = c.store.counts_by_state()
        for state in BotState:
            bots.add_metric([state.value], counts.get(state.value, 0))
        yield bots
        outbox = c.outbox.counts()
        deliveries = CounterMetricFamily(
            "connvo_service_webhook_deliveries",
            "Webhook delivery attempts, by outcome.",
            labels=["outcome"],
        )
        for outcome in ("delivered", "retried", "failed"):
            deliveries.add_metric([outcome], getattr(outbox, outcome))
        yield deliveries
        pending = GaugeMetricFamily("connvo_service_webhooks_pending", "Webhook events pending.")
        pending.add_metric([], outbox.pending)
        yield pending
        load = GaugeMetricFamily(
            "connvo_service_worker_bots", "Bots running, per worker.", labels=["worker"]
        )
        capacity = GaugeMetricFamily(
            "connvo_service_worker_capacity", "Bots a worker takes, per worker.", labels=["worker"]
        )
        cpu = GaugeMetricFamily(
            "connvo_service_worker_cpu", "CPU used, in cores, per worker.", labels=["worker"]
        )
        for worker, beat in c.dispatcher.workers().items():
            load.add_metric([worker], len(beat.get("bots", [])))
            capacity.add_metric([worker], beat.get("max_bots", 0))
            cpu.add_metric([worker], beat.get("cpu", 0.0))
        yield from (load, capacity, cpu)


def request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class Controller:
    def __init__(
        self,
        store: BotStore,
        dispatcher: Dispatcher,
        state_dir: Path,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        metrics: ServiceMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.outbox: WebhookOutbox = store.outbox
        self.dispatcher = dispatcher
        self.bots_dir = state_dir / "bots"
        self.max_attempts = max_attempts
        self.metrics = metrics or ServiceMetrics()
        self.metrics.registry.register(_StoreCollector(self))
        self.clock = clock
        self._waiting: dict[str, None] = {}  # queued bots not yet handed to a worker, in order
        self._wake = asyncio.Event()
        self._let_go: set[tuple[str, str, object]] = set()  # (worker, bot, attempt) told to stop
        self._changed = asyncio.Event()  # set and replaced at every state change

    # --- requests ------------------------------------------------------------------------------

    def create(self, request: BotRequest, idempotency_key: str | None) -> tuple[Bot, bool]:
        body = request.model_dump(mode="json")
        for secret in ("token",):
            if request.token is not None:
                body[secret] = request.token.get_secret_value()
        if request.webhook is not None:
            body["webhook"]["secret"] = request.webhook.secret.get_secret_value()
        row, created = self.store.create(body, request_hash(body), idempotency_key)
        if created:
            self._webhook_state(row, BotState.QUEUED, None, None, None)
            self._waiting[row.id] = None
            self._wake.set()
        view = self.store.view(row.id)
        assert view is not None
        return view, created

    def delete(self, bot_id: str) -> Bot | None:
        """Leave now (files finalised by the worker); a bot not yet on a worker ends at once."""
        row = self.store.get_row(bot_id)
        if row is None:
            return None
        if not row.final:
            if row.id in self._waiting or (row.state is BotState.QUEUED and row.worker is None):
                self._waiting.pop(row.id, None)
                self._set_state(row, BotState.ENDED, LeaveReason.REQUESTED.value)
            else:
                self.dispatcher.stop(row.worker, bot_id, LeaveReason.REQUESTED.value)
        return self.store.view(bot_id)

    # --- running -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Recover what a previous run left, then hand queued bots to workers until cancelled."""
        unfinished = self.store.rows(frozenset(BotState) - FINAL_STATES)
        for row in await self.dispatcher.recover(unfinished):
            if row.state is not BotState.QUEUED or row.worker is not None:
                self._requeue(row, "service_restarted", "the service restarted")
            else:
                self._waiting[row.id] = None
        while True:
            self._wake.clear()
            self._dispatch()
            await self._wake.wait()

    def capacity_changed(self) -> None:
        self._wake.set()

    def _dispatch(self) -> None:
        for bot_id in list(self._waiting):
            row = self.store.get_row(bot_id)
            if row is None or row.final:
                self._waiting.pop(bot_id, None)
                continue
            attempt = row.attempt + 1
            message = {
                "type": "start",
                "bot_id": bot_id,
                "attempt": attempt,
                "request": row.request,
                "directory": str(self.bots_dir / bot_id),
            }
            worker = self.dispatcher.submit(message)
            if worker is False:
                return  # no room anywhere: wait for capacity
            self._waiting.pop(bot_id, None)
            self.store.assign(bot_id, worker if isinstance(worker, str) else None, attempt)

    # --- what workers report -------------------------------------------------------------------

    def on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "event":
            self._on_event(message)
        elif kind == "done":
            self._on_done(message)
            self._wake.set()
        elif kind == "hello":
            self._wake.set()

    def _current(self, message: dict[str, Any]) -> BotRow | None:
        """The bot the message is about, if the message is of its current attempt. A worker
        that runs a bot it should not (deleted while queued, or run again elsewhere after its
        worker was presumed lost) is told to let it go, without a final state."""
        row = self.store.get_row(str(message.get("bot_id")))
        if row is None or row.attempt != message.get("attempt") or row.final:
            worker = message.get("worker")
            if row is not None and worker and message.get("type") == "event":
                key = (str(worker), row.id, message.get("attempt"))
                if key not in self._let_go:
                    self._let_go.add(key)
                    attempt = message.get("attempt")
                    self.dispatcher.stop(
                        str(worker),
                        row.id,
                        "handoff",
                        attempt if isinstance(attempt, int) else None,
                    )
            return None
        return row

    def _on_event(self, message: dict[str, Any]) -> None:
        row = self._current(message)
        if row is None:
            return
        event = message["event"]
        at = float(message.get("t") or self.clock())
        kind = event.get("kind")
        if kind == "state":
            state = BotState(event["state"])
            self._set_state(
                row,
                state,
                event.get("reason"),
                event.get("detail"),
                worker=message.get("worker"),
                at=at,
            )
        elif kind == "media_connected":
            if self.store.set_media_connected(row.id):
                self._webhook(row, EventType.BOT_MEDIA_CONNECTED, {
                    "session_id": event.get("session_id"), "user_id": event.get("user_id"),
                })  # fmt: skip
        elif kind == "participant":
            present = bool(event["present"])
            changed = self.store.participant(
                row.id, event["user_id"], event.get("display_name"), present, at
            )
            if changed:
                kind_ = EventType.PARTICIPANT_JOINED if present else EventType.PARTICIPANT_LEFT
                data = {"user_id": event["user_id"], "display_name": event.get("display_name")}
                if not present:
                    data["reason"] = event.get("reason")
                self._webhook(row, kind_, data)
        elif kind in ("connection", "quality"):
            self.store.connection(row.id, event, at)
        elif kind == "transcript":
            with self.outbox.transaction():
                if self.store.transcript_chunk(row.id, event):
                    data = {k: v for k, v in event.items() if k != "kind"}
                    self._webhook(row, EventType.TRANSCRIPT_CHUNK, data)
        elif kind == "recording":
            with self.outbox.transaction():
                self.store.files(row.id, event["manifest"], event["files"])
                self._webhook(row, EventType.RECORDING_READY, {
                    "manifest": event["manifest"], "files": event["files"],
                })  # fmt: skip
        elif kind == "error":
            self.store.set_error(row.id, str(event.get("message")))

    def _on_done(self, message: dict[str, Any]) -> None:
        row = self._current(message)
        if row is None:
            return
        if message.get("handoff"):
            self._requeue(row, "handoff", f"worker {message.get('worker')} handed it back")
        else:
            self._set_state(
                row, BotState.FAILED, FailureReason.INTERNAL.value, "the bot stopped unreported"
            )

    def worker_lost(self, worker: str, bot_ids: list[str], why: str) -> None:
        """A worker died or hung: its bots run again elsewhere (or fail after max_attempts).
        A worker only taken for lost (cut off, or stalled) that comes back is told to let them
        go, so that no bot runs twice."""
        for bot_id in bot_ids:
            row = self.store.get_row(bot_id)
            if row is None or row.final or row.worker not in (worker, None):
                continue
            self.dispatcher.stop(worker, bot_id, "handoff", row.attempt)
            self._requeue(row, FailureReason.WORKER_LOST.value, f"worker {worker}: {why}")
        self._wake.set()

    def _requeue(self, row: BotRow, reason: str, detail: str) -> None:
        lost = reason == FailureReason.WORKER_LOST.value
        if lost and self.store.losses(row.id) + 1 >= self.max_attempts:
            self._set_state(
                row,
                BotState.FAILED,
                FailureReason.WORKER_LOST.value,
                f"{detail}; gave up after {self.max_attempts} workers were lost",
            )
            return
        self.metrics.requeued.inc()
        log.warning("bot %s queued again: %s", row.id, detail)
        self._set_state(row, BotState.QUEUED, reason, detail)
        self.store.assign(row.id, None, row.attempt)
        self._waiting[row.id] = None
        self._wake.set()

    # --- states and webhooks -------------------------------------------------------------------

    def _set_state(
        self,
        row: BotRow,
        state: BotState,
        reason: str | None,
        detail: str | None = None,
        *,
        worker: str | None = None,
        at: float | None = None,
    ) -> None:
        with self.outbox.transaction():
            self.store.set_state(row.id, state, reason, detail, worker=worker, at=at)
            self._webhook_state(row, state, reason, detail, row.state)
        if state is BotState.IN_MEETING:
            self.metrics.joins.inc()
            self.metrics.join_seconds.set(self.clock() - row.created_at)
        elif state is BotState.FAILED:
            self.metrics.failures.labels(reason or "internal").inc()
        elif state is BotState.ENDED:
            self.metrics.ended.labels(reason or "unknown").inc()
        if state in FINAL_STATES:
            self._waiting.pop(row.id, None)
        log.info("bot %s: %s%s", row.id, state.value, f" ({reason})" if reason else "")
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Until `predicate()` holds (checked at every state change); bound it with
        `asyncio.timeout`."""
        while not predicate():
            await self._changed.wait()

    def _webhook_state(
        self,
        row: BotRow,
        state: BotState,
        reason: str | None,
        detail: str | None,
        previous: BotState | None,
    ) -> None:
        self._webhook(row, EventType.BOT_STATE_CHANGED, {
            "state": state.value,
            "previous": previous.value if previous is not None else None,
            "reason": reason,
            "detail": detail,
        })  # fmt: skip

    def _webhook(self, row: BotRow, kind: EventType, data: dict[str, Any]) -> None:
        hook = row.webhook
        if hook is None:
            return
        url, secret = hook
        payload = {
            "bot_id": row.id,
            "meeting_id": row.meeting_id,
            "metadata": row.request.get("metadata") or {},
            **data,
        }
        self.outbox.enqueue(row.id, url, secret, kind, payload)
