"""Running a coroutine as a command (`run_async`, from agent.aio), errors as one line."""

from __future__ import annotations

import click

from agent.aio import run_async

__all__ = ["CommandError", "run_async"]


class CommandError(click.ClickException):
    """A failure the user can act on, printed as one line."""
