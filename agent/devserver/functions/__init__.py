"""The served functions: path -> handler, exactly the paths of `models.FUNCTION_ARGS`."""

from __future__ import annotations

from agent.devserver.functions import lifecycle, queries, signaling, transcripts
from agent.devserver.functions.base import Context, FunctionError, Handler

HANDLERS: dict[str, Handler] = {
    **signaling.HANDLERS,
    **lifecycle.HANDLERS,
    **queries.HANDLERS,
    **transcripts.HANDLERS,
}

__all__ = ["HANDLERS", "Context", "FunctionError", "Handler"]
