"""setRemoteDescription as the agent applies it: see the patch `remote_descriptions`.

The functions live in `agent.patches.descriptions` with the reasons for them; they are in place
for every connection of the process once `agent.patches.install()` has run.
"""

from __future__ import annotations

from agent.patches import install
from agent.patches.descriptions import (
    add_remote_candidates,
    aiortc_find_common_codecs,
    find_common_codecs,
)

__all__ = [
    "add_remote_candidates",
    "aiortc_find_common_codecs",
    "find_common_codecs",
    "speed_up_remote_descriptions",
]


def speed_up_remote_descriptions() -> None:
    """`agent.patches.install(only={"remote_descriptions"})` (idempotent)."""
    install(only={"remote_descriptions"})
