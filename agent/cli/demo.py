"""`connvo-agent demo`: dev backend, a bot and a guest on this machine; media both ways."""

from __future__ import annotations

import tempfile
from pathlib import Path

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
    from agent.extras import require

    require("devserver", "the demo")
    # The dev backend is started here, by the layer allowed to reach it; the role only talks to it.
    from agent.devserver.process import DevServerProcess
    from agent.logsetup import setup_logging
    from agent.patches import install as install_patches
    from agent.roles.demo import run_demo

    setup_logging(log_level)
    install_patches()  # the agent's changes inside aiortc and aioice, as `connvo-agent run` does

    with (
        tempfile.TemporaryDirectory(prefix="connvo-demo-") as tmp,
        DevServerProcess(Path(tmp) / "devserver.sqlite") as server,
    ):

        async def main() -> int:
            result = await run_demo(server, Path(tmp), seconds)
            return 0 if result.ok else 1

        return run_async(main())
