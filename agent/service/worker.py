"""A worker: runs the bots it is given, each in a task of its own, and reports on them.

The messages are JSON objects with a `type` (the same over a pipe and over Redis):

- to the worker: `start` {bot_id, attempt, request, directory}; `stop` {bot_id, reason} (reason:
  a LeaveReason value, or "handoff" to leave without a final state so that the bot runs again
  elsewhere);
- from the worker: `hello` {worker, pid, max_bots}; `heartbeat` {worker, bots, cpu}; `event`
  {worker, bot_id, attempt, t, event} (see agent.service.botrun); `done` {worker, bot_id,
  attempt} once a bot's task has ended.

One bot's failure never touches another's: each runs in its own task, and whatever it raises
becomes its `failed` state. A bot asked to stop that has not left `leave_timeout` later is
cancelled and reported failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.service.botrun import BotJob, run_bot
from agent.service.models import BotState, FailureReason

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], None]

HEARTBEAT_S = 1.0
LEAVE_TIMEOUT_S = 30.0


def new_worker_id() -> str:
    return f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class _Running:
    job: BotJob
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    deadline: asyncio.Task[None] | None = None  # cancels `task` if it does not leave in time


class WorkerCore:
    """The bots of one worker process. `run()` owns their tasks; `start`/`stop` steer them."""

    def __init__(
        self,
        worker_id: str,
        max_bots: int,
        send: Send,
        *,
        leave_timeout: float = LEAVE_TIMEOUT_S,
    ) -> None:
        self.worker_id = worker_id
        self.max_bots = max_bots
        self.send = send
        self.leave_timeout = leave_timeout
        self.bots: dict[str, _Running] = {}
        self._next: dict[str, dict[str, Any]] = {}  # bot id -> a start waiting for its old attempt
        self.draining = False
        self._tasks: asyncio.TaskGroup | None = None
        self.ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._cpu = (time.process_time(), time.monotonic())

    @property
    def free(self) -> int:
        return 0 if self.draining else max(0, self.max_bots - len(self.bots))

    async def run(self, until: asyncio.Event) -> None:
        """Run bots until `until` is set, then hand back what still runs (see `stop_all`)."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            self.ready.set()
            beat = tasks.create_task(self._heartbeat())
            await until.wait()
            beat.cancel()
        self._tasks = None

    def start(self, message: dict[str, Any]) -> None:
        bot_id = str(message["bot_id"])
        job = BotJob(
            bot_id, int(message["attempt"]), dict(message["request"]), Path(message["directory"])
        )
        running = self.bots.get(bot_id)
        if running is not None:
            if running.job.attempt >= job.attempt:
                log.warning("bot %s is already running here; start ignored", bot_id)
                return
            # a newer attempt (this worker was taken for lost, and the bot queued again): the
            # old one leaves without a final state, then the new one starts
            log.info("bot %s: attempt %d replaces attempt %d", bot_id, job.attempt,
                     running.job.attempt)  # fmt: skip
            self._next[bot_id] = message
            self.stop(bot_id, "handoff")
            return
        assert self._tasks is not None, "start() before run()"
        running = _Running(job)
        self.bots[bot_id] = running
        self._idle.clear()
        running.task = self._tasks.create_task(self._run(running), name=f"bot-{bot_id}")

    def stop(self, bot_id: str, reason: str, attempt: int | None = None) -> None:
        """Make the bot leave; with `attempt`, only if what runs is that attempt or older."""
        running = self.bots.get(bot_id)
        if running is None or running.stop.is_set():
            return
        if attempt is not None and running.job.attempt > attempt:
            return
        running.stop_reason[:] = [reason]
        running.stop.set()
        if self._tasks is not None:
            running.deadline = self._tasks.create_task(self._deadline(running))

    def stop_all(self, reason: str) -> None:
        for bot_id in list(self.bots):
            self.stop(bot_id, reason)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def hello(self) -> dict[str, Any]:
        return {
            "type": "hello",
            "worker": self.worker_id,
            "pid": os.getpid(),
            "max_bots": self.max_bots,
        }

    def heartbeat(self) -> dict[str, Any]:
        cpu_now, wall_now = time.process_time(), time.monotonic()
        cpu_then, wall_then = self._cpu
        self._cpu = (cpu_now, wall_now)
        cpu = (cpu_now - cpu_then) / max(1e-6, wall_now - wall_then)
        return {
            "type": "heartbeat",
            "worker": self.worker_id,
            "bots": sorted(self.bots),
            "max_bots": self.max_bots,
            "draining": self.draining,
            "cpu": round(cpu, 3),
        }

    async def _heartbeat(self) -> None:
        while True:
            self.send(self.heartbeat())
            await asyncio.sleep(HEARTBEAT_S)

    async def _run(self, running: _Running) -> None:
        job = running.job

        def emit(event: dict[str, Any]) -> None:
            self.send(
                {
                    "type": "event",
                    "worker": self.worker_id,
                    "bot_id": job.bot_id,
                    "attempt": job.attempt,
                    "t": time.time(),
                    "event": event,
                }
            )

        try:
            await run_bot(job, emit, running.stop, running.stop_reason)
        except asyncio.CancelledError:
            if not running.stop.is_set():
                raise
            # cancelled by its deadline: it did not leave in time
            if running.stop_reason != ["handoff"]:
                emit(
                    {
                        "kind": "state",
                        "state": BotState.FAILED.value,
                        "reason": FailureReason.INTERNAL.value,
                        "detail": f"did not leave within {self.leave_timeout:.0f} s",
                    }
                )
        finally:
            if running.deadline is not None:
                running.deadline.cancel()
            self.bots.pop(job.bot_id, None)
            waiting = self._next.pop(job.bot_id, None)
            if not self.bots and waiting is None:
                self._idle.set()
            self.send(
                {
                    "type": "done",
                    "worker": self.worker_id,
                    "bot_id": job.bot_id,
                    "attempt": job.attempt,
                    "handoff": running.stop_reason == ["handoff"],
                }
            )
            if waiting is not None and not self.draining:
                self.start(waiting)
            elif waiting is not None and not self.bots:
                self._idle.set()

    async def _deadline(self, running: _Running) -> None:
        await asyncio.sleep(self.leave_timeout)
        if running.task is not None and not running.task.done():
            log.error(
                "bot %s did not leave within %.0f s: cancelled",
                running.job.bot_id,
                self.leave_timeout,
            )
            running.task.cancel()


