"""`connvo-agent demo`: dev backend, a bot and a guest on this machine; media both ways."""

from __future__ import annotations

import click

from agent.cli.loop import run_async


@click.command("demo")
@click.option(
    "--seconds",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="How long media flows once both sides are connected.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
)
def demo_command(seconds: float, log_level: str) -> int:
    """Start a dev backend, a bot and a second participant; show media flowing both ways."""
    from agent.logsetup import setup_logging
    from agent.roles.demo import run_demo

    setup_logging(log_level)

    async def main() -> int:
        result = await run_demo(seconds)
        return 0 if result.ok else 1

    return run_async(main())
