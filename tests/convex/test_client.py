"""ConvexClient against the dev backend over real HTTP: envelopes, typed errors, retries, tokens."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.convex import (
    AuthError,
    ConvexClient,
    FunctionError,
    RetryPolicy,
    TokenSource,
    TransientError,
    make_http_client,
)
from tests.support.waiting import poll_until

WHO = "users/queries/getCurrentUser"
FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)


def calls(server: Any, function: str = WHO) -> int:
    return int(server.stats()["functions"].get(function, 0))


async def test_success_and_typed_function_error(devserver: Any) -> None:
    async with ConvexClient(devserver.url, TokenSource(value=devserver.token("ann"))) as client:
        me = await client.run(WHO, {})
        assert me["_id"] == devserver.user_id("ann")
        devserver.reset_stats()
        with pytest.raises(FunctionError) as info:
            await client.run("meetings/queries/getMeeting", {"meetingId": "nope"})
        # argument validation: no errorData, one line naming the path and the validator
        assert info.value.code is None and info.value.data == {}
        assert "path .meetingId" in info.value.message and 'v.id("meetings")' in info.value.message
        assert "\n" not in str(info.value)
        # a function error is final: exactly one request
        assert calls(devserver, "meetings/queries/getMeeting") == 1


async def test_500s_are_retried_a_bounded_number_of_times(devserver: Any) -> None:
    async with ConvexClient(
        devserver.url, TokenSource(value=devserver.token("ann")), retry=FAST
    ) as client:
        devserver.set_faults(error_rate=1.0, functions=[WHO])
        devserver.reset_stats()
        with pytest.raises(TransientError) as info:
            await client.run(WHO, {})
        assert info.value.status == 500
        assert calls(devserver) == 3
        devserver.set_faults(error_rate=0.5, functions=[WHO], seed=3)
        generous = RetryPolicy(max_attempts=20, base_delay=0.01, max_delay=0.02)
        async with ConvexClient(
            devserver.url, TokenSource(value=devserver.token("ann")), retry=generous
        ) as patient:
            assert (await patient.run(WHO, {}))["_id"] == devserver.user_id("ann")


async def test_retry_after_is_honoured(devserver: Any) -> None:
    devserver.set_faults(rate_limit_rate=1.0, retry_after_s=1, functions=[WHO])
    async with ConvexClient(
        devserver.url, TokenSource(value=devserver.token("ann")), retry=FAST
    ) as client:
        started = time.monotonic()
        with pytest.raises(TransientError) as info:
            await client.run(WHO, {})
    assert info.value.status == 429 and info.value.retry_after == pytest.approx(1.0)
    # three attempts, two waits of at least Retry-After each (backoff alone would be < 0.1 s)
    assert time.monotonic() - started >= 2.0


async def test_dropped_connections_and_timeouts_are_transient(devserver: Any) -> None:
    token = TokenSource(value=devserver.token("ann"))
    devserver.set_faults(drop_rate=1.0, functions=[WHO])
    async with ConvexClient(devserver.url, token, retry=FAST) as client:
        with pytest.raises(TransientError, match="connection failed"):
            await client.run(WHO, {})
    devserver.set_faults(timeout_rate=1.0, timeout_s=5, functions=[WHO])
    async with ConvexClient(
        devserver.url, token, retry=RetryPolicy(max_attempts=1), timeout=0.3
    ) as client:
        with pytest.raises(TransientError, match="timed out"):
            await client.run(WHO, {})


async def test_auth_errors_and_token_file_rotation(devserver: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("not-a-valid-jwt-token-at-all")
    async with ConvexClient(devserver.url, TokenSource(path=token_file), retry=FAST) as client:
        with pytest.raises(AuthError) as info:
            await client.run(WHO, {})
        assert "not-a-valid-jwt" not in str(info.value)
        # the token is rotated in place: the next auth error re-reads the file and succeeds
        good = devserver.token("ann")
        token_file.write_text(good + "\n")
        devserver.reset_stats()
        assert (await client.run(WHO, {}))["_id"] == devserver.user_id("ann")
        assert calls(devserver) == 2  # one refused with the old token, one with the new
        assert good not in repr(client) and good not in repr(TokenSource(path=token_file))


async def test_a_token_without_a_connvo_user_is_an_auth_error(devserver: Any) -> None:
    # The token verifies, but no Connvo user is behind it: functions answer UNAUTHORIZED.
    token = TokenSource(value=devserver.token_without_user("stranger"))
    meeting = devserver.meeting("ann", ["bob"])
    async with ConvexClient(devserver.url, token, retry=FAST) as client:
        with pytest.raises(AuthError, match="UNAUTHORIZED: User not provisioned"):
            await client.run("meetings/queries/getMeeting", {"meetingId": meeting})
        assert await client.run(WHO, {}) is None  # getCurrentUser: null, not an error


@pytest.mark.parametrize(("status", "redact"), [(200, False), (400, False), (560, True)])
async def test_function_errors_read_alike_at_every_status(
    devserver_factory: Any, status: int, redact: bool
) -> None:
    server = devserver_factory(error_status=status, redact=redact)
    scheduled = server.meeting("ann", ["bob"], state="scheduled")
    async with ConvexClient(server.url, TokenSource(value=server.token("bob"))) as client:
        with pytest.raises(FunctionError) as info:
            await client.run("meetings/lifecycle/joinMeeting", {"meetingId": scheduled})
    error = info.value
    assert error.code == "VALIDATION_ERROR" and error.request_id
    assert error.message == "VALIDATION_ERROR: Cannot join inactive meeting"
    assert "\n" not in str(error)


def established_to(port: int) -> int:
    """TCP connections in this network namespace whose remote end is `port` on loopback."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


