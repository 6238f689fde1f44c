"""`connvo-agent run`: join a meeting as a bot (or another role) until SIGINT/SIGTERM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from agent.cli.loop import run_async


@click.command("run")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML settings file (also CONNVO_CONFIG).",
)
@click.option("--url", default=None, help="Convex deployment URL, e.g. https://x.convex.cloud")
@click.option("--token", default=None, help="Bearer token (prefer --token-file or CONNVO_TOKEN).")
@click.option(
    "--token-file",
    type=click.Path(path_type=Path),
    default=None,
    help="File holding the token; re-read after an auth error (rotation).",
)
@click.option("--meeting", default=None, help="Meeting ID to join.")
@click.option("--role", type=click.Choice(["bot", "recorder", "transcriber"]), default=None)
@click.option("--audio", default=None, help="tone | silence | none | FILE (looped)")
@click.option("--video", default=None, help="testsrc | none | FILE (looped)")
@click.option(
    "--receive",
    type=click.Choice(["count", "decode"]),
    default=None,
    help="Bot: count received RTP without decoding (default), or decode every frame.",
)
@click.option(
    "--call-everyone/--answer-only",
    default=None,
    help="Offer to every participant found (default: answer only).",
)
@click.option("--state-dir", type=click.Path(path_type=Path), default=None)
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics here.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.option(
    "--ca-bundle",
    type=click.Path(path_type=Path),
    default=None,
    help="CA bundle for TLS verification (verification is always on).",
)
@click.option(
    "--ice-host",
    "ice_host_addresses",
    multiple=True,
    help="Gather host candidates only on this local address (repeatable).",
)
@click.option("--session-id", default=None, help="Own WebRTC session id (default: random).")
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Output directory (recorder)."
)
@click.option(
    "--stt-engine",
    type=click.Choice(["pocketsphinx", "vosk", "faster-whisper"]),
    default=None,
    help="Transcriber: speech-to-text engine (pocketsphinx works offline).",
)
@click.option("--stt-model", default=None, help="Transcriber: model path (vosk, faster-whisper).")
@click.option("--language", default=None, help="Transcriber: language tag, e.g. en-US.")
@click.option("--vad-aggressiveness", type=int, default=None, help="Transcriber: VAD mode 0-3.")
@click.option(
    "--transcript-interim/--no-transcript-interim",
    default=None,
    help="Transcriber: also post interim results.",
)
@click.option(
    "--duration",
    type=float,
    default=None,
    help="Leave after this many seconds (default: run until signalled).",
)
def run_command(config_file: Path | None, **flags: Any) -> int:
    """Join a meeting and stay until SIGINT or SIGTERM."""
    from agent.config import ConfigError, load_settings
    from agent.convex import ConvexError
    from agent.roles.run import run_role

    flags["ice_host_addresses"] = list(flags["ice_host_addresses"]) or None
    overrides = {k: v for k, v in flags.items() if v is not None}
    try:
        settings = load_settings(config_file, overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        return run_async(run_role(settings))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except ConvexError as exc:
        # Could not join: unreachable backend, rejected token, not a participant...
        raise click.ClickException(f"backend: {exc}") from None
