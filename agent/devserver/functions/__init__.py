"""The served functions: path -> declaration (kind, argument validator, handler)."""

from __future__ import annotations

from agent.devserver.functions import lifecycle, queries, signaling, transcripts
from agent.devserver.functions.base import Context, Function, Handler

FUNCTIONS: dict[str, Function] = {
    **signaling.FUNCTIONS,
    **lifecycle.FUNCTIONS,
    **queries.FUNCTIONS,
    **transcripts.FUNCTIONS,
}

__all__ = ["FUNCTIONS", "Context", "Function", "Handler"]
