"""Property: malformed signals in `getPendingSignals` pages (wrong types, missing fields, unknown
types, 1 MB SDP, invalid candidates, foreign senders, garbage SDP) never crash the agent; each one
with an id is recorded once, logged at most once (exactly once when rejected) and acknowledged,
even when delivered twice; the live session keeps its media and a new one still connects.

The agent runs in this process against the real dev backend; the bad rows are added to real pages
by an editing transport (the backend validates what it stores, so they can only come this way)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiortc.mediastreams import AudioStreamTrack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.convex import ConvexClient, TokenSource
from agent.devserver.ids import make_id
from agent.peer.ice import restrict_host_addresses
from agent.peer.participant import Participant, ParticipantSettings
from agent.signaling.api import ConnvoApi
from tests.conftest import DevServerFactory
from tests.fuzz.corrupt import EditingTransport, PageInjector
from tests.support.peers import RemotePeer

_ids = itertools.count()
FUZZ_IDS: set[str] = set()


# Made up front: hypothesis forbids the random module inside strategies.
_ID_POOL = iter([make_id("webrtcSignals") for _ in range(20_000)])


def _new_id() -> str:
    """A well-formed signal id the backend never issued (generation 1 ignores its ack)."""
    sid = next(_ID_POOL)
    FUZZ_IDS.add(sid)
    return sid


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8,
)  # fmt: skip
BAD_CANDIDATES = [
    "garbage",
    "candidate:",
    "candidate:1 1 udp 2130706431 evil.example.com 9 typ host",
    "candidate:1 1 udp 2130706431 1f2e3d4c-aaaa-bbbb.local 9 typ host",
    "candidate:1 1 sctp 2130706431 127.0.0.1 9 typ host",
    "candidate:1 1 udp 2130706431 127.0.0.1 99999999 typ host",
    "candidate:1 1 udp x 127.0.0.1 9 typ host",
    "candidate:1 1 udp 1 ::ffff:zz 9 typ host",
    "candidate:1 1 UDP 2130706431 256.1.1.1 9 typ relay raddr a rport b",
    "candidate:" + "9" * 1000,
]
BAD_SDP = ["garbage", "v=0\r\n", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" * 50, "\x00" * 100]


class Ctx:
    """What the examples need to build rows (filled in by the test)."""

    alice_user = ""
    alice_session = ""
    bob_user = ""


def _row(kind: str, data: Any, **over: Any) -> dict[str, Any]:
    row = {"_id": _new_id(), "sessionId": Ctx.alice_session,
           "fromUserId": Ctx.alice_user, "type": kind, "data": data,
           "timestamp": time.time() * 1000}  # fmt: skip
    row.update(over)
    return row


def _mutations(draw: st.DrawFn) -> Any:
    choice = draw(st.integers(0, 9))
    if choice == 0:  # not an object, or an id that cannot be used
        return draw(json_values.filter(lambda v: not isinstance(v, dict)) | st.builds(
            lambda bad: _row("ice", {"candidate": ""}, _id=bad),
            st.none() | st.integers() | st.just("") | st.just("i" * 200)))  # fmt: skip
    if choice == 1:  # missing fields
        row = _row("sdp", {"type": "offer", "sdp": "v=0\r\n"})
        for key in draw(st.sets(st.sampled_from(["sessionId", "fromUserId", "type", "data",
                                                 "timestamp"]), min_size=1)):  # fmt: skip
            del row[key]
        return row
    if choice == 2:  # wrong types
        row = _row("ice", {"candidate": "", "sdpMid": "0"})
        key = draw(st.sampled_from(["sessionId", "fromUserId", "type", "data", "timestamp"]))
        row[key] = draw(json_values.filter(lambda v: v != row[key]))
        return row
    if choice == 3:  # unknown signal or description types; data of the other kind
        return draw(st.sampled_from([
            _row("video", {"type": "offer", "sdp": "v=0\r\n"}),
            _row("sdp", {"type": "offerX", "sdp": "v=0\r\n"}),
            _row("ice", {"type": "offer", "sdp": "v=0\r\n"}),
            _row("sdp", {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"}),
        ]))  # fmt: skip
    if choice == 4:  # 1 MB of SDP
        return _row("sdp", {"type": "offer", "sdp": "v=0\r\n" + "a=x\r\n" * 200_000})
    if choice == 5:  # invalid candidates for the live session
        return _row("ice", {"candidate": draw(st.sampled_from(BAD_CANDIDATES)), "sdpMid": "0",
                            "sdpMLineIndex": 0})  # fmt: skip
    if choice == 6:  # a candidate without mid or m-line index
        return _row("ice", {"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host"})
    if choice == 7:  # the live session's id from another user
        return _row("ice", {"candidate": "", "sdpMid": "0"}, fromUserId=Ctx.bob_user)
    if choice == 8:  # answers and rollbacks for sessions the agent never heard of
        return _row("sdp", {"type": draw(st.sampled_from(["answer", "pranswer", "rollback"])),
                            "sdp": draw(st.sampled_from(BAD_SDP))},
                    sessionId=f"ghost{next(_ids)}")  # fmt: skip
    # garbage descriptions for the live session (an answer in stable state, a broken pranswer)
    return _row("sdp", {"type": draw(st.sampled_from(["answer", "pranswer"])),
                        "sdp": draw(st.sampled_from(BAD_SDP))})  # fmt: skip


bad_rows = st.lists(st.composite(_mutations)(), min_size=1, max_size=5)


# Hypothesis draws examples on a worker thread while the agent's event loop runs on this one, and
# that loop draws from the global `random` too (aioice's consent-check jitter, aiortc's RTCP
# interval): hypothesis then sees the global state change during a draw and, now and then, warns
# that a strategy used `random`. None does (ids come from a pool made up front).
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
async def test_malformed_signals_are_logged_acknowledged_and_harmless(
    devserver_factory: DevServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent")
    restrict_host_addresses(["127.0.0.1"])
    server = devserver_factory(generation=1)
    meeting = server.meeting("bot", ["alice", "bob"])
    injector = PageInjector()
    http = httpx.AsyncClient(transport=EditingTransport(injector), timeout=10)
    client = ConvexClient(server.url, TokenSource(value=server.token("bot")), http=http)
    participant = Participant(
        ConnvoApi(client),
        ParticipantSettings(meeting_id=meeting, state_dir=tmp_path / "state"),
        local_tracks=lambda: [AudioStreamTrack()],
    )
    stop = asyncio.Event()
    task = asyncio.create_task(participant.run(stop))
    try:
        async with asyncio.timeout(10):
            await participant.joined.wait()
        bot = server.user_id("bot")
        async with RemotePeer(server.url, server.token("alice"), meeting,
                              server.user_id("alice"), video=False) as alice:  # fmt: skip
            Ctx.alice_user, Ctx.alice_session = alice.user_id, alice.session_id
            Ctx.bob_user = server.user_id("bob")
            await alice.offer(bot)
            async with asyncio.timeout(30):
                await alice.connected.wait()
                await alice.received.audio.wait()
            loop = asyncio.get_running_loop()
            fed: list[Any] = []

            @settings(max_examples=40, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            @given(rows=bad_rows)
            def feed_bad_rows(rows: list[Any]) -> None:
                fed.extend(rows)
                future = asyncio.run_coroutine_threadsafe(_feed(participant, injector, rows), loop)
                future.result(timeout=60)

            await asyncio.to_thread(feed_bad_rows)
            assert len(fed) >= 40
            assert not task.done()
            assert participant.poller is not None and participant.poller.stats.reapplied == 0

            # The agent and the live session carry on; a new session still connects.
            frames = alice.received.audio_frames
            async with RemotePeer(server.url, server.token("bob"), meeting,
                                  server.user_id("bob"), video=False) as bob:  # fmt: skip
                await bob.offer(bot)
                async with asyncio.timeout(30):
                    await bob.connected.wait()
                    await bob.received.audio.wait()
            assert alice.connected.is_set() and alice.received.audio_frames > frames
            assert participant.manager is not None
            assert participant.manager.sessions[alice.session_id].connected.is_set()
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task
        await client.aclose()
        await http.aclose()
        restrict_host_addresses(None)

    # Each row with a usable id: logged at most once as a warning, exactly once when rejected.
    store_file = next((tmp_path / "state").glob("*.sqlite"))
    import sqlite3

    db = sqlite3.connect(store_file)
    rows = dict(db.execute("SELECT id, outcome FROM signals").fetchall())
    db.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for row in fed:
        if not (isinstance(row, dict) and row.get("_id") in FUZZ_IDS):
            continue
        sid = row["_id"]
        mentions = sum(sid in w for w in warnings)
        assert mentions <= 1, (sid, [w for w in warnings if sid in w])
        if rows[sid] == "rejected":
            assert mentions == 1, (sid, row)
    assert not [w for w in warnings if "Traceback" in w or "Task exception" in w]
    outcomes = [rows[r["_id"]] for r in fed if isinstance(r, dict) and r.get("_id") in FUZZ_IDS]
    print(f"\n{len(fed)} bad rows fed: " + ", ".join(
        f"{o} {outcomes.count(o)}" for o in sorted(set(outcomes))))  # fmt: skip


async def _feed(participant: Participant, injector: PageInjector, rows: list[Any]) -> None:
    """Put the rows into the next two pages; return when every usable id is recorded and acked."""
    poller, store = participant.poller, participant.store
    assert poller is not None and store is not None
    ids = [r["_id"] for r in rows if isinstance(r, dict) and isinstance(r.get("_id"), str)
           and 0 < len(r["_id"]) <= 128]  # fmt: skip
    injector.inject(rows, repeat=2)
    poller.kick()
    async with asyncio.timeout(30):
        await injector.delivered.wait()
        while True:
            unacked = set(store.unacked())
            if all(store.is_known(i) and i not in unacked for i in ids):
                break
            waits = {asyncio.ensure_future(poller.next_change()),
                     asyncio.ensure_future(poller.next_poll())}  # fmt: skip
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in pending:
                w.cancel()
    for i in ids:
        assert store.times_applied(i) == 1, i
