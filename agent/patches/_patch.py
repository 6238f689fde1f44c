"""What every patch is: a name, what it replaces, why, its fallback, and how to put it in place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

# The versions every patch was read against and tested with. A different installed version is
# reported by `agent.patches.install()` (a warning) and fails tests/patches/test_patch_versions.py.
VERIFIED_VERSIONS: Final = MappingProxyType(
    {"aiortc": "1.16.0", "aioice": "0.13.0", "av": "18.1.0", "pylibsrtp": "1.0.0"}
)


@dataclass(eq=False)
class Patch:
    """One change inside aiortc or aioice, installed by `agent.patches.install()`.

    `apply` makes the change and returns None, or returns why it cannot (an internal it relies on
    has moved) and changes nothing; `restore` undoes it. While `installed` is False the agent
    takes the `fallback` path.
    """

    name: str
    replaces: tuple[str, ...]  # what it replaces or reaches into, as dotted paths
    why: str
    fallback: str  # what runs instead while it is not installed
    libraries: tuple[str, ...]  # whose internals it depends on (keys of VERIFIED_VERSIONS)
    apply: Callable[[], str | None] = field(repr=False)
    restore: Callable[[], None] = field(repr=False)
    # patches it works through: while one of them is not installed, neither is this one at work
    requires: tuple[str, ...] = ()
    installed: bool = False
    declined: str | None = None  # why `apply` refused, if it did

    @property
    def checked_against(self) -> str:
        """The library versions this patch was checked against, e.g. "aiortc 1.16.0"."""
        return ", ".join(f"{lib} {VERIFIED_VERSIONS[lib]}" for lib in self.libraries)
