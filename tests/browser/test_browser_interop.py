"""The agent and real Chromium (the dev backend's join page) in one meeting, media both ways.

Every test checks media in both directions where the page sends any: the agent counts received
audio and video frames, and the page's getStats shows inbound RTP packets from the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from typing import Any

import httpx
import pytest

from agent.signaling.state import state_file
from tests.agent.conftest import Meeting, RunningAgent
from tests.browser.conftest import Browser, Page, backend_signals, open_page
from tests.support.waiting import poll_until

TIMEOUT_S = 30
AUDIO_PACKETS = 25  # about half a second of Opus
VIDEO_PACKETS = 10


async def agent_receives(agent: RunningAgent, session_id: str, kinds: tuple[str, ...]) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        for kind in kinds:
            await agent.frames_event(session_id, kind).wait()


async def page_receives(page: Page, agent_session: str, kinds: tuple[str, ...]) -> dict[str, int]:
    minimum = {"audio": AUDIO_PACKETS, "video": VIDEO_PACKETS}
    condition = " && ".join(
        f"connvo.inbound('{kind}', '{agent_session}') >= {minimum[kind]}" for kind in kinds
    )
    await page.wait_for(condition)
    return {
        kind: await page.evaluate(f"connvo.inbound('{kind}', '{agent_session}')") for kind in kinds
    }


async def connected(agent: RunningAgent, page_session: str, page: Page) -> Any:
    """The agent's session with the page, once connected (with the page's log if it never is)."""
    try:
        async with asyncio.timeout(TIMEOUT_S):
            session = await agent.manager.wait_session(page_session)
            await session.connected.wait()
    except TimeoutError:
        log = await page.evaluate("connvo.state.log.slice(-40).join('\\n')")
        raise AssertionError(
            f"not connected; agent sessions {agent.manager.sessions}\npage log:\n{log}"
        ) from None
    return session


async def media_both_ways(
    agent: RunningAgent,
    page: Page,
    page_session: str,
    kinds: tuple[str, ...] = ("audio", "video"),
) -> None:
    await agent_receives(agent, page_session, kinds)
    agent_session = agent.participant.local.session_id
    received = await page_receives(page, agent_session, kinds)
    counts = agent.received[page_session]
    for kind in kinds:
        assert counts.get(kind, 0) > 0, counts
        assert received[kind] > 0, received
    # Chromium sends only to the agent's 127.0.0.1 (it may send from any of its own sockets: the
    # agent learns that one as a peer-reflexive address of this machine, reached through lo).
    summary = await page.summary()
    path = summary["peers"][agent_session]["stats"]["path"]
    assert path.split(" -> ")[1].startswith("127.0.0.1:"), path


@pytest.mark.parametrize("offerer", ["chromium", "agent"])
async def test_offer_answer_both_directions(
    chromium: Browser, pages: list[Page], meeting: Meeting, agent_factory: Any, offerer: str
) -> None:
    agent_offers = offerer == "agent"
    agent = await agent_factory(meeting, "bot", call_everyone=agent_offers, discovery_interval=0.3)
    page, page_session = await open_page(
        chromium, pages, meeting, "alice", call=0 if agent_offers else 1
    )
    await connected(agent, page_session, page)
    await media_both_ways(agent, page, page_session)
    summary = await page.summary()
    peer = summary["peers"][agent.participant.local.session_id]
    if agent_offers:
        assert (peer["sent"]["offers"], peer["received"]["offers"]) == (0, 1), peer
    else:
        assert (peer["sent"]["offers"], peer["received"]["answers"]) == (1, 1), peer
    assert peer["connectionState"] == "connected"


async def test_agent_restarts_ice_after_chromium_offered(
    chromium: Browser, pages: list[Page], meeting: Meeting, agent_factory: Any
) -> None:
    """Chromium offered first, so its header-extension ids were negotiated (audio level 1, where
    aiortc numbers mid 1). The agent's ICE restart offers from a fresh connection: Chromium must
    accept it ("RTP extension ID reassignment not supported" otherwise) and media flows again."""
    agent = await agent_factory(meeting, "bot")
    page, page_session = await open_page(chromium, pages, meeting, "alice")
    session = await connected(agent, page_session, page)
    await media_both_ways(agent, page, page_session)
    agent_session = agent.participant.local.session_id
    before = await page.evaluate(f"connvo.inbound('audio', '{agent_session}')")
    session.connected.clear()
    session.request_offer("test: ice restart", restart=True)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await session.connected.wait()
    except TimeoutError:
        log = await page.evaluate("connvo.state.log.slice(-20).join('\\n')")
        raise AssertionError(f"no reconnection after the restart; page log:\n{log}") from None
    await page.wait_for(f"connvo.inbound('audio', '{agent_session}') > {before}")
    assert session.stats.replaced_connections == 1
    peer = (await page.summary())["peers"][agent_session]
    assert peer["received"]["offers"] == 1 and peer["connectionState"] == "connected", peer
    log = await page.evaluate("connvo.state.log.join('\\n')")
    assert "signal failed" not in log, log


async def backend_until(check: Any) -> Any:
    """Poll the dev backend's database until `check()` is truthy (another process writes it)."""
    async with asyncio.timeout(TIMEOUT_S):
        return await poll_until(lambda: _async(check))


