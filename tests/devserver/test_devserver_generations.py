"""getPendingSignals/markSignalsProcessed in both server generations, and both ID orders."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from agent.devserver import ids
from agent.devserver.process import DevServerError, DevServerProcess
from tests.conftest import DevServerFactory
from tests.support.devserver import SIG, Api, MeetingSetup, setup_meeting

PENDING = SIG + "getPendingSignals"
ACK = SIG + "markSignalsProcessed"
ID_RE = re.compile(r"^[0123456789abcdefghjkmnpqrstvwxyz]{31,37}$")


def _send(api: Api, meeting: str, session: str, n: int, target: str | None, tag: str) -> list[str]:
    """`n` ICE signals from `session`; returns their candidate strings (IDs are not returned)."""
    sent = []
    for i in range(n):
        cand = f"{tag}-{i}"
        args: dict[str, object] = {
            "meetingId": meeting, "sessionId": session, "candidate": {"candidate": cand}
        }  # fmt: skip
        if target is not None:
            args["targetUserId"] = target
        assert api.ok(SIG + "exchangeICECandidate", **args) is None
        sent.append(cand)
    return sent


def _pending(api: Api, meeting: str, **kw: str) -> list[dict[str, object]]:
    page: list[dict[str, object]] = api.ok(PENDING, meetingId=meeting, **kw)
    return page


def _cands(page: list[dict[str, object]]) -> list[str]:
    return [s["data"]["candidate"] for s in page]  # type: ignore[index]


def _pair(
    server: DevServerProcess, http: httpx.Client, *roles: str
) -> tuple[MeetingSetup, list[str]]:
    m, names = setup_meeting(server, *roles, client=http)
    for n in names:
        m.api(n).ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId=f"{n}-live")
        m.api(n).ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId=f"{n}-dead")
    return m, names


def _drain(api: Api, meeting: str) -> int:
    """Acknowledge everything pending, page by page; returns how many signals were acknowledged."""
    total = 0
    while page := _pending(api, meeting):
        api.ok(ACK, signalIds=[s["_id"] for s in page])
        total += len(page)
    return total


# --- generation 1 --------------------------------------------------------------------------------


def test_gen1_starvation_by_stale_signals(server1: DevServerProcess, http: httpx.Client) -> None:
    m, (host, guest) = _pair(server1, http, "host", "guest")
    h, g = m.api(host), m.api(guest)
    _send(h, m.id, f"{host}-dead", 250, m.users[guest], "stale")
    _send(h, m.id, f"{host}-live", 1, m.users[guest], "fresh")

    # The newest signal sits behind 200 older unprocessed ones: filtering by its session finds
    # nothing, and unfiltered pages hold only stale signals (oldest first, 50 at a time).
    assert _pending(g, m.id, sessionId=f"{host}-live") == []
    page = _pending(g, m.id)
    assert _cands(page) == [f"stale-{i}" for i in range(50)]

    # Acknowledging the oldest 60 brings the fresh one inside the 200-signal window.
    g.ok(ACK, signalIds=[s["_id"] for s in page])
    assert _pending(g, m.id, sessionId=f"{host}-live") == []
    g.ok(ACK, signalIds=[s["_id"] for s in _pending(g, m.id)[:10]])
    assert _cands(_pending(g, m.id, sessionId=f"{host}-live")) == ["fresh-0"]


def test_gen1_pages_in_insertion_order_and_string_cursor(
    server1: DevServerProcess, http: httpx.Client
) -> None:
    m, (host, guest) = _pair(server1, http, "host", "guest")
    h, g = m.api(host), m.api(guest)
    _send(h, m.id, f"{host}-live", 20, m.users[guest], "c")
    page = _pending(g, m.id)
    assert _cands(page) == [f"c-{i}" for i in range(20)]  # insertion order, not ID order
    ids_ = [str(s["_id"]) for s in page]
    assert ids_ != sorted(ids_)  # random IDs do not follow insertion order
    # a cursor at a signal that has a newer signal with a smaller ID (one exists: not sorted)
    at = next(i for i in range(len(ids_)) if any(j < ids_[i] for j in ids_[i + 1 :]))
    cursor = ids_[at]
    skipped = [j for j in ids_[at + 1 :] if j < cursor]
    after = [s["_id"] for s in _pending(g, m.id, lastSignalId=cursor)]
    # plain string comparison: newer signals with a smaller ID are skipped
    assert after == [i for i in ids_ if i > cursor]
    assert skipped and not set(skipped) & set(after)


def test_gen1_never_returns_broadcasts(server1: DevServerProcess, http: httpx.Client) -> None:
    m, (host, guest) = _pair(server1, http, "host", "guest")
    _send(m.api(host), m.id, f"{host}-live", 3, None, "bcast")
    assert _pending(m.api(guest), m.id) == []


def test_gen1_ack_ignores_other_users_and_unknown_ids(
    server1: DevServerProcess, http: httpx.Client
) -> None:
    m, (host, guest, other) = _pair(server1, http, "host", "guest", "other")
    h, g, o = m.api(host), m.api(guest), m.api(other)
    _send(h, m.id, f"{host}-live", 2, m.users[guest], "to-guest")
    _send(h, m.id, f"{host}-live", 1, m.users[other], "to-other")
    guest_ids = [s["_id"] for s in _pending(g, m.id)]
    other_ids = [s["_id"] for s in _pending(o, m.id)]
    unknown = ids.make_id("webrtcSignals")
    # silently accepted; only the caller's own signals change
    assert o.ok(ACK, signalIds=[*guest_ids, unknown]) is None
    assert [s["_id"] for s in _pending(g, m.id)] == guest_ids
    assert g.ok(ACK, signalIds=[guest_ids[0], *other_ids, unknown]) is None
    assert [s["_id"] for s in _pending(g, m.id)] == guest_ids[1:]
    assert [s["_id"] for s in _pending(o, m.id)] == other_ids
    # an ID of another table is no signal ID: the whole call fails argument validation
    detail = g.invalid(ACK, signalIds=[guest_ids[1], m.users[guest]])
    assert "Path: .signalIds[1]" in detail and 'Validator: v.id("webrtcSignals")' in detail
    assert [s["_id"] for s in _pending(g, m.id)] == guest_ids[1:]


def test_gen1_cap_is_50(server1: DevServerProcess, http: httpx.Client) -> None:
    m, (host, guest) = _pair(server1, http, "host", "guest")
    _send(m.api(host), m.id, f"{host}-live", 55, m.users[guest], "c")
    assert len(_pending(m.api(guest), m.id)) == 50
    assert _drain(m.api(guest), m.id) == 55


# --- generation 2 --------------------------------------------------------------------------------


def test_gen2_session_filter_is_not_starved(server2: DevServerProcess, http: httpx.Client) -> None:
    m, (host, guest) = _pair(server2, http, "host", "guest")
    h, g = m.api(host), m.api(guest)
    _send(h, m.id, f"{host}-dead", 250, m.users[guest], "stale")
    _send(h, m.id, f"{host}-live", 1, m.users[guest], "fresh")
    assert _cands(_pending(g, m.id, sessionId=f"{host}-live")) == ["fresh-0"]
    page = _pending(g, m.id, sessionId=f"{host}-dead")
    assert len(page) == 50 and all(s["sessionId"] == f"{host}-dead" for s in page)


def test_gen2_pages_sorted_by_id_and_capped(server2: DevServerProcess, http: httpx.Client) -> None:
    m, (host, guest) = _pair(server2, http, "host", "guest")
    h, g = m.api(host), m.api(guest)
    sent = _send(h, m.id, f"{host}-live", 60, m.users[guest], "c")
    page = _pending(g, m.id)
    page_ids = [str(s["_id"]) for s in page]
    assert len(page) == 50
    assert page_ids == sorted(page_ids)
    assert _cands(page) != sent[:50]  # ID order is not insertion order with random IDs
    # cursor: strictly greater IDs only, still sorted and capped
    cursor = page_ids[9]
    after = [str(s["_id"]) for s in _pending(g, m.id, lastSignalId=cursor)]
    assert after == sorted(after) and all(i > cursor for i in after)
    assert after[: len(page_ids) - 10] == page_ids[10:]
    assert _drain(g, m.id) == 60


def test_gen2_broadcasts_delivered_and_acked_per_caller(
    server2: DevServerProcess, http: httpx.Client
) -> None:
    m, (host, a, b) = _pair(server2, http, "host", "a", "b")
    h, ga, gb = m.api(host), m.api(a), m.api(b)
    _send(h, m.id, f"{host}-live", 2, None, "hello")
    _send(h, m.id, f"{host}-live", 1, m.users[a], "direct")
    assert sorted(_cands(_pending(ga, m.id))) == ["direct-0", "hello-0", "hello-1"]
    assert sorted(_cands(_pending(gb, m.id))) == ["hello-0", "hello-1"]
    assert _pending(h, m.id) == []  # a sender does not receive its own broadcast
    # broadcasts also honour the sender-session filter
    assert _pending(ga, m.id, sessionId=f"{host}-dead") == []

    page_a = _pending(ga, m.id)
    ga.ok(ACK, signalIds=[s["_id"] for s in page_a])
    assert _pending(ga, m.id) == []
    assert sorted(_cands(_pending(gb, m.id))) == ["hello-0", "hello-1"]  # b's copy untouched
    gb.ok(ACK, signalIds=[s["_id"] for s in _pending(gb, m.id)])
    gb.ok(ACK, signalIds=[s["_id"] for s in page_a if s["data"]["candidate"] != "direct-0"])  # type: ignore[index]
    assert _pending(gb, m.id) == []


def test_gen2_ack_of_another_users_signal_fails_whole_call(
    server2: DevServerProcess, http: httpx.Client
) -> None:
    m, (host, guest, other) = _pair(server2, http, "host", "guest", "other")
    h, g, o = m.api(host), m.api(guest), m.api(other)
    _send(h, m.id, f"{host}-live", 2, m.users[guest], "to-guest")
    _send(h, m.id, f"{host}-live", 1, m.users[other], "to-other")
    guest_ids = [s["_id"] for s in _pending(g, m.id)]
    other_ids = [s["_id"] for s in _pending(o, m.id)]

    body = g.error(ACK, code="FORBIDDEN", signalIds=[guest_ids[0], other_ids[0]])
    assert body["errorData"]["metadata"] == {"signalId": other_ids[0]}
    assert len(_pending(g, m.id)) == 2  # nothing applied, not even the caller's own id
    assert len(_pending(o, m.id)) == 1

    unknown = ids.make_id("webrtcSignals")
    body = g.error(ACK, code="NOT_FOUND", signalIds=[guest_ids[0], unknown])
    assert body["errorData"]["metadata"] == {"id": unknown}
    assert body["errorData"]["message"] == f"Signal with ID {unknown} not found"
    assert len(_pending(g, m.id)) == 2

    # the sender cannot acknowledge its own direct signal on the recipient's behalf
    h.error(ACK, code="FORBIDDEN", signalIds=[guest_ids[0]])
    assert g.ok(ACK, signalIds=guest_ids + guest_ids) is None  # duplicates are fine
    assert _pending(g, m.id) == []
    assert g.ok(ACK, signalIds=[]) is None


def test_gen2_ack_broadcast_of_another_meeting_is_forbidden(
    server2: DevServerProcess, http: httpx.Client
) -> None:
    m1, (h1,) = _pair(server2, http, "h1")
    m2, (h2, g2) = _pair(server2, http, "h2", "g2")
    _send(m2.api(h2), m2.id, f"{h2}-live", 1, None, "b")
    (sig,) = _pending(m2.api(g2), m2.id)
    m1.api(h1).error(ACK, code="FORBIDDEN", signalIds=[sig["_id"]])


def test_signal_ids_and_timestamps(server2: DevServerProcess, http: httpx.Client) -> None:
    m, (host, guest) = _pair(server2, http, "host", "guest")
    before = int(time.time() * 1000)
    _send(m.api(host), m.id, f"{host}-live", 5, m.users[guest], "c")
    after = int(time.time() * 1000)
    for s in _pending(m.api(guest), m.id):
        assert ID_RE.match(str(s["_id"]))
        assert ids.table_of(str(s["_id"])) == "webrtcSignals"
        assert isinstance(s["timestamp"], int) and before <= s["timestamp"] <= after
    assert ID_RE.match(m.id) and ID_RE.match(m.users[host])


# --- ID order ------------------------------------------------------------------------------------


@pytest.mark.parametrize("generation", [1, 2])
def test_ordered_ids_sort_in_insertion_order(
    devserver_factory: DevServerFactory, http: httpx.Client, generation: int
) -> None:
    server = devserver_factory(generation=generation, ids="ordered")
    m, (host, guest) = _pair(server, http, "host", "guest")
    sent = _send(m.api(host), m.id, f"{host}-live", 30, m.users[guest], "c")
    page = _pending(m.api(guest), m.id)
    page_ids = [str(s["_id"]) for s in page]
    assert _cands(page) == sent  # both generations agree when IDs follow insertion order
    assert page_ids == sorted(page_ids)
    assert all(ID_RE.match(i) for i in page_ids)
    # a cursor then means "newer than": exactly the later signals
    assert _cands(_pending(m.api(guest), m.id, lastSignalId=page_ids[9])) == sent[10:]


def test_random_ids_do_not_sort_in_insertion_order(
    server2: DevServerProcess, http: httpx.Client
) -> None:
    m, (host, guest) = _pair(server2, http, "host", "guest")
    sent = _send(m.api(host), m.id, f"{host}-live", 30, m.users[guest], "c")
    page = _pending(m.api(guest), m.id)
    assert sorted(_cands(page)) == sorted(sent)
    assert _cands(page) != sent  # sorted by ID, which is not insertion order


# --- chosen ID order (/admin/next-ids) -----------------------------------------------------------


def test_next_ids_give_the_next_signals_chosen_sort_keys(
    devserver_factory: DevServerFactory, http: httpx.Client
) -> None:
    # A server of its own: the queue is server-wide.
    server = devserver_factory()
    m, (host, guest) = _pair(server, http, "host", "guest")
    h, g = m.api(host), m.api(guest)
    # An adversarial order, reproduced exactly: the candidate sorts before the offer it follows.
    server.next_ids("webrtcSignals", [30, 10, 20])
    h.ok(
        SIG + "exchangeSessionDescription", meetingId=m.id, sessionId=f"{host}-live",
        description={"type": "offer", "sdp": "v=0"}, targetUserId=m.users[guest],
    )  # fmt: skip
    sent = _send(h, m.id, f"{host}-live", 2, m.users[guest], "c")
    page = _pending(g, m.id)
    assert [s["type"] for s in page] == ["ice", "ice", "sdp"]
    assert _cands(page[:2]) == sent
    for signal, key in zip(page, [10, 20, 30], strict=True):
        sid = str(signal["_id"])
        assert ID_RE.match(sid) and ids.table_of(sid) == "webrtcSignals"  # still a valid ID
        assert ids.sort_key_of(sid) == key
    g.ok(ACK, signalIds=[s["_id"] for s in page])
    # the queue is used up: random IDs again, between the smallest and the largest keys
    server.next_ids("webrtcSignals", [0])
    _send(h, m.id, f"{host}-live", 1, m.users[guest], "first")
    _send(h, m.id, f"{host}-live", 5, m.users[guest], "random")
    server.next_ids("webrtcSignals", [2**64 - 1])
    _send(h, m.id, f"{host}-live", 1, m.users[guest], "last")
    page = _pending(g, m.id)
    assert _cands(page)[0] == "first-0" and _cands(page)[-1] == "last-0"


def test_next_ids_replace_per_table_and_are_checked(
    devserver_factory: DevServerFactory, http: httpx.Client
) -> None:
    server = devserver_factory()
    m, (host, guest) = _pair(server, http, "host", "guest")
    server.next_ids("webrtcSignals", [5, 6])
    server.next_ids("webrtcSignals", [7])  # replaces: only 7 is left
    server.next_ids("meetings", [1])  # another table's queue is its own
    _send(m.api(host), m.id, f"{host}-live", 2, m.users[guest], "c")
    keys = {ids.sort_key_of(str(s["_id"])) for s in _pending(m.api(guest), m.id)}
    assert 7 in keys and 5 not in keys and 6 not in keys
    created = m.api(host).ok("meetings/lifecycle/createMeeting", title="t")["meetingId"]
    assert ids.sort_key_of(created) == 1
    _drain(m.api(guest), m.id)
    server.next_ids("webrtcSignals", [9])
    server.next_ids("webrtcSignals", [])  # clears
    _send(m.api(host), m.id, f"{host}-live", 1, m.users[guest], "d")
    (last,) = _pending(m.api(guest), m.id)
    assert ids.sort_key_of(str(last["_id"])) != 9

    for body in [
        {"table": "nope", "sortKeys": [1]},
        {"table": "webrtcSignals", "sortKeys": [-1]},
        {"table": "webrtcSignals", "sortKeys": [2**64]},
        {"table": "webrtcSignals", "sortKeys": ["a"]},
        {"table": "webrtcSignals"},
    ]:
        r = http.post(
            server.url + "/admin/next-ids", json=body, headers={"X-Admin-Key": server.admin_key}
        )
        assert r.status_code == 400 and r.json()["code"] == "BadRequest", body
    r = http.post(server.url + "/admin/next-ids", json={"table": "meetings", "sortKeys": [1]})
    assert r.status_code == 401
    with pytest.raises(DevServerError, match="400"):
        server.next_ids("webrtcSignals", [-5])