async def test_requests_in_flight_get_connections_and_later_calls_reuse_them(
    devserver: Any,
) -> None:
    port = httpx.URL(devserver.url).port
    assert port is not None and established_to(port) == 0
    devserver.set_faults(latency_ms=300, functions=[WHO])  # so that the 40 requests overlap
    async with make_http_client(max_connections=100) as http:
        clients = [
            ConvexClient(devserver.url, TokenSource(value=devserver.token("ann")), http=http)
            for _ in range(40)
        ]
        burst = asyncio.gather(*(c.run(WHO, {}) for c in clients))

        async def all_in_flight() -> bool:  # at once: one connection each
            return established_to(port) >= 40

        async with asyncio.timeout(10):
            await poll_until(all_in_flight)
            assert len(await burst) == 40
        opened = established_to(port)
        devserver.clear_faults()
        for client in clients[:20]:  # one after another: kept-alive connections, none new
            await client.run(WHO, {})
        assert established_to(port) <= opened
    assert established_to(port) == 0  # closing the client closes them


async def test_one_identity_has_at_most_six_queued_requests_on_the_wire(devserver: Any) -> None:
    """A burst of one identity's calls queues for kept-alive connections instead of opening one
    connection per call (a loaded server is slow to take up a new connection)."""
    port = httpx.URL(devserver.url).port
    assert port is not None and established_to(port) == 0
    devserver.set_faults(latency_ms=200, functions=[WHO])  # so that the calls overlap
    async with make_http_client(max_connections=100) as http:
        client = ConvexClient(devserver.url, TokenSource(value=devserver.token("ann")), http=http)
        devserver.reset_stats()
        async with asyncio.timeout(20):
            results = await asyncio.gather(*(client.run(WHO, {}) for _ in range(20)))
        assert len(results) == 20 and calls(devserver) == 20
        # the connections a burst opened stay open (kept alive): six, not twenty
        assert established_to(port) == 6
        narrow = ConvexClient(
            devserver.url, TokenSource(value=devserver.token("bob")), http=http, max_in_flight=1
        )
        done: dict[str, float] = {}

        async def call(name: str, queued: bool = True) -> None:
            await narrow.run(WHO, {}, queued=queued)
            done[name] = time.monotonic()

        started = time.monotonic()
        async with asyncio.timeout(20):
            await asyncio.gather(*(call(f"queued {i}") for i in range(3)), call("poll", False))
        # one after another, though started at once; the unqueued call (a poll) waits for none
        assert done["queued 2"] - started >= 3 * 0.2
        assert done["poll"] < done["queued 1"] < done["queued 2"]
    with pytest.raises(ValueError, match="max_in_flight"):
        ConvexClient(devserver.url, TokenSource(value="t"), max_in_flight=0)


@pytest.mark.parametrize(
    "reply",
    [
        b"",
        b"HTTP/1.1 2OO Fine\r\n\r\n",
        b"NONSENSE\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{",
    ],
    ids=["closed", "bad-status", "not-http", "short-body"],
)
async def test_a_broken_exchange_is_a_transient_error(reply: bytes) -> None:
    """Whatever a server does to the exchange, the client raises its own typed error."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with ConvexClient(
            f"http://127.0.0.1:{port}", TokenSource(value="t"), retry=FAST
        ) as client:
            with pytest.raises(TransientError, match="connection failed"):
                await client.run(WHO, {})
    finally:
        server.close()
        await server.wait_closed()


async def test_a_refused_connection_is_a_transient_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens there now
    async with ConvexClient(
        f"http://127.0.0.1:{port}", TokenSource(value="t"), retry=FAST
    ) as client:
        with pytest.raises(TransientError, match="connection failed: ConnectError"):
            await client.run(WHO, {})


async def test_cookies_a_server_sets_are_neither_kept_nor_sent() -> None:
    """The API authenticates with the bearer token alone; a cookie would be per-process state."""
    requests: list[bytes] = []
    body = b'{"status": "success", "value": 1}'

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            requests.append(head)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Set-Cookie: session=abc; Path=/\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with make_http_client() as http:
            client = ConvexClient(f"http://127.0.0.1:{port}", TokenSource(value="t"), http=http)
            assert await client.run(WHO, {}) == 1
            assert await client.run(WHO, {}) == 1
            assert len(http.cookies) == 0
    finally:
        server.close()
        await server.wait_closed()
    assert len(requests) == 2
    assert all(b"cookie:" not in r.lower() for r in requests)
    assert all(b"authorization: bearer t" in r.lower() for r in requests)
