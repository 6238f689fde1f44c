"""`connvo-agent devserver`: run the dev backend, or issue tokens and meetings in its database."""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
from pathlib import Path

import click

from agent.devserver import admin
from agent.devserver.store import default_db_path

ADMIN_KEY_ENV = "CONNVO_DEVSERVER_ADMIN_KEY"
ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")

_db_option = click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="SQLite database file [default: $XDG_STATE_HOME/connvo-agent/devserver.sqlite]",
)


def _db(path: Path | None) -> Path:
    return path if path is not None else default_db_path()


def _rate_limit(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, float]:
    chunks, _, seconds = value.partition("/")
    try:
        limit = (int(chunks), float(seconds))
    except ValueError:
        limit = (0, 0.0)
    if limit[0] < 1 or not limit[1] > 0:
        raise click.BadParameter(f"{value!r} is not CHUNKS/SECONDS, such as 50/60")
    return limit


def _ice_server(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[str]:
    for url in values:
        if not url.startswith(ICE_SCHEMES) or len(url) <= len(url.split(":")[0]) + 1:
            raise click.BadParameter(f"{url!r} is not a stun:/stuns:/turn:/turns: URL")
    return list(values)


@click.group(invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=3210,
    show_default=True,
    help="Port to listen on (0 picks a free one).",
)
@_db_option
@click.option(
    "--generation",
    type=click.Choice(["1", "2"]),
    default="2",
    show_default=True,
    help="Server generation of getPendingSignals/markSignalsProcessed.",
)
@click.option(
    "--ids",
    "id_mode",
    type=click.Choice(["random", "ordered"]),
    default="random",
    show_default=True,
    help="Whether new IDs sort in insertion order.",
)
@click.option(
    "--admin-key",
    default=None,
    help=f"Key for /admin/* (or ${ADMIN_KEY_ENV}; generated and printed when neither is set).",
)
@click.option(
    "--ice-server",
    "ice_servers",
    multiple=True,
    callback=_ice_server,
    metavar="URL",
    help="ICE server URL returned to clients (repeatable; none by default).",
)
@click.option(
    "--error-status",
    type=click.Choice(["200", "400", "560"]),
    default="200",
    show_default=True,
    help="HTTP status of function errors (200: open-source Convex; 400: the published spec).",
)
@click.option(
    "--redact",
    is_flag=True,
    default=False,
    help='Production-style error messages: nothing after "Server Error".',
)
@click.option(
    "--transcript-rate-limit",
    default="50/60",
    show_default=True,
    callback=_rate_limit,
    metavar="CHUNKS/SECONDS",
    help="Transcript chunks each user may post per window (Connvo's: 50 a minute).",
)
@click.option("--access-log/--no-access-log", default=False, help="Log every request.")
@click.pass_context
def devserver(
    ctx: click.Context,
    host: str,
    port: int,
    db: Path | None,
    generation: str,
    id_mode: str,
    admin_key: str | None,
    ice_servers: list[str],
    error_status: str,
    redact: bool,
    transcript_rate_limit: tuple[int, float],
    access_log: bool,
) -> None:
    """Run the local dev backend (a Convex-compatible HTTP API over SQLite)."""
    if ctx.invoked_subcommand is not None:
        return
    from agent.devserver.server import ServeError, serve

    key = admin_key if admin_key is not None else os.environ.get(ADMIN_KEY_ENV)
    if key is not None and not key.strip():
        raise click.BadParameter("must not be empty", param_hint="'--admin-key'")
    generated = key is None
    if key is None:
        key = secrets.token_urlsafe(24)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        serve(
            host=host,
            port=port,
            db=_db(db),
            generation=int(generation),
            ids="ordered" if id_mode == "ordered" else "random",
            admin_key=key,
            ice_servers=ice_servers,
            error_status=int(error_status),
            redact=redact,
            transcript_rate_limit=transcript_rate_limit,
            access_log=access_log,
            show_admin_key=generated,
        )
    except ServeError as exc:
        raise click.ClickException(str(exc)) from None


@devserver.command()
@_db_option
@click.option("--user", required=True, help="User name (created if missing).")
@click.option(
    "--ttl",
    type=click.IntRange(1, 10 * 365 * 24 * 3600),
    default=24 * 3600,
    show_default=True,
    help="Token lifetime in seconds.",
)
@click.option(
    "--unprovisioned",
    is_flag=True,
    default=False,
    help="A token that verifies but has no Connvo user behind it (none is created).",
)
def token(db: Path | None, user: str, ttl: int, unprovisioned: bool) -> None:
    """Print a bearer token for USER."""
    path = _db(db)
    try:
        if unprovisioned:
            click.echo(admin.issue_unprovisioned_token(path, user, ttl))
        else:
            click.echo(admin.issue_token(path, user, ttl))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--user'") from None
    except (sqlite3.Error, OSError) as exc:
        raise click.ClickException(f"cannot use database {path}: {exc}") from None


@devserver.command()
@_db_option
@click.option("--host", "host_name", required=True, help="Host user name (created if missing).")
@click.option(
    "--participant", "participants", multiple=True, help="Participant user name (repeatable)."
)
@click.option("--title", default="Dev meeting", show_default=True)
@click.option(
    "--scheduled",
    is_flag=True,
    default=False,
    help="Create it scheduled (the host starts it with startMeeting) instead of active.",
)
def meeting(
    db: Path | None, host_name: str, participants: tuple[str, ...], title: str, scheduled: bool
) -> None:
    """Create an active (or scheduled) meeting and print its ID."""
    path = _db(db)
    state: admin.MeetingStartState = "scheduled" if scheduled else "active"
    try:
        click.echo(admin.create_meeting(path, host_name, participants, title=title, state=state))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    except (sqlite3.Error, OSError) as exc:
        raise click.ClickException(f"cannot use database {path}: {exc}") from None
