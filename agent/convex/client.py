"""The Convex HTTP client: one call is `POST {url}/api/run/{function}` with `{"args", "format"}`.

Layering follows httpx: this module knows HTTP, envelopes, typed errors and retries, nothing about
WebRTC. Retries use tenacity: capped exponential backoff with full jitter, at least `Retry-After`
when the server gives one, and only for transient failures. A mutation retried after a timeout may
have succeeded the first time; the layers above tolerate duplicated signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from agent.convex.envelope import ErrorDescription, describe_error
from agent.convex.errors import (
    AuthError,
    ConvexError,
    FunctionError,
    ProtocolError,
    TransientError,
)
from agent.convex.tokens import TokenSource
from agent.convex.transport import ConvexTransport

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
# Connvo's guards throw UNAUTHORIZED for a missing or unknown identity; UNAUTHENTICATED is the
# name other Convex apps use for the same thing.
AUTH_CODES = frozenset({"UNAUTHORIZED", "UNAUTHENTICATED"})
# Requests one identity has on the wire at once, as a browser keeps at most six connections to one
# origin. Fifty answers at once then queue briefly for kept-alive connections instead of opening
# fifty new ones: a loaded server accepts and reads a new connection turns of its event loop later
# (the dev backend under a 50-offer burst: 120-330 ms for a new connection's first request against
# 10-30 ms on a kept-alive one), and a real backend costs a TLS handshake per new connection.
MAX_IN_FLIGHT = 6
# Some Convex clients see a function's error envelope with this status; it is not a server fault.
FUNCTION_ERROR_STATUS_560 = 560

# (function, outcome, seconds) for metrics; outcome is "ok", "function_error", "auth_error",
# "transient" or "protocol_error".
RequestObserver = Callable[[str, str, float], None]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay: float = 0.1
    max_delay: float = 5.0
    # Never sleep longer than this for one Retry-After, whatever the server asks.
    max_retry_after: float = 30.0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing: Convex's HTTP API authenticates with a bearer token, never a
    cookie, and httpx's jar builds urllib request objects for every response to look for
    cookies (about a sixth of a call's CPU)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class _CookielessClient(httpx.AsyncClient):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cookies = _NoCookies()


def make_http_client(
    *, timeout: float = 10.0, verify: bool | str = True, max_connections: int = 100
) -> httpx.AsyncClient:
    """The process-wide HTTP client: connection reuse, bounded pool, TLS verification on, and
    no cookies kept."""
    # A CA bundle path becomes a context (httpx deprecates verify=<path>); True: system CAs.
    tls = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
    return _CookielessClient(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        transport=ConvexTransport(verify=tls, limits=httpx.Limits(max_connections=max_connections)),
        headers={"User-Agent": "connvo-agent"},
    )


class ConvexClient:
    """Calls Convex functions for one identity (one token).

    Several clients (identities) may share one `httpx.AsyncClient`; a client closes the HTTP client
    only if it created it.
    """

    def __init__(
        self,
        url: str,
        token: TokenSource,
        *,
        http: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        verify: bool | str = True,
        retry: RetryPolicy | None = None,
        observer: RequestObserver | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.url = url.rstrip("/")
        self._token = token
        self._own_http = http is None
        self._http = http or make_http_client(timeout=timeout, verify=verify)
        self._retry = retry or RetryPolicy()
        self._observer = observer
        self.request_counts: Counter[str] = Counter()
        self._urls: dict[str, httpx.URL] = {}  # parsed once per function, not on every call
        # Held for one attempt's exchange, never across a retry's backoff. A queued request waits
        # for at most the timeouts of the requests ahead of it.
        self._in_flight = asyncio.Semaphore(max_in_flight)

    async def __aenter__(self) -> ConvexClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    def __repr__(self) -> str:
        return f"ConvexClient(url={self.url!r})"

    async def run(self, function: str, args: Mapping[str, Any], *, queued: bool = True) -> Any:
        """Run `function` (e.g. "meetings/webrtc/signaling/getPendingSignals") and return its value.

        `queued=False` skips the in-flight limit: for a caller that never has more than one request
        on the wire itself (the signal poller), whose request must not wait behind a burst.
        Raises FunctionError, AuthError, ProtocolError, or TransientError once retries are spent.
        """
        body = json.dumps({"args": dict(args), "format": "json"}).encode()
        slot = self._in_flight if queued else contextlib.nullcontext()
        try:
            return await self._run_with_retries(function, body, slot)
        except AuthError:
            # A rotated token file: one more try with the fresh token.
            if not self._token.refresh():
                raise
            log.info("token file changed after an auth error; retrying %s", function)
            return await self._run_with_retries(function, body, slot)

    async def _run_with_retries(
        self, function: str, body: bytes, slot: AbstractAsyncContextManager[Any]
    ) -> Any:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retry.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(TransientError),
            before_sleep=self._log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(function, body, slot)
        raise AssertionError("unreachable: tenacity reraises the last error")

    def _wait(self, state: RetryCallState) -> float:
        backoff = wait_random_exponential(
            multiplier=self._retry.base_delay, max=self._retry.max_delay
        )(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return min(max(backoff, exc.retry_after), self._retry.max_retry_after)
        return backoff

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.debug("retrying after attempt %d: %s", state.attempt_number, exc)

    async def _attempt(
        self, function: str, body: bytes, slot: AbstractAsyncContextManager[Any]
    ) -> Any:
        self.request_counts[function] += 1
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self._send(function, body, slot)
        except FunctionError:
            outcome = "function_error"
            raise
        except AuthError:
            outcome = "auth_error"
            raise
        except TransientError:
            outcome = "transient"
            raise
        except ConvexError:
            outcome = "protocol_error"
            raise
        finally:
            if self._observer is not None:
                self._observer(function, outcome, time.perf_counter() - started)

    async def _send(
        self, function: str, body: bytes, slot: AbstractAsyncContextManager[Any]
    ) -> Any:
        url = self._urls.get(function)
        if url is None:
            url = self._urls[function] = httpx.URL(f"{self.url}/api/run/{function}")
        try:
            async with slot:
                response = await self._http.post(
                    url,
                    content=body,
                    headers={
                        "Authorization": f"Bearer {self._token.current}",
                        "Content-Type": "application/json",
                    },
                )
        except httpx.TimeoutException:
            raise TransientError(function, "request timed out") from None
        except httpx.ConnectError as exc:
            if _tls_verification_failed(exc):
                # A certificate that does not verify will not verify on the next attempt either.
                raise ProtocolError(function, "TLS certificate verification failed", 0) from None
            raise TransientError(function, f"connection failed: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise TransientError(function, f"connection failed: {type(exc).__name__}") from None
        return self._parse(function, response)

    def _parse(self, function: str, response: httpx.Response) -> Any:
        status = response.status_code
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        envelope = _decode_envelope(response)
        error: ErrorDescription | None = None
        if envelope is not None and envelope.get("status") == "error":
            error = describe_error(envelope.get("errorMessage"), envelope.get("errorData"))
        message = error.message if error is not None else ""

        if status in TRANSIENT_STATUS:
            raise TransientError(
                function, f"HTTP {status} {message}".strip(), retry_after=retry_after, status=status
            )
        if status in (401, 403) or (error is not None and error.data.get("code") in AUTH_CODES):
            raise AuthError(function, message or f"HTTP {status}")
        if envelope is None:
            if status >= 500 and status != FUNCTION_ERROR_STATUS_560:
                raise TransientError(function, f"HTTP {status} without an envelope", status=status)
            raise ProtocolError(function, f"HTTP {status}: not a Convex envelope", status)
        if error is not None:
            # 200, 400 and 560 alike: the function ran and threw.
            raise FunctionError(function, message, error.data, status, request_id=error.request_id)
        if status == 200:
            return envelope.get("value")
        raise ProtocolError(function, f"HTTP {status}: unexpected envelope status", status)


def _tls_verification_failed(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):  # the ssl error sits a few causes down (aiohttp, then httpx)
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _decode_envelope(response: httpx.Response) -> dict[str, Any] | None:
    """The JSON envelope, or None for anything else (HTML error pages, bad JSON, wrong types)."""
    content_type = response.headers.get("Content-Type", "")
    if "json" not in content_type.lower():
        return None
    try:
        decoded = json.loads(response.content)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurd nesting
        return None
    if not isinstance(decoded, dict) or decoded.get("status") not in ("success", "error"):
        return None
    return decoded
