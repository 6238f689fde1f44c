"""Run the dev backend under uvicorn on a socket we bind ourselves (so `--port 0` reports the real
port), print the ready line, and stop cleanly with exit status 0 on SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sqlite3
import sys
import threading
from collections.abc import Generator, Sequence
from pathlib import Path
from types import FrameType

import uvicorn

from agent.devserver.app import DevServerApp
from agent.devserver.ids import IdMode
from agent.devserver.store import Store

READY_PREFIX = "connvo-agent devserver listening on "


class ServeError(Exception):
    """The server cannot start: the address cannot be bound or the database cannot be used."""


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # lets a restarted server take its old port back while old connections sit in TIME_WAIT
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn.Server that announces readiness and exits 0 on signals (uvicorn re-raises them)."""

    def __init__(self, config: uvicorn.Config, announce: str) -> None:
        super().__init__(config)
        self._announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            sys.stdout.write(self._announce + "\n")
            sys.stdout.flush()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(sig: int, frame: FrameType | None) -> None:
            if self.should_exit:  # a second signal: stop waiting for open connections
                self.force_exit = True
            self.should_exit = True

        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, stop) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def serve(
    *,
    host: str,
    port: int,
    db: Path,
    generation: int = 2,
    ids: IdMode = "random",
    admin_key: str,
    ice_servers: Sequence[str] = (),
    error_status: int = 200,
    redact: bool = False,
    transcript_rate_limit: tuple[int, float] = (50, 60.0),
    access_log: bool = False,
    log_level: str = "warning",
    show_admin_key: bool = False,
) -> None:
    """Serve until SIGINT/SIGTERM; ServeError when the address or the database is unusable."""
    try:
        store = Store(db, ids=ids)
        store.jwt_secret()
    except (OSError, sqlite3.Error) as exc:
        raise ServeError(f"cannot use database {db}: {exc}") from None
    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        store.close()
        raise ServeError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    try:
        app = DevServerApp(
            store,
            generation=generation,
            admin_key=admin_key,
            ice_servers=ice_servers,
            error_status=error_status,
            redact=redact,
            transcript_rate_limit=transcript_rate_limit,
        )
        real_host, real_port = sock.getsockname()[:2]
        shown = f"[{real_host}]" if ":" in real_host else real_host
        config = uvicorn.Config(
            app,
            loop=_loop(),
            lifespan="off",
            access_log=access_log,
            log_level=log_level,
            proxy_headers=False,
            server_header=False,
            interface="asgi3",
            timeout_graceful_shutdown=3,
        )
        logging.getLogger("connvo.devserver").setLevel(log_level.upper())
        if show_admin_key:  # generated: the operator needs it; stdout keeps only the ready line
            sys.stderr.write(f"connvo-agent devserver: admin key: {admin_key}\n")
            sys.stderr.flush()
        _Server(config, f"{READY_PREFIX}http://{shown}:{real_port}").run(sockets=[sock])
    finally:
        store.close()
        sock.close()