async def _async(check: Any) -> Any:
    return check()


async def test_chromium_trickles_candidates_and_end_of_candidates(
    chromium: Browser, pages: list[Page], meeting: Meeting, agent_factory: Any
) -> None:
    agent = await agent_factory(meeting, "bot")
    page, page_session = await open_page(chromium, pages, meeting, "alice")
    session = await connected(agent, page_session, page)
    await media_both_ways(agent, page, page_session)

    def trickled() -> list[dict[str, Any]]:
        rows = [r for r in backend_signals(meeting, page_session) if r["type"] == "ice"]
        ends = [r for r in rows if json.loads(r["data"])["candidate"] == ""]
        return rows if ends and all(r["processed"] for r in rows) else []

    rows = await backend_until(trickled)
    candidates = [json.loads(r["data"]) for r in rows]
    ends = [c for c in candidates if c["candidate"] == ""]
    real = [c for c in candidates if c["candidate"]]
    assert len(ends) == 1 and real, candidates
    # only loopback addresses left the page (loopback=1)
    assert all(c["candidate"].split()[4] == "127.0.0.1" for c in real), real
    # the agent handled each one once and applied them, end-of-candidates included
    local = agent.participant.local
    path = state_file(agent.participant.settings.state_dir, meeting.id, local.user_id)
    with contextlib.closing(sqlite3.connect(path)) as db:
        handled = dict(db.execute("SELECT id, outcome || '/' || times FROM signals").fetchall())
    assert {handled.get(r["id"]) for r in rows} == {"applied/1"}, handled
    ice = session.pc.getTransceivers()[0].receiver.transport.transport
    assert ice._connection._remote_candidates_end  # end-of-candidates reached aioice
    # the page's offer itself carried no candidate: all of them were trickled
    offer = next(
        json.loads(r["data"])
        for r in backend_signals(meeting, page_session)
        if r["type"] == "sdp" and json.loads(r["data"])["type"] == "offer"
    )
    assert "a=candidate:" not in offer["sdp"]


async def two_guests_in_order(meeting: Meeting) -> tuple[str, str]:
    """Two new participants, (lower user id, higher user id); both get tokens in `meeting`.

    Which side is polite follows the user ids, and the dev backend's ids are random: pick the
    roles from the order of two fresh ids rather than hunting for an id on one side of a fixed one
    (which fails when the fixed one sits near either end)."""
    issued: dict[str, dict[str, str]] = {}
    async with httpx.AsyncClient(base_url=meeting.server.url) as http:
        for name in ("guest-a", "guest-b"):
            reply = await http.post("/dev/token", json={"name": name, "meeting": meeting.id})
            reply.raise_for_status()
            issued[name] = reply.json()
    low, high = sorted(issued, key=lambda name: issued[name]["userId"])
    for name, row in issued.items():
        meeting.tokens[name] = row["token"]
        meeting.users[name] = row["userId"]
    return low, high


@pytest.mark.parametrize("polite", ["chromium", "agent"])
async def test_glare_both_offer_at_once(
    chromium: Browser, pages: list[Page], meeting: Meeting, agent_factory: Any, polite: str
) -> None:
    # The page holds its offer until the agent's offer arrives, then sends it before applying the
    # agent's: the offers cross, and each side sees the other's offer while it has its own out.
    # The participant with the higher user id is the polite one. The page's first discovery is
    # held back 0.8 s, so the agent (discovering every 0.3 s) has usually offered first: the page
    # must still make its own offer before it reads the agent's (it once answered it, and nothing
    # crossed).
    low, high = await two_guests_in_order(meeting)
    name, agent_name = (high, low) if polite == "chromium" else (low, high)
    agent = await agent_factory(meeting, agent_name, call_everyone=True, discovery_interval=0.3)
    held = ("meetings/webrtc/signaling/getActiveSessions", 0.8)
    page, page_session = await open_page(chromium, pages, meeting, name, held, glare=1)
    session = await connected(agent, page_session, page)
    await media_both_ways(agent, page, page_session)
    peer = (await page.summary())["peers"][agent.participant.local.session_id]
    assert peer["sent"]["offers"] == 1 and peer["received"]["offers"] == 1, peer
    assert peer["polite"] == (polite == "chromium")
    assert session.polite == (polite == "agent")
    if polite == "chromium":
        # the page rolled back and answered; the agent ignored the page's offer
        assert peer["glare"] == {"ignored": 0, "rolledBack": 1}, peer
        assert session.stats.replaced_connections == 0
    else:
        # the agent replaced its connection and answered; the page ignored the agent's offer
        assert peer["glare"] == {"ignored": 1, "rolledBack": 0}, peer
        assert session.stats.replaced_connections == 1


