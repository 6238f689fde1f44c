"""Webhook delivery against a real HTTP endpoint (an aiohttp server in the test that records every
request and answers as scripted: a status, a Retry-After, or no answer): Standard Webhooks
signatures, retries with one id, order per bot, permanent failures, restarts, max age, secrets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import random
import socket
import stat
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from agent.service.webhooks import (
    Backoff,
    EventStatus,
    EventType,
    OutboxEvent,
    Outcome,
    WebhookDeliverer,
    WebhookOutbox,
    classify,
)

# --- a real webhook endpoint: an aiohttp server on 127.0.0.1, scripted per path -------------


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # never answer (until the server stops): the sender's timeout fires


HANG = Reply(hang=True)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    at: float  # loop time
    status: int | None  # the answer; None: none given

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    """Answers each path with its scripted replies in turn, then with its `default` (200)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.default: dict[str, Reply] = {}
        self._script: defaultdict[str, deque[Reply]] = defaultdict(deque)
        self._changed = asyncio.Condition()
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: Reply | int) -> None:
        self._script[path].extend(r if isinstance(r, Reply) else Reply(r) for r in replies)

    def to(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    def delivered(self, path: str) -> list[str]:
        """The webhook ids answered 2xx on `path`, in order."""
        return [r.webhook_id for r in self.to(path) if r.status is not None and r.status < 300]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Until `predicate()` holds after some request (bound it with asyncio.timeout)."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    async def start(self) -> None:
        """Listen (again) on `port`: a free one the first time, the same one after `stop`."""
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self._release = asyncio.Event()
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        """Stop listening: connections are refused until `start` again."""
        self._release.set()  # hanging handlers return
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        path = request.path
        reply = self._script[path].popleft() if self._script[path] else self.default.get(path)
        reply = reply or Reply()
        headers = {k.lower(): v for k, v in request.headers.items()}
        status = None if reply.hang else reply.status
        received = Received(path, headers, body, asyncio.get_running_loop().time(), status)
        async with self._changed:
            self.requests.append(received)
            self._changed.notify_all()
        if reply.hang:
            await self._release.wait()
            raise web.HTTPServiceUnavailable
        return web.Response(status=reply.status, headers=reply.headers)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


# --- the tests -------------------------------------------------------------------------------

SECRET = "whsec_" + base64.b64encode(b"the bot's own 32-byte secret key").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"somebody else's 32-byte key ...").decode()
# milliseconds instead of seconds to hours
FAST = Backoff(first=0.02, factor=2.0, max_delay=0.05)
WAIT_S = 10.0


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[WebhookOutbox]:
    with WebhookOutbox(tmp_path / "webhooks.sqlite") as box:
        yield box


@contextlib.asynccontextmanager
async def running(deliverer: WebhookDeliverer) -> AsyncIterator[asyncio.Task[None]]:
    """`deliverer.run()` as a task, cancelled (and awaited: its errors surface) on the way out."""
    task = asyncio.create_task(deliverer.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Outcomes:
    """A deliverer's observer: every outcome recorded, and a way to wait for some."""

    def __init__(self) -> None:
        self.seen: list[tuple[Outcome, OutboxEvent]] = []
        self._changed = asyncio.Event()

    def __call__(self, outcome: Outcome, event: OutboxEvent) -> None:
        self.seen.append((outcome, event))
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[list[tuple[Outcome, OutboxEvent]]], bool]
    ) -> None:
        while not predicate(self.seen):
            self._changed.clear()
            await self._changed.wait()


def verify(received: Received, secret: str = SECRET) -> Any:
    return Webhook(secret).verify(received.body, received.headers)


