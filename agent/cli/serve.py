"""`connvo-agent serve` (the HTTP service) and `connvo-agent worker` (its workers on Redis)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from agent.cli.loop import CommandError, run_async
from agent.config import ConfigError
from agent.extras import require


def _logging(command: Callable[..., Any]) -> Callable[..., Any]:
    """--log-level and --log-format, as `connvo-agent run` has them."""
    levels = click.Choice(["debug", "info", "warning", "error"])
    command = click.option("--log-format", type=click.Choice(["text", "json"]), default="text")(
        command
    )
    return click.option("--log-level", type=levels, default="info", show_default=True)(command)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--api-key-file",
    type=click.Path(path_type=Path),
    envvar="CONNVO_API_KEY_FILE",
    required=True,
    help="API keys, one a line; every route but /healthz and /metrics needs one "
    "(Authorization: Bearer <key>).",
)
@click.option(
    "--redis",
    "redis_url",
    default=None,
    envvar="CONNVO_REDIS_URL",
    help="Redis URL: bots go to `connvo-agent worker` processes through it. Without it, bots "
    "run in worker processes of this machine.",
)
@click.option(
    "--max-bots",
    type=click.IntRange(1, 100_000),
    default=100,
    show_default=True,
    help="Bots running at once on this machine's workers (without --redis).",
)
@click.option(
    "--workers",
    type=click.IntRange(0, 64),
    default=0,
    show_default=True,
    help="Local worker processes (without --redis); 0: one per CPU, at most 4.",
)
@click.option(
    "--worker-timeout",
    type=click.FloatRange(1, 3600),
    default=10.0,
    show_default=True,
    help="A local worker silent this long is hung: killed, its bots run again elsewhere.",
)
@click.option(
    "--token-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Requests may name a `token_file` in this directory (relative to it); without it, "
    "they must carry `token`. Workers read the file at the same path.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=Path("connvo-service"),
    show_default=True,
    help="The service's database and the bots' files.",
)
@_logging
def serve_command(
    host: str,
    port: int,
    api_key_file: Path,
    redis_url: str | None,
    max_bots: int,
    workers: int,
    worker_timeout: float,
    token_dir: Path | None,
    state_dir: Path,
    log_level: str,
    log_format: str,
) -> int:
    """Serve the HTTP API that sends bots into meetings (docs/service.md)."""
    require("service", "connvo-agent serve")
    from agent.service.serve import ServeOptions, run_service

    options = ServeOptions(
        host=host,
        port=port,
        api_key_file=api_key_file,
        redis=redis_url,
        max_bots=max_bots,
        workers=workers,
        worker_timeout=worker_timeout,
        token_dir=token_dir,
        state_dir=state_dir,
        log_level=log_level,
        log_format=log_format,
    )
    try:
        return run_async(run_service(options))
    except ConfigError as exc:
        raise CommandError(str(exc)) from None


@click.command("worker")
@click.option(
    "--redis",
    "redis_url",
    default=None,
    envvar="CONNVO_REDIS_URL",
    help="Redis URL of the service's queue.",
)
@click.option(
    "--max-bots",
    type=click.IntRange(1, 10_000),
    default=50,
    show_default=True,
    help="Bots this worker runs at once.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where bots keep their files (shared with the service for downloads); "
    "default: the directory the service names.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve /metrics and /healthz on this port.",
)
@click.option(
    "--grace",
    type=click.FloatRange(0, 3600),
    default=30.0,
    show_default=True,
    help="On SIGTERM: seconds the bots may go on before they are handed back to the queue.",
)
@_logging
@click.option("--stdio", is_flag=True, hidden=True, help="A worker of serve's local pool.")
@click.option("--worker-id", default=None, hidden=True)
def worker_command(
    redis_url: str | None,
    max_bots: int,
    state_dir: Path | None,
    metrics_port: int | None,
    grace: float,
    log_level: str,
    log_format: str,
    stdio: bool,
    worker_id: str | None,
) -> int:
    """Run bots taken from the service's Redis queue (docs/service.md)."""
    require("service", "connvo-agent worker")
    from agent.logsetup import setup_logging
    from agent.service.worker import new_worker_id, run_stdio_worker

    setup_logging(log_level, log_format)
    wid = worker_id or new_worker_id()
    if stdio:
        return run_async(run_stdio_worker(max_bots, wid))
    if not redis_url:
        raise click.UsageError("--redis URL is required (or CONNVO_REDIS_URL)")
    from agent.service.redisq import RedisWorkerOptions, run_redis_worker

    options = RedisWorkerOptions(
        redis_url, wid, max_bots, state_dir, metrics_port=metrics_port, grace=grace
    )
    try:
        return run_async(run_redis_worker(options))
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
