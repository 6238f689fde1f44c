"""Convex HTTP client: envelopes, typed errors, retries, tokens."""

from agent.convex.client import ConvexClient, RetryPolicy, make_http_client, parse_retry_after
from agent.convex.errors import (
    AuthError,
    ConvexError,
    FunctionError,
    ProtocolError,
    TransientError,
)
from agent.convex.tokens import TokenError, TokenSource

__all__ = [
    "AuthError",
    "ConvexClient",
    "ConvexError",
    "FunctionError",
    "ProtocolError",
    "RetryPolicy",
    "TokenError",
    "TokenSource",
    "TransientError",
    "make_http_client",
    "parse_retry_after",
]
