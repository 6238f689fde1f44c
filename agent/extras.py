"""The optional parts of the agent and the extras that install them.

`pip install connvo-agent` is the agent itself (the bot role). The dev backend, the load runner and
the transcriber come with extras (pyproject.toml); whatever needs a missing one fails with one line
naming it, such as `pip install 'connvo-agent[devserver]'`.
"""

from __future__ import annotations

import importlib.util
import sys

import click

# extra -> the modules it brings (import names), as pyproject.toml declares the distributions
EXTRAS: dict[str, tuple[str, ...]] = {
    "devserver": ("starlette", "uvicorn", "httptools", "jwt"),
    "load": ("rich", "matplotlib"),
    "transcriber": ("webrtcvad", "pocketsphinx"),
    "vosk": ("webrtcvad", "vosk"),
    "faster-whisper": ("webrtcvad", "faster_whisper"),
    "service": ("standardwebhooks", "starlette", "uvicorn", "httptools", "redis"),
}


class MissingExtra(click.ClickException):
    """Something needs an extra that is not installed; the message is one line."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} needs the {extra!r} extra: pip install 'connvo-agent[{extra}]'")
        self.extra = extra


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    if module in sys.modules:
        # None there means "hidden": an import of it raises ImportError
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def has_extra(extra: str) -> bool:
    return all(installed(module) for module in EXTRAS[extra])


def require(extra: str, what: str) -> None:
    """Raise MissingExtra unless `extra` is installed; `what` names the part that needs it."""
    if not has_extra(extra):
        raise MissingExtra(what, extra)


def unavailable_command(name: str, extra: str, what: str, summary: str) -> click.Command:
    """A stand-in for a command whose extra is missing: listed by `--help`, and any use of it
    (its own `--help` included) is the one-line MissingExtra error."""

    def fail() -> None:
        raise MissingExtra(what, extra)

    return click.Command(
        name,
        callback=fail,
        help=f"{summary} (needs the {extra!r} extra).",
        short_help=f"{summary} (needs the {extra!r} extra).",
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