async def test_chromium_adds_video_mid_call(
    chromium: Browser, pages: list[Page], meeting: Meeting, agent_factory: Any
) -> None:
    agent = await agent_factory(meeting, "bot")
    page, page_session = await open_page(chromium, pages, meeting, "alice", video=0)
    session = await connected(agent, page_session, page)
    await media_both_ways(agent, page, page_session, kinds=("audio",))
    agent_session = agent.participant.local.session_id
    # without a camera the page offered to receive video only: nothing reaches the agent
    assert agent.received[page_session].get("video", 0) == 0
    sdp = await page.evaluate("connvo.state.peers.values().next().value.pc.localDescription.sdp")
    assert "a=recvonly" in sdp.split("m=video")[1]

    await page.evaluate("connvo.addVideo()")
    await media_both_ways(agent, page, page_session, kinds=("audio", "video"))
    peer = (await page.summary())["peers"][agent_session]
    assert peer["sent"]["offers"] == 2 and peer["received"]["answers"] == 2, peer
    # plain renegotiation: the same session and connection on the agent's side
    assert agent.session(page_session) is session
    assert session.stats.replaced_connections == 0


async def test_chromium_reload_replaces_the_session(
    chromium: Browser, pages: list[Page], meeting: Meeting, agent_factory: Any
) -> None:
    agent = await agent_factory(meeting, "bot")
    page, first = await open_page(chromium, pages, meeting, "alice")
    old = await connected(agent, first, page)
    await media_both_ways(agent, page, first)

    await page.reload()
    second = await page.wait_for(
        f"connvo.state.running && connvo.state.sessionId !== '{first}' && connvo.state.sessionId"
    )
    assert second != first
    await connected(agent, second, page)
    async with asyncio.timeout(TIMEOUT_S):
        await old.closed.wait()
    assert first not in agent.manager.sessions
    assert old.close_reason in ("replaced by a newer session", "remote left"), old.close_reason
    await media_both_ways(agent, page, second)


@pytest.mark.parametrize("candidates", ["trickled", "in the offer"])
async def test_mdns_candidates_cost_the_agent_nothing(
    mdns_chromium: Browser,
    pages: list[Page],
    meeting: Meeting,
    agent_factory: Any,
    candidates: str,
) -> None:
    # No media permission (no fake UI): Chromium hides its addresses behind mDNS names. The page
    # sends a drawn pattern and a tone instead of camera and microphone.
    gather = int(candidates == "in the offer")
    agent = await agent_factory(meeting, "bot", poll_idle_interval=0.05)
    page, page_session = await open_page(
        mdns_chromium, pages, meeting, "alice", synthetic=1, gather=gather
    )
    await connected(agent, page_session, page)
    await media_both_ways(agent, page, page_session)

    rows = backend_signals(meeting, page_session)
    sdp = [json.loads(r["data"]) | {"ts": r["timestamp"]} for r in rows if r["type"] == "sdp"]
    offer = next(d for d in sdp if d["type"] == "offer")
    if gather:
        lines = [ln for ln in offer["sdp"].splitlines() if ln.startswith("a=candidate:")]
    else:
        lines = [json.loads(r["data"])["candidate"] for r in rows if r["type"] == "ice"]
        lines = [ln for ln in lines if ln]
    hosts = {ln.split()[4] for ln in lines}
    assert hosts and all(h.endswith(".local") for h in hosts), hosts
    # The answer is in the backend well under the ~1 s aiortc would wait resolving mDNS names:
    # both timestamps are the backend's clock; this includes the agent's 50 ms poll.
    answer = next(
        json.loads(r["data"]) | {"ts": r["timestamp"]}
        for r in backend_signals(meeting, agent.participant.local.session_id)
        if r["type"] == "sdp"
    )
    assert answer["type"] == "answer"
    assert answer["ts"] - offer["ts"] < 500, answer["ts"] - offer["ts"]
