"""Bots over Redis: the service queues them, `connvo-agent worker` processes on any machine take
them by capacity, and report through a stream.

Keys (all under `connvo:`):

- `queue` (list): `start` messages waiting for a worker. A worker with room (bots under
  `--max-bots`, CPU under `max_cpu`) moves one atomically (BLMOVE) onto its own `w:{id}:jobs`
  list, where it stays until the bot's task ends: a worker that dies leaves its jobs there.
- `workers` (set) and `w:{id}:alive` (its last heartbeat, expiring after `ALIVE_TTL_S`): a worker
  whose key expired is lost. The service then clears its jobs and queues its bots again (a new
  attempt; the state history says `queued`, reason `worker_lost`), so they rejoin on another
  worker within a few seconds.
- `w:{id}:commands` (list): `stop` messages for that worker.
- `events` (stream, consumer group `service`): everything workers report. The service
  acknowledges an entry once applied, so a service that restarts reads on where it stopped;
  bots keep running meanwhile.

SIGTERM on a worker drains it: it takes no more bots, lets its bots go on for `grace` seconds,
then hands the rest back (they leave, and are queued again for another worker) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as redis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from redis import Redis as SyncRedis
from redis.exceptions import RedisError, ResponseError

from agent.config import ConfigError
from agent.service.store import BotRow
from agent.service.worker import HEARTBEAT_S, WorkerCore

if TYPE_CHECKING:
    from agent.service.control import Controller

log = logging.getLogger(__name__)

PREFIX = "connvo:"
QUEUE = PREFIX + "queue"
WORKERS = PREFIX + "workers"
EVENTS = PREFIX + "events"
GROUP = "service"
ALIVE_TTL_S = 5.0  # a worker silent this long is lost
WATCH_S = 1.0  # how often the service looks for lost workers
EVENTS_MAXLEN = 1_000_000
# A worker's event loop that has not run for this long is hung: its heartbeat stops, and the
# service takes it for lost. Shorter stalls (a busy loop while bots join) keep it alive.
LOOP_STALL_S = 30.0


def alive_key(worker: str) -> str:
    return f"{PREFIX}w:{worker}:alive"


def jobs_key(worker: str) -> str:
    return f"{PREFIX}w:{worker}:jobs"


def commands_key(worker: str) -> str:
    return f"{PREFIX}w:{worker}:commands"


def shown_url(url: str) -> str:
    """The URL without its password (a Redis URL may carry one: redis://:secret@host)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _connect(url: str) -> Any:
    """A client answering str (decode_responses). Typed Any: redis-py's stubs give every
    command's answer as a union of bytes, str and awaitables, whichever the client."""
    try:
        return redis.Redis.from_url(url, decode_responses=True, health_check_interval=10)
    except ValueError as exc:
        raise ConfigError(f"--redis: {exc}") from None


# --- the service's side ---------------------------------------------------------------------


class RedisDispatcher:
    """The Dispatcher of `connvo-agent serve --redis URL`."""

    def __init__(self, url: str, *, consumer: str | None = None) -> None:
        self.url = url
        self.redis = _connect(url)
        self.consumer = consumer or f"service-{os.getpid()}"
        self._workers: dict[str, dict[str, Any]] = {}
        self._controller: Controller | None = None
        self._writes: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()

    async def run(self, controller: Controller) -> None:
        self._controller = controller
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._read_events(controller))
                tasks.create_task(self._watch_workers(controller))
                tasks.create_task(self._write())
        finally:
            await self.redis.aclose()

    def submit(self, message: dict[str, Any]) -> str | bool | None:
        self._writes.put_nowait(("lpush", QUEUE, json.dumps(message)))
        return None

    def stop(
        self, worker: str | None, bot_id: str, reason: str, attempt: int | None = None
    ) -> None:
        message = {"type": "stop", "bot_id": bot_id, "reason": reason, "attempt": attempt}
        stop = json.dumps(message)
        if worker:
            self._writes.put_nowait(("rpush", commands_key(worker), stop))
        else:
            # not taken yet, or taken by a worker not yet heard of: every worker is told
            for w in list(self._workers):
                self._writes.put_nowait(("rpush", commands_key(w), stop))

    def workers(self) -> dict[str, dict[str, Any]]:
        return dict(self._workers)

    async def recover(self, bots: list[BotRow]) -> list[BotRow]:
        """Bots still queued or on a live worker (with their current attempt) go on as they
        are; the others run again."""
        known: dict[str, int] = {}
        for raw in await self.redis.lrange(QUEUE, 0, -1):
            m = json.loads(raw)
            known[m["bot_id"]] = m["attempt"]
        for worker in await self.redis.smembers(WORKERS):
            if await self.redis.exists(alive_key(worker)):
                for raw in await self.redis.lrange(jobs_key(worker), 0, -1):
                    m = json.loads(raw)
                    known[m["bot_id"]] = m["attempt"]
        return [b for b in bots if known.get(b.id) != b.attempt]

    async def _write(self) -> None:
        while True:
            op, key, value = await self._writes.get()
            while True:
                try:
                    await getattr(self.redis, op)(key, value)
                    break
                except RedisError as exc:
                    log.warning("redis: %s; retrying", exc)
                    await asyncio.sleep(1.0)

    async def _read_events(self, controller: Controller) -> None:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
            await self.redis.xgroup_create(EVENTS, GROUP, id="0", mkstream=True)
        backlog = True  # first what was delivered to this consumer and never acknowledged
        while True:
            try:
                answer = await self.redis.xreadgroup(
                    GROUP, self.consumer, {EVENTS: "0" if backlog else ">"}, count=500, block=1000
                )
            except RedisError as exc:
                log.warning("redis: %s; reading events again in 1 s", exc)
                await asyncio.sleep(1.0)
                continue
            entries = answer[0][1] if answer else []
            if backlog and not entries:
                backlog = False
                continue
            ids = []
            for entry_id, fields in entries:
                ids.append(entry_id)
                try:
                    message = json.loads(fields["m"])
                except (KeyError, ValueError):
                    log.error("redis: unreadable event %s skipped", entry_id)
                    continue
                if message.get("type") == "heartbeat":
                    continue
                try:
                    controller.on_message(message)
                except Exception:  # one bad event must not stop the others
                    log.exception("event %s could not be applied", entry_id)
            if ids:
                await self.redis.xack(EVENTS, GROUP, *ids)

    async def _watch_workers(self, controller: Controller) -> None:
        while True:
            try:
                await self._check_workers(controller)
            except RedisError as exc:
                log.warning("redis: %s", exc)
            await asyncio.sleep(WATCH_S)

    async def _check_workers(self, controller: Controller) -> None:
        seen: dict[str, dict[str, Any]] = {}
        for worker in await self.redis.smembers(WORKERS):
            beat = await self.redis.get(alive_key(worker))
            if beat is not None:
                seen[worker] = json.loads(beat)
                continue
            # lost: its jobs go back through the controller (a new attempt each)
            jobs = await self.redis.lrange(jobs_key(worker), 0, -1)
            bot_ids = [json.loads(j)["bot_id"] for j in jobs]
            log.error("worker %s lost (no heartbeat for %.0f s): %d bots", worker,
                      ALIVE_TTL_S, len(bot_ids))  # fmt: skip
            controller.worker_lost(worker, bot_ids, f"no heartbeat for {ALIVE_TTL_S:.0f} s")
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(jobs_key(worker), commands_key(worker))
                pipe.srem(WORKERS, worker)
                await pipe.execute()
        self._workers = seen
        controller.capacity_changed()