async def test_events_are_signed_as_standard_webhooks_verify_them(
    outbox: WebhookOutbox, receiver: Receiver
) -> None:
    deliverer = WebhookDeliverer(outbox, backoff=FAST)
    data = {"state": "in_call", "meeting": "m1", "note": "ünïcode"}
    async with running(deliverer), asyncio.timeout(WAIT_S):
        # enqueued while the deliverer idles: the enqueue wakes it, from this thread or another
        first = outbox.enqueue("bot-1", receiver.url("/hooks/1"), SECRET, "bot.state_changed", data)
        second = await asyncio.to_thread(
            outbox.enqueue,
            "bot-1",
            receiver.url("/hooks/1"),
            SECRET,
            EventType.PARTICIPANT_JOINED,
            {"participant": {"id": "u1", "name": "Ann"}},
        )
        assert await deliverer.drain(WAIT_S)

    assert receiver.delivered("/hooks/1") == [first, second]
    one, two = receiver.to("/hooks/1")
    payload = verify(one)
    assert payload["type"] == "bot.state_changed" and payload["data"] == data
    assert set(payload) == {"type", "timestamp", "data"}
    when = datetime.fromisoformat(payload["timestamp"])
    assert when.tzinfo is not None and abs(when.timestamp() - time.time()) < WAIT_S
    assert payload["timestamp"].endswith("Z")
    assert verify(two)["type"] == "participant.joined"
    assert one.headers["content-type"] == "application/json"
    assert one.headers["webhook-signature"].startswith("v1,")
    assert abs(int(one.headers["webhook-timestamp"]) - time.time()) < WAIT_S
    # another secret does not verify, nor does a body changed by one byte
    with pytest.raises(WebhookVerificationError):
        verify(one, OTHER_SECRET)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(one.body.replace(b"in_call", b"in_cal1"), one.headers)
    counts = outbox.counts()
    assert (counts.pending, counts.delivered, counts.retried, counts.failed) == (0, 2, 0, 0)
    event = outbox.event(first)
    assert event is not None and event.status is EventStatus.DELIVERED and event.attempts == 1


async def test_retries_after_500s_and_a_timeout_carry_the_same_id(
    outbox: WebhookOutbox, receiver: Receiver
) -> None:
    receiver.script("/hooks/1", 500, HANG, 503, 200)
    outcomes = Outcomes()
    deliverer = WebhookDeliverer(outbox, timeout=0.5, backoff=FAST, observer=outcomes)
    event_id = outbox.enqueue("bot-1", receiver.url("/hooks/1"), SECRET, "transcript.chunk", {})
    async with running(deliverer):
        assert await deliverer.drain(WAIT_S)

    requests = receiver.to("/hooks/1")
    assert [r.status for r in requests] == [500, None, 503, 200]
    assert {r.webhook_id for r in requests} == {event_id}
    assert {r.body for r in requests} == {requests[0].body}  # the body is fixed at enqueue
    for request in requests:  # each attempt signed afresh, each verifies
        verify(request)
    # the hung attempt was given up after the 0.5 s timeout, then retried
    assert requests[2].at - requests[1].at >= 0.5
    assert [o for o, _ in outcomes.seen] == [Outcome.RETRIED] * 3 + [Outcome.DELIVERED]
    assert [e.last_error for _, e in outcomes.seen[:3]] == [
        "HTTP 500",
        "timeout after 0.5 s",
        "HTTP 503",
    ]
    counts = outbox.counts()
    assert (counts.delivered, counts.retried, counts.failed) == (1, 3, 0)
    event = outbox.event(event_id)
    assert event is not None and event.status is EventStatus.DELIVERED and event.attempts == 4


async def test_429_waits_for_retry_after_and_408_is_retried(
    outbox: WebhookOutbox, receiver: Receiver
) -> None:
    receiver.script("/hooks/1", Reply(429, {"Retry-After": "1"}), 408, 200)
    deliverer = WebhookDeliverer(outbox, backoff=FAST)
    event_id = outbox.enqueue("bot-1", receiver.url("/hooks/1"), SECRET, "recording.ready", {})
    async with running(deliverer):
        assert await deliverer.drain(WAIT_S)

    requests = receiver.to("/hooks/1")
    assert [r.status for r in requests] == [429, 408, 200]
    assert {r.webhook_id for r in requests} == {event_id}
    # Retry-After (1 s) over the backoff (at most 0.05 s); the next retry is the backoff's again
    assert requests[1].at - requests[0].at >= 0.99
    assert requests[2].at - requests[1].at < 0.99
    assert outbox.counts().retried == 2


