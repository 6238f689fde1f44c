"""`connvo-agent serve`: the HTTP API, the controller, the workers and the webhook deliverer in one
process, until SIGINT/SIGTERM.

On SIGTERM the API stops taking requests, the local workers' bots leave without a final state
(they are rejoined when the service starts again), the webhooks still pending get a few seconds
to go out, and the process exits 0. With `--redis`, no worker runs here: the workers are
`connvo-agent worker` processes, and their bots keep running while the service restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from agent.config import ConfigError
from agent.logsetup import setup_logging
from agent.service.app import ApiKeys, create_app
from agent.service.control import Controller, Dispatcher
from agent.service.pool import LocalPool
from agent.service.store import BotStore
from agent.service.webhooks import WebhookDeliverer, WebhookOutbox

log = logging.getLogger(__name__)

READY_PREFIX = "connvo-agent serve listening on "
STOP_TIMEOUT_S = 35.0  # the workers' own leave timeout, and a little more
WEBHOOK_DRAIN_S = 5.0
WORKERS_START_S = 60.0


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key_file: Path | None = None
    redis: str | None = None
    max_bots: int = 100
    state_dir: Path = Path("connvo-service")
    token_dir: Path | None = None  # where requests' token_file may point
    workers: int = 0  # local worker processes; 0: min(4, CPUs)
    worker_timeout: float = 10.0  # a local worker silent this long is killed
    log_level: str = "info"
    log_format: str = "text"


class _Server(uvicorn.Server):
    """uvicorn under our signal handling (the service stops in its own order)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def local_pool_size(options: ServeOptions) -> tuple[int, int]:
    """(worker processes, bots per worker) of the local pool."""
    workers = options.workers or min(4, os.cpu_count() or 1)
    workers = max(1, min(workers, options.max_bots))
    return workers, -(-options.max_bots // workers)


async def run_service(options: ServeOptions) -> int:
    setup_logging(options.log_level, options.log_format)
    if options.api_key_file is None:
        raise ConfigError("--api-key-file is required (one API key a line)")
    keys = ApiKeys(options.api_key_file)
    state_dir = options.state_dir.expanduser()
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        outbox = WebhookOutbox(state_dir / "service.sqlite")
    except OSError as exc:
        raise ConfigError(f"--state-dir {state_dir}: {exc.strerror or exc}") from None
    sock = _bind(options.host, options.port)
    dispatcher: Dispatcher
    pool: LocalPool | None = None
    if options.redis:
        from agent.service.redisq import RedisDispatcher

        dispatcher = RedisDispatcher(options.redis)
    else:
        workers, per_worker = local_pool_size(options)
        pool = LocalPool(workers, per_worker, hung_after=options.worker_timeout)
        dispatcher = pool
    store = BotStore(outbox)
    controller = Controller(store, dispatcher, state_dir)
    app = create_app(controller, keys, options.token_dir)
    config = uvicorn.Config(
        app,
        lifespan="off",
        access_log=False,
        log_level="warning",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=3,
    )
    server = _Server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    host, port = sock.getsockname()[:2]
    try:
        async with asyncio.TaskGroup() as tasks:
            deliverer = WebhookDeliverer(outbox)
            delivering = tasks.create_task(deliverer.run(), name="webhooks")
            dispatching = tasks.create_task(dispatcher.run(controller), name="dispatcher")
            controlling = tasks.create_task(controller.run(), name="controller")
            serving = tasks.create_task(server.serve(sockets=[sock]), name="http")
            # uvicorn offers no event for its start
            while not server.started and not serving.done():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            if pool is not None:  # ready means warm: the first bots wait for no process start
                try:
                    async with asyncio.timeout(WORKERS_START_S):
                        await pool.all_ready.wait()
                except TimeoutError:
                    log.warning("the local workers are not all up after %.0f s", WORKERS_START_S)
            shown = f"[{host}]" if ":" in host else host
            sys.stdout.write(f"{READY_PREFIX}http://{shown}:{port}\n")
            sys.stdout.flush()
            await stop.wait()
            log.info("stopping: no new requests; bots hand over")
            server.should_exit = True
            await serving
            controlling.cancel()
            if pool is not None:
                await pool.shutdown(STOP_TIMEOUT_S)
            dispatching.cancel()
            await deliverer.drain(WEBHOOK_DRAIN_S)
            delivering.cancel()
    finally:
        sock.close()
        outbox.close()
    return 0