# --- the worker's side ----------------------------------------------------------------------


class _Heartbeat(threading.Thread):
    """Keeps the worker's alive key fresh from a thread of its own, with its own connection.

    From the event loop, a heartbeat would wait behind everything the loop has to do: a worker
    busy with bots joining sent them seconds late, its key ran out, and the service took it for
    lost while its bots ran on. The loop still shows it is alive: each heartbeat it makes
    (`beat`) is what the thread writes, and once the loop has made none for LOOP_STALL_S the
    thread stops writing."""

    def __init__(self, url: str, worker_id: str) -> None:
        super().__init__(name=f"heartbeat-{worker_id}", daemon=True)
        self.client: Any = SyncRedis.from_url(url, decode_responses=True)
        self.key = alive_key(worker_id)
        self.worker_id = worker_id
        self.stopping = threading.Event()
        self._latest = "{}"
        self._loop_seen = time.monotonic()

    def beat(self, heartbeat: dict[str, Any]) -> None:
        """From the event loop: its latest heartbeat (and the proof that it runs)."""
        self._latest = json.dumps(heartbeat)
        self._loop_seen = time.monotonic()

    def run(self) -> None:
        try:
            while not self.stopping.wait(HEARTBEAT_S):
                if time.monotonic() - self._loop_seen > LOOP_STALL_S:
                    continue  # hung: let the key run out
                try:
                    with self.client.pipeline(transaction=False) as pipe:
                        pipe.set(self.key, self._latest, px=int(ALIVE_TTL_S * 1000))
                        # listed again if the service took it for lost and dropped it
                        pipe.sadd(WORKERS, self.worker_id)
                        pipe.execute()
                except RedisError as exc:
                    log.warning("redis: heartbeat: %s", exc)
        finally:
            self.client.close()


