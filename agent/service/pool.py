"""The local pool: `connvo-agent serve` without Redis runs its bots in a few worker processes of
its own (`connvo-agent worker --stdio`), started with the service and kept warm.

Each worker speaks JSON lines over its stdin and stdout (agent.service.worker). A worker that
exits, or that sends no heartbeat for `hung_after` seconds (its event loop is stuck: it is killed
with SIGKILL), is reported lost with its bots, which run again on the other workers; a new
worker takes its place. Bots go to the live worker with the fewest bots that has room.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.service.store import BotRow

if TYPE_CHECKING:
    from agent.service.control import Controller

log = logging.getLogger(__name__)

HUNG_AFTER_S = 10.0
RESPAWN_DELAY_S = 1.0


@dataclass
class _Worker:
    id: str
    process: asyncio.subprocess.Process
    capacity: int
    bots: set[str] = field(default_factory=set)
    ready: bool = False
    last_beat: float = field(default_factory=time.monotonic)
    beat: dict[str, Any] = field(default_factory=dict)
    lost: str | None = None  # why it was given up on


class LocalPool:
    def __init__(
        self,
        workers: int,
        bots_per_worker: int,
        *,
        hung_after: float = HUNG_AFTER_S,
        command: list[str] | None = None,
    ) -> None:
        self.size = workers
        self.bots_per_worker = bots_per_worker
        self.hung_after = hung_after
        # the worker's command line, without --max-bots and --worker-id
        self.command = command or [sys.executable, "-m", "agent", "worker", "--stdio"]
        self._workers: dict[str, _Worker] = {}
        self._controller: Controller | None = None
        self._closing = False
        self.all_ready = asyncio.Event()

    # --- Dispatcher ----------------------------------------------------------------------------

    async def run(self, controller: Controller) -> None:
        self._controller = controller
        async with asyncio.TaskGroup() as tasks:
            for _ in range(self.size):
                tasks.create_task(self._keep_one())
            tasks.create_task(self._watch_heartbeats())

    def submit(self, message: dict[str, Any]) -> str | bool | None:
        ready = [
            w for w in self._workers.values() if w.ready and not w.lost and
            len(w.bots) < w.capacity
        ]  # fmt: skip
        if not ready:
            return False
        worker = min(ready, key=lambda w: len(w.bots))
        worker.bots.add(str(message["bot_id"]))
        self._send(worker, message)
        return worker.id

    def stop(
        self, worker: str | None, bot_id: str, reason: str, attempt: int | None = None
    ) -> None:
        w = self._workers.get(worker or "")
        if w is not None and not w.lost:
            message = {"type": "stop", "bot_id": bot_id, "reason": reason, "attempt": attempt}
            self._send(w, message)

    def workers(self) -> dict[str, dict[str, Any]]:
        # its bots as handed to it, not as of its last heartbeat (up to a second old)
        return {
            w.id: {**w.beat, "bots": sorted(w.bots)}
            for w in self._workers.values()
            if w.ready and not w.lost
        }

    async def recover(self, bots: list[BotRow]) -> list[BotRow]:
        return bots  # the local workers died with the service: every one runs again

    async def shutdown(self, grace: float) -> None:
        """Close every worker's stdin (its bots leave without a final state, to be rejoined at
        the next start) and wait for them to exit; kill what is left after `grace` seconds."""
        self._closing = True
        for w in self._workers.values():
            if w.process.stdin is not None:
                with contextlib.suppress(Exception):
                    w.process.stdin.close()
        procs = [w.process for w in self._workers.values()]
        try:
            async with asyncio.timeout(grace):
                await asyncio.gather(*(p.wait() for p in procs))
        except TimeoutError:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
            await asyncio.gather(*(p.wait() for p in procs))

    # --- workers -------------------------------------------------------------------------------

    async def _keep_one(self) -> None:
        """One slot of the pool: a worker, replaced whenever it is lost."""
        while True:
            worker_id = f"local-{uuid.uuid4().hex[:8]}"
            process = await asyncio.create_subprocess_exec(
                *self.command,
                "--max-bots",
                str(self.bots_per_worker),
                "--worker-id",
                worker_id,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=16 * 1024 * 1024,
            )
            worker = _Worker(worker_id, process, self.bots_per_worker)
            self._workers[worker_id] = worker
            try:
                await self._read(worker)
                code = await process.wait()
            finally:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
                self._workers.pop(worker_id, None)
            why = worker.lost or f"exited with code {code}"
            log.error("worker %s lost: %s (%d bots)", worker_id, why, len(worker.bots))
            if self._closing:
                return  # its bots were handed back; any left are rejoined at the next start
            if self._controller is not None:
                self._controller.worker_lost(worker_id, sorted(worker.bots), why)
            await asyncio.sleep(RESPAWN_DELAY_S)

    async def _read(self, worker: _Worker) -> None:
        assert worker.process.stdout is not None
        while line := await worker.process.stdout.readline():
            try:
                message = json.loads(line)
            except ValueError:
                log.error("worker %s: unreadable message", worker.id)
                continue
            kind = message.get("type")
            if kind in ("heartbeat", "hello"):
                worker.last_beat = time.monotonic()
                worker.beat = message
                if kind == "hello":
                    worker.ready = True
                    if sum(w.ready for w in self._workers.values()) >= self.size:
                        self.all_ready.set()
            elif kind == "done":
                worker.bots.discard(str(message.get("bot_id")))
            if self._controller is not None:
                self._controller.on_message(message)

    async def _watch_heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.hung_after / 4)
            now = time.monotonic()
            for w in list(self._workers.values()):
                if w.ready and not w.lost and now - w.last_beat > self.hung_after:
                    w.lost = f"no heartbeat for {self.hung_after:.0f} s: killed"
                    log.error("worker %s hung; killing it", w.id)
                    with contextlib.suppress(ProcessLookupError):
                        w.process.kill()

    def _send(self, worker: _Worker, message: dict[str, Any]) -> None:
        stdin = worker.process.stdin
        if stdin is None or stdin.is_closing():
            return
        stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