async def test_one_bots_failing_endpoint_holds_up_its_own_events_only(
    outbox: WebhookOutbox, receiver: Receiver
) -> None:
    receiver.default["/a"] = Reply(500)
    deliverer = WebhookDeliverer(outbox, backoff=FAST)
    a_ids: list[str] = []
    b_ids: list[str] = []
    async with running(deliverer), asyncio.timeout(WAIT_S):
        for n in range(3):
            a_ids.append(
                outbox.enqueue("a", receiver.url("/a"), SECRET, "transcript.chunk", {"n": n})
            )
            b_ids.append(
                outbox.enqueue("b", receiver.url("/b"), SECRET, "transcript.chunk", {"n": n})
            )
        # b's events all arrive while a's first one keeps failing (and being retried)
        await receiver.wait_for(
            lambda: len(receiver.delivered("/b")) == 3 and len(receiver.to("/a")) >= 3
        )
        assert receiver.delivered("/b") == b_ids
        assert {r.webhook_id for r in receiver.to("/a")} == {a_ids[0]}
        assert [e.event_id for e in outbox.pending("a")] == a_ids
        assert deliverer.active_bots == {"a"}

        receiver.default["/a"] = Reply(200)
        assert await deliverer.drain(WAIT_S)

    assert receiver.delivered("/a") == a_ids
    # nothing of a's was sent before the one ahead of it was delivered
    sent = [r.webhook_id for r in receiver.to("/a")]
    first_ok = len(sent) - 3
    assert set(sent[: first_ok + 1]) == {a_ids[0]} and sent[first_ok + 1 :] == a_ids[1:]
    assert [verify(r)["data"]["n"] for r in receiver.to("/a")[first_ok:]] == [0, 1, 2]
    assert deliverer.active_bots == frozenset()


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422, 301])
async def test_a_refusal_fails_the_event_for_good_and_the_next_one_goes(
    outbox: WebhookOutbox, receiver: Receiver, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.service.webhooks")
    receiver.script("/hooks/1", Reply(status, {"Location": "http://127.0.0.1:9/elsewhere"}))
    deliverer = WebhookDeliverer(outbox, backoff=FAST)
    refused = outbox.enqueue("bot-1", receiver.url("/hooks/1"), SECRET, "participant.left", {})
    accepted = outbox.enqueue("bot-1", receiver.url("/hooks/1"), SECRET, "participant.left", {})
    async with running(deliverer):
        assert await deliverer.drain(WAIT_S)

    # one request each: the refusal was not retried (and a redirect not followed)
    assert [(r.webhook_id, r.status) for r in receiver.requests] == [
        (refused, status),
        (accepted, 200),
    ]
    event = outbox.event(refused)
    assert event is not None and event.status is EventStatus.FAILED
    assert event.attempts == 1 and event.last_error == f"refused: HTTP {status}"
    counts = outbox.counts()
    assert (counts.delivered, counts.retried, counts.failed) == (1, 0, 1)
    assert [r.getMessage() for r in caplog.records if refused in r.getMessage()] == [
        f"webhook {refused} (participant.left) of bot bot-1 to 127.0.0.1 failed for good: "
        f"refused: HTTP {status}"
    ]


async def test_pending_events_survive_a_restart_with_their_ids_and_order(
    tmp_path: Path, receiver: Receiver
) -> None:
    path = tmp_path / "webhooks.sqlite"
    await receiver.stop()  # down: connections refused
    first_box = WebhookOutbox(path)
    url_a, url_b = receiver.url("/a"), receiver.url("/b")
    ids_a = [first_box.enqueue("a", url_a, SECRET, "transcript.chunk", {"n": n}) for n in range(2)]
    ids_b = [first_box.enqueue("b", url_b, SECRET, "transcript.chunk", {"n": 0})]

    outcomes = Outcomes()
    first = WebhookDeliverer(first_box, backoff=FAST, observer=outcomes)
    task = asyncio.create_task(first.run())
    async with asyncio.timeout(WAIT_S):
        # both bots tried and failed (refused) at least once
        await outcomes.wait_for(
            lambda seen: {e.bot_id for o, e in seen if o is Outcome.RETRIED} == {"a", "b"}
        )
        assert {e.last_error for _, e in outcomes.seen} == {"ConnectError"}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert first.active_bots == frozenset()
    # enqueued while no deliverer runs: kept all the same
    ids_a.append(first_box.enqueue("a", url_a, SECRET, "bot.state_changed", {"n": 2}))
    first_box.close()

    with WebhookOutbox(path) as box:
        pending = box.pending()
        assert [e.event_id for e in pending] == [*ids_a[:2], *ids_b, ids_a[2]]
        assert [e.attempts > 0 for e in pending] == [True, False, True, False]
        await receiver.start()  # up again, on the same port
        second = WebhookDeliverer(box, backoff=FAST)
        async with running(second):
            assert await second.drain(WAIT_S)
        assert box.counts().delivered == 4

    assert receiver.delivered("/a") == ids_a and receiver.delivered("/b") == ids_b
    assert [verify(r)["data"]["n"] for r in receiver.to("/a")] == [0, 1, 2]
    # each event arrived once: the first deliverer never reached the endpoint
    assert Counter(r.webhook_id for r in receiver.requests) == Counter(ids_a + ids_b)


async def test_cancelling_run_stops_an_attempt_in_flight_and_leaves_the_client_open(
    outbox: WebhookOutbox, receiver: Receiver
) -> None:
    receiver.script("/hooks/1", HANG)
    async with httpx.AsyncClient() as http:
        deliverer = WebhookDeliverer(outbox, http, timeout=60.0, backoff=FAST)
        event_id = outbox.enqueue("bot-1", receiver.url("/hooks/1"), SECRET, "recording.ready", {})
        task = asyncio.create_task(deliverer.run())
        async with asyncio.timeout(WAIT_S):
            await receiver.wait_for(lambda: len(receiver.requests) == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert deliverer.active_bots == frozenset() and not http.is_closed
        event = outbox.event(event_id)
        assert event is not None and event.status is EventStatus.PENDING and event.attempts == 0

        # run again: the attempt cut short is made again, with the same id (at least once)
        async with running(deliverer):
            assert await deliverer.drain(WAIT_S)
        assert not http.is_closed
    assert [(r.webhook_id, r.status) for r in receiver.requests] == [
        (event_id, None),
        (event_id, 200),
    ]


async def test_an_event_older_than_max_age_is_failed_unsent(
    tmp_path: Path, receiver: Receiver
) -> None:
    offset = [-2 * 3600.0]  # the outbox's clock, two hours back, then now

    def clock() -> float:
        return time.time() + offset[0]

    with WebhookOutbox(tmp_path / "webhooks.sqlite", clock=clock) as box:
        stale = box.enqueue("bot-1", receiver.url("/hooks/1"), SECRET, "transcript.chunk", {})
        offset[0] = 0.0
        fresh = box.enqueue("bot-1", receiver.url("/hooks/1"), SECRET, "transcript.chunk", {})
        deliverer = WebhookDeliverer(box, max_age=3600.0, backoff=FAST)
        async with running(deliverer):
            assert await deliverer.drain(WAIT_S)
        event = box.event(stale)
        assert event is not None and event.status is EventStatus.FAILED
        assert event.attempts == 0 and event.last_error == "expired after 0 attempts"
        counts = box.counts()
        assert (counts.delivered, counts.retried, counts.failed) == (1, 0, 1)
    assert [r.webhook_id for r in receiver.requests] == [fresh]


async def test_retries_stop_at_max_age(outbox: WebhookOutbox, receiver: Receiver) -> None:
    receiver.default["/hooks/1"] = Reply(500)
    deliverer = WebhookDeliverer(outbox, max_age=0.5, backoff=Backoff(first=0.1, max_delay=0.2))
    event_id = outbox.enqueue("bot-1", receiver.url("/hooks/1"), SECRET, "transcript.chunk", {})
    async with running(deliverer):
        assert await deliverer.drain(WAIT_S)
    event = outbox.event(event_id)
    assert event is not None and event.status is EventStatus.FAILED
    assert event.last_error == "HTTP 500; no retry within 0.5 s"
    requests = receiver.to("/hooks/1")
    assert len(requests) == event.attempts >= 2 and {r.webhook_id for r in requests} == {event_id}
    assert requests[-1].at - requests[0].at < 0.5


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_secrets_and_urls_stay_out_of_logs_and_errors(
    outbox: WebhookOutbox, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "url-credential-4f1d9"
    url = receiver.url(f"/hooks/1?token={token}")
    receiver.script("/hooks/1", 500, HANG, 400)
    outcomes = Outcomes()
    deliverer = WebhookDeliverer(outbox, timeout=0.3, backoff=FAST, observer=outcomes)
    ids = [
        outbox.enqueue("bot-1", url, SECRET, "transcript.chunk", {}),  # retried, then refused
        outbox.enqueue("bot-1", url, SECRET, "transcript.chunk", {}),  # delivered
        # connections refused: retried
        outbox.enqueue(
            "bot-2",
            f"http://127.0.0.1:{_closed_port()}/x?token={token}",
            SECRET,
            "transcript.chunk",
            {},
        ),
    ]

    def done(seen: list[tuple[Outcome, OutboxEvent]]) -> bool:
        finished = [e for o, e in seen if o is not Outcome.RETRIED and e.bot_id == "bot-1"]
        refused = [e for o, e in seen if o is Outcome.RETRIED and e.bot_id == "bot-2"]
        return len(finished) == 2 and len(refused) >= 2

    async with running(deliverer), asyncio.timeout(WAIT_S):
        await outcomes.wait_for(done)
    assert [o for o, e in outcomes.seen if e.bot_id == "bot-1"] == [
        Outcome.RETRIED,
        Outcome.RETRIED,
        Outcome.FAILED,
        Outcome.DELIVERED,
    ]

    ours = [r for r in caplog.records if r.name.startswith("agent.")]
    assert {r.levelno for r in ours} >= {logging.DEBUG, logging.INFO, logging.WARNING}
    assert any("ConnectError" in r.getMessage() for r in ours)
    for record in caplog.records:
        text = f"{record.getMessage()} {record.args!r} {record.exc_text or ''}"
        assert SECRET not in text and SECRET.removeprefix("whsec_") not in text
    for record in ours:
        assert token not in record.getMessage()
    shown = repr([outbox.event(event_id) for event_id in ids])
    assert SECRET not in shown and token not in shown


def test_enqueue_refuses_what_it_cannot_send_without_quoting_it(outbox: WebhookOutbox) -> None:
    url = "http://127.0.0.1:9/hook"
    bad_secrets = [
        "",
        "whsec_",
        SECRET.removeprefix("whsec_"),  # no prefix
        "whsec_" + base64.b64encode(b"short").decode(),  # under 24 bytes
        "whsec_" + base64.b64encode(os.urandom(65)).decode(),  # over 64
        SECRET[:-4] + "!!!!",  # not base64
    ]
    for secret in bad_secrets:
        with pytest.raises(ValueError, match="webhook secret") as info:
            outbox.enqueue("bot-1", url, secret, "transcript.chunk", {})
        assert info.value.__cause__ is None and info.value.__context__ is None
        if secret.removeprefix("whsec_"):
            assert secret.removeprefix("whsec_") not in str(info.value)
    for bad_url in ["ftp://127.0.0.1/x", "/relative?token=abc123", "http://", "not a url"]:
        with pytest.raises(ValueError, match="webhook URL") as info:
            outbox.enqueue("bot-1", bad_url, SECRET, "transcript.chunk", {})
        assert "abc123" not in str(info.value)
    with pytest.raises(ValueError, match="unknown webhook event type"):
        outbox.enqueue("bot-1", url, SECRET, "bot.exploded", {})
    not_json: list[dict[str, Any]] = [{"x": object()}, {"x": float("nan")}]
    for data in not_json:
        with pytest.raises(ValueError, match="not JSON"):
            outbox.enqueue("bot-1", url, SECRET, "transcript.chunk", data)
    assert outbox.counts().pending == 0


def test_the_outbox_is_durable_private_and_prunable(tmp_path: Path) -> None:
    path = tmp_path / "state" / "webhooks.sqlite"
    with WebhookOutbox(path) as box:
        kept = box.enqueue("bot-1", "https://example.test/h", SECRET, "bot.state_changed", {})
        done = box.enqueue("bot-2", "https://example.test/h", SECRET, "bot.state_changed", {})
        box.mark_delivered(done)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with WebhookOutbox(path) as box:
        assert [e.event_id for e in box.pending()] == [kept]
        assert box.pending_bots() == ["bot-1"]
        assert box.prune(older_than=3600.0) == 0
        assert box.prune(older_than=-1.0) == 1  # everything finished before "a second from now"
        assert box.event(done) is None and box.event(kept) is not None
        assert box.counts().delivered == 1  # the counts outlive pruned rows


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (299, Outcome.DELIVERED),
        (408, Outcome.RETRIED),
        (429, Outcome.RETRIED),
        (500, Outcome.RETRIED),
        (503, Outcome.RETRIED),
        (599, Outcome.RETRIED),
        (400, Outcome.FAILED),
        (403, Outcome.FAILED),
        (409, Outcome.FAILED),
        (302, Outcome.FAILED),
        (100, Outcome.FAILED),
    ],
)
def test_classify(status: int, outcome: Outcome) -> None:
    assert classify(status).outcome is outcome


def test_backoff_grows_with_jitter_honours_retry_after_and_is_capped() -> None:
    backoff = Backoff(first=5.0, factor=2.0, max_delay=3600.0, max_retry_after=600.0)
    rng = random.Random(7)
    for retry, cap in [(1, 5.0), (2, 10.0), (5, 80.0), (20, 3600.0), (5000, 3600.0)]:
        delays = [backoff.delay(retry, rng=rng) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(set(delays)) > 100  # jittered
    assert backoff.delay(1, retry_after=30.0, rng=rng) >= 30.0
    assert backoff.delay(1, retry_after=0.0, rng=rng) <= 5.0
    assert backoff.delay(1, retry_after=86400.0, rng=rng) == 600.0
    # the default schedule: retries fill the 24 h without a storm
    default = Backoff()
    elapsed, attempts = 0.0, 1
    while elapsed < 24 * 3600:
        elapsed += default.delay(attempts, rng=rng)
        attempts += 1
    assert 25 <= attempts <= 60


def test_the_event_types_are_the_documented_ones() -> None:
    assert sorted(EventType) == sorted(
        [
            "bot.state_changed",
            "bot.media_connected",
            "participant.joined",
            "participant.left",
            "transcript.chunk",
            "recording.ready",
        ]
    )