@dataclass
class RedisWorkerOptions:
    url: str
    worker_id: str
    max_bots: int
    state_dir: Path | None = None  # where bots' files go; None: where the service says
    metrics_port: int | None = None
    grace: float = 30.0
    max_cpu: float = 0.9  # cores: take no bot while the last heartbeat's CPU is above this


class RedisWorker:
    def __init__(self, options: RedisWorkerOptions) -> None:
        self.options = options
        self.id = options.worker_id
        self.redis = _connect(options.url)
        self.core = WorkerCore(self.id, options.max_bots, self._send)
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        # (bot id, attempt) -> its raw start message in w:{id}:jobs
        self._jobs: dict[tuple[str, int], str] = {}
        self._room = asyncio.Event()
        self._cpu = 0.0
        self._heartbeat = _Heartbeat(options.url, self.id)
        self.registry = CollectorRegistry()
        self.bots_gauge = Gauge(
            "connvo_worker_bots", "Bots running on this worker.", registry=self.registry
        )
        self.capacity_gauge = Gauge(
            "connvo_worker_capacity", "Bots this worker takes.", registry=self.registry
        )
        self.capacity_gauge.set(options.max_bots)

    def _send(self, message: dict[str, Any]) -> None:
        if message.get("type") == "heartbeat":
            self._cpu = float(message.get("cpu", 0.0))
            self.bots_gauge.set(len(message.get("bots", [])))
            self._heartbeat.beat(message)  # written by the heartbeat thread, not queued
            return
        if message.get("type") == "done":
            self._room.set()
        self._outbox.put_nowait(message)

    async def run(self) -> int:
        try:
            await self.redis.ping()
        except RedisError as exc:
            where = shown_url(self.options.url)
            raise ConfigError(f"--redis: cannot reach {where}: {exc}") from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        until = asyncio.Event()
        runner: web.AppRunner | None = None
        if self.options.metrics_port is not None:
            runner = await self._serve_metrics(self.options.metrics_port)
        await self.redis.sadd(WORKERS, self.id)
        first = self.core.heartbeat()
        self._heartbeat.beat(first)
        await self._beat(first)
        self._heartbeat.start()
        log.info("worker %s: taking up to %d bots", self.id, self.options.max_bots)
        try:
            async with asyncio.TaskGroup() as tasks:
                core = tasks.create_task(self.core.run(until))
                writer = tasks.create_task(self._write())
                taker = tasks.create_task(self._take())
                commands = tasks.create_task(self._commands())
                await stop.wait()
                await self._drain(taker)
                commands.cancel()
                until.set()
                await core
                await self._flush()
                writer.cancel()
        finally:
            self._heartbeat.stopping.set()
            await asyncio.to_thread(self._heartbeat.join, 5.0)
            with contextlib.suppress(RedisError):
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.delete(alive_key(self.id), commands_key(self.id), jobs_key(self.id))
                    pipe.srem(WORKERS, self.id)
                    await pipe.execute()
            await self.redis.aclose()
            if runner is not None:
                await runner.cleanup()
        log.info("worker %s: stopped", self.id)
        return 0

    async def _drain(self, taker: asyncio.Task[None]) -> None:
        """Stop taking bots; give the running ones `grace` seconds; hand the rest back."""
        self.core.draining = True
        taker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await taker
        if self.core.bots:
            log.info("worker %s draining: %d bots, %.0f s of grace", self.id,
                     len(self.core.bots), self.options.grace)  # fmt: skip
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.options.grace):
                    await self.core.wait_idle()
        self.core.stop_all("handoff")
        await self.core.wait_idle()

    async def _take(self) -> None:
        """Move one start message from the queue onto this worker's jobs whenever it has room."""
        while True:
            if self.core.free <= 0 or self._cpu > self.options.max_cpu:
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):  # CPU is re-read at each heartbeat
                        await self._room.wait()
                continue
            try:
                raw = await self.redis.blmove(QUEUE, jobs_key(self.id), 1, "RIGHT", "LEFT")
            except RedisError as exc:
                log.warning("redis: %s; taking again in 1 s", exc)
                await asyncio.sleep(1.0)
                continue
            if raw is None:
                continue
            message = json.loads(raw)
            if self.options.state_dir is not None:
                message["directory"] = str(self.options.state_dir / message["bot_id"])
            self._jobs[(message["bot_id"], int(message["attempt"]))] = raw
            self.core.start(message)

    async def _commands(self) -> None:
        while True:
            try:
                answer = await self.redis.blpop([commands_key(self.id)], timeout=1.0)
            except RedisError as exc:
                log.warning("redis: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if answer is None:
                continue
            message = json.loads(answer[1])
            if message.get("type") == "stop":
                self.core.stop(
                    str(message["bot_id"]), str(message["reason"]), message.get("attempt")
                )

    async def _write(self) -> None:
        while True:
            message = await self._outbox.get()
            await self._deliver(message)
            self._outbox.task_done()

    async def _flush(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10.0):
                await self._outbox.join()

    async def _deliver(self, message: dict[str, Any]) -> None:
        while True:
            try:
                await self.redis.xadd(
                    EVENTS, {"m": json.dumps(message)}, maxlen=EVENTS_MAXLEN, approximate=True
                )
                if message.get("type") == "done":
                    job = (str(message["bot_id"]), int(message["attempt"]))
                    raw = self._jobs.pop(job, None)
                    if raw is not None:
                        await self.redis.lrem(jobs_key(self.id), 1, raw)
                return
            except RedisError as exc:
                log.warning("redis: %s; sending again in 1 s", exc)
                await asyncio.sleep(1.0)

    async def _beat(self, heartbeat: dict[str, Any]) -> None:
        await self.redis.set(alive_key(self.id), json.dumps(heartbeat), px=int(ALIVE_TTL_S * 1000))

    async def _serve_metrics(self, port: int) -> web.AppRunner:
        async def metrics(request: web.Request) -> web.Response:
            body = generate_latest(self.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def healthz(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "bots": len(self.core.bots)})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "0.0.0.0", port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"--metrics-port {port}: {exc.strerror or exc}") from None
        return runner


async def run_redis_worker(options: RedisWorkerOptions) -> int:
    return await RedisWorker(options).run()
