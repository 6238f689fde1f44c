"""The `connvo-agent` command: a click group whose subcommands live next to what they run."""

from __future__ import annotations

import faulthandler
import signal
import sys

import click

from agent import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="connvo-agent")
def cli() -> None:
    """A headless WebRTC participant for Connvo meetings."""


def _register_subcommands() -> None:
    # Imported here so `connvo-agent --help` stays fast and each layer owns its own commands.
    from agent.cli.demo import demo_command
    from agent.cli.load import load_command, report_group
    from agent.cli.run import run_command
    from agent.cli.serve import serve_command, worker_command
    from agent.extras import has_extra, unavailable_command

    cli.add_command(run_command)
    cli.add_command(demo_command)
    cli.add_command(load_command)
    cli.add_command(report_group)
    cli.add_command(serve_command)
    cli.add_command(worker_command)
    if has_extra("devserver"):
        from agent.devserver.cli import devserver

        cli.add_command(devserver)
    else:
        cli.add_command(
            unavailable_command(
                "devserver", "devserver", "the dev backend", "Run the local dev backend"
            )
        )


def __getattr__(name: str) -> click.Group:
    # `agent.cli.main.full_cli`: the group with every subcommand registered, for the generated
    # CLI reference (mkdocs-click loads a command by attribute); registering stays lazy otherwise.
    if name == "full_cli":
        _register_subcommands()
        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; usage and config errors become one line on stderr, never a traceback."""
    _register_subcommands()
    if hasattr(signal, "SIGUSR1"):
        # `kill -USR1 <pid>`: every thread's stack on stderr, for a process that seems stuck
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        rv = cli.main(args=argv, prog_name="connvo-agent", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("connvo-agent: aborted", err=True)
        return 130
    except click.ClickException as exc:
        click.echo(f"connvo-agent: error: {exc.format_message()}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