# --- over a pipe: the local pool's workers --------------------------------------------------


async def run_stdio_worker(max_bots: int, worker_id: str) -> int:
    """A worker of `connvo-agent serve`'s local pool: messages as JSON lines on stdin/stdout.

    The protocol gets stdout's file descriptor to itself; whatever else writes to stdout goes to
    stderr. EOF on stdin (the service is gone) ends the worker: its bots leave without a final
    state, since the service rejoins them when it starts again.
    """
    import json

    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out = os.fdopen(proto_fd, "w", buffering=1, encoding="utf-8")

    def send(message: dict[str, Any]) -> None:
        try:
            out.write(json.dumps(message, separators=(",", ":")) + "\n")
        except (BrokenPipeError, ValueError):
            pass  # the service is gone; EOF on stdin ends this worker

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    core = WorkerCore(worker_id, max_bots, send)
    until = asyncio.Event()

    async def commands() -> None:
        await core.ready.wait()
        send(core.hello())
        while line := await reader.readline():
            try:
                message = json.loads(line)
            except ValueError:
                log.error("worker: unreadable message ignored")
                continue
            match message.get("type"):
                case "start":
                    core.start(message)
                case "stop":
                    core.stop(
                        str(message["bot_id"]), str(message["reason"]), message.get("attempt")
                    )
        core.stop_all("handoff")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LEAVE_TIMEOUT_S):
                await core.wait_idle()
        until.set()

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(commands())
        await core.run(until)
    return 0
