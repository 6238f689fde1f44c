"""The HTTP transport under the process's `httpx.AsyncClient`: aiohttp's, through httpx-aiohttp.

httpx stays the client (requests, responses, timeouts, errors); only the connection pool and the
HTTP/1.1 wire work move to aiohttp, whose parser is in C and whose pool does not look at every
pooled connection on every request. `python bench/http_cost.py` on the 2-core dev machine, CPU
per `ConvexClient.run`: one caller 1.1 ms (httpx's own transport: 1.7 ms), fifty callers at once
0.7 ms (2.5 ms: httpcore, h11 and anyio, with a pool scan that grows with the pool). A load worker
with 60 idle participants had spent a fifth of its core in HTTP.

httpx-aiohttp maps aiohttp's errors to httpx's, but calls every connection error a connect
timeout. Here a refused or unverified connection is an `httpx.ConnectError` and one the server
dropped an `httpx.RemoteProtocolError`, as with httpx's own transport; so is anything else aiohttp
raises about a broken exchange (a garbled status line, a bad header), so the client's error
handling sees only httpx exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport


class ConvexTransport(AiohttpTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except httpx.ConnectTimeout as exc:
            # httpx-aiohttp calls every aiohttp connection error a connect timeout, also a
            # connection the server closed or reset without answering.
            cause = exc.__cause__
            if cause is None or isinstance(cause, TimeoutError):
                raise
            if isinstance(cause, aiohttp.ClientConnectorError):  # refused, unreachable, TLS
                raise httpx.ConnectError(type(cause).__name__, request=request) from cause
            raise httpx.RemoteProtocolError(type(cause).__name__, request=request) from cause
        except aiohttp.ClientError as exc:
            raise httpx.RemoteProtocolError(type(exc).__name__, request=request) from exc
        response.stream = _MappedStream(response.stream)
        return response


class _MappedStream(httpx.AsyncByteStream):
    """A response body whose aiohttp errors surface as httpx's."""

    def __init__(self, stream: httpx.AsyncByteStream | httpx.SyncByteStream) -> None:
        assert isinstance(stream, httpx.AsyncByteStream)
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(type(exc).__name__) from exc

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(type(exc).__name__) from exc
