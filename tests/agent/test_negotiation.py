"""The agent against scripted aiortc peers, over the dev backend's real HTTP API, media flowing."""

from __future__ import annotations

import asyncio
import re

import httpx

import agent.peer.manager as manager_module
from agent.peer.ice import bundles_all_media
from tests.agent.conftest import PEOPLE, Meeting, make_meeting
from tests.faults.helpers import send_stale_backlog
from tests.support.peers import RemotePeer

TIMEOUT = 15.0


async def media_both_ways(agent, peer: RemotePeer) -> None:
    """The agent received audio and video from the peer, and the peer from the agent."""
    async with asyncio.timeout(TIMEOUT):
        await peer.connected.wait()
        await peer.received.audio.wait()
        await peer.received.video.wait()
        await agent.frames_event(peer.session_id, "audio").wait()
        await agent.frames_event(peer.session_id, "video").wait()


def media_ports(sdp: str) -> list[str]:
    """The port of every m-line: one per ICE transport in use."""
    return re.findall(r"^m=\w+ (\d+) ", sdp, re.MULTILINE)


def applied_once(agent) -> None:
    """No signal was applied twice (the state store counts every application)."""
    store = agent.participant.store
    rows = store._db.execute("SELECT id, times FROM signals WHERE times > 1").fetchall()
    assert rows == []


async def test_answer_path(meeting: Meeting, agent_factory) -> None:
    agent = await agent_factory(meeting)
    async with meeting.peer("alice") as alice:
        await alice.offer(meeting.users["bot"])
        await media_both_ways(agent, alice)
        session = agent.session(alice.session_id)
        assert session.remote_user_id == meeting.users["alice"]
        assert session.time_to_connected is not None
        async with asyncio.timeout(TIMEOUT):
            answer = await alice.wait_signal(lambda s: s["data"].get("type") == "answer")
        # The answer comes from the agent's own session and was targeted at alice only.
        assert answer["sessionId"] == agent.participant.local.session_id
        assert answer["fromUserId"] == meeting.users["bot"]
    applied_once(agent)


async def test_offer_path_call_everyone(meeting: Meeting, agent_factory) -> None:
    async with meeting.peer("alice") as alice:
        agent = await agent_factory(meeting, call_everyone=True, discovery_interval=0.2)
        await media_both_ways(agent, alice)
        assert alice.offers_received == 1
        assert alice.answers == 1
        # max-bundle: one ICE transport (one port) for audio and video from the start
        offer = next(s["data"]["sdp"] for s in alice.signals if s["data"].get("type") == "offer")
        assert bundles_all_media(offer)
        assert len(media_ports(offer)) == 2 and len(set(media_ports(offer))) == 1


async def test_offer_without_bundle_gets_a_transport_per_media(
    meeting: Meeting, agent_factory
) -> None:
    # A remote that does not bundle (no a=group:BUNDLE) expects ICE on every m-line: the agent
    # must not put everything on one transport as it does for its own offers. (aiortc writes a
    # BUNDLE group into every answer anyway, so only the transports' ports tell.)
    def unbundled(sdp: str) -> str:
        return "".join(
            line for line in sdp.splitlines(keepends=True) if not line.startswith("a=group:BUNDLE")
        )

    agent = await agent_factory(meeting)
    async with meeting.peer("alice") as alice:
        await alice.offer(meeting.users["bot"], munge=unbundled)
        await media_both_ways(agent, alice)
        async with asyncio.timeout(TIMEOUT):
            answer = await alice.wait_signal(lambda s: s["data"].get("type") == "answer")
        assert len(set(media_ports(answer["data"]["sdp"]))) == 2


async def test_trickled_candidate_before_its_offer_in_one_page(
    devserver_factory, agent_factory
) -> None:
    """The candidate is sent (and, with ordered ids, sorts) before its offer, and both wait in
    the agent's first page: it must buffer the candidate until the offer is applied."""
    meeting = make_meeting(devserver_factory(ids="ordered"))
    async with meeting.peer("alice", video=False) as alice:
        sent = await alice.offer(
            meeting.users["bot"], trickle=True, candidates_first=True, end_of_candidates=True
        )
        # What the agent's first poll will see: the candidate ahead of its offer, in one page.
        async with httpx.AsyncClient(base_url=meeting.server.url) as http:
            response = await http.post(
                "/api/run/meetings/webrtc/signaling/getPendingSignals",
                json={"args": {"meetingId": meeting.id}, "format": "json"},
                headers={"Authorization": f"Bearer {meeting.tokens['bot']}"},
            )
        page = response.json()["value"]
        assert [row["type"] for row in page][:2] == ["ice", "sdp"] and len(page) == sent
        agent = await agent_factory(meeting)
        async with asyncio.timeout(TIMEOUT):
            await alice.connected.wait()
            await agent.frames_event(alice.session_id, "audio").wait()
        poller = agent.participant.poller
        assert poller.stats.received == sent
        assert agent.session(alice.session_id).state == "connected"
    applied_once(agent)


async def test_duplicated_signals_are_harmless(meeting: Meeting, agent_factory) -> None:
    agent = await agent_factory(meeting)
    async with meeting.peer("alice") as alice:
        sent = await alice.offer(meeting.users["bot"], trickle=True, duplicate=True)
        await media_both_ways(agent, alice)
        poller = agent.participant.poller
        async with asyncio.timeout(TIMEOUT):
            while poller.stats.received < sent or not poller.idle:
                await poller.next_change()
        # Two identical offers (a retried mutation) produce one answer.
        answers = [s for s in alice.signals if s["data"].get("type") == "answer"]
        assert len(answers) == 1
        assert agent.session(alice.session_id).stats.replaced_connections == 0
    applied_once(agent)


async def test_glare_settles(meeting: Meeting, agent_factory) -> None:
    """Both sides offer at once: perfect negotiation leaves one connection with media."""
    async with meeting.peer("alice") as alice:
        agent = await agent_factory(meeting, call_everyone=True, discovery_interval=0.05)
        await alice.offer(meeting.users["bot"])
        await media_both_ways(agent, alice)
        session = agent.session(alice.session_id)
        assert session.state == "connected"


async def test_signal_from_wrong_user_rejected(meeting: Meeting, agent_factory) -> None:
    agent = await agent_factory(meeting)
    async with meeting.peer("alice") as alice, meeting.peer("bob") as bob:
        await alice.offer(meeting.users["bot"])
        await media_both_ways(agent, alice)
        # bob forges a signal in alice's session (same session id, his own user)
        bob.session_id = alice.session_id
        await bob.send_sdp("offer", "v=0\r\n", meeting.users["bot"])
        async with asyncio.timeout(TIMEOUT):
            while not agent.manager.rejected:
                await agent.participant.poller.next_change()
        assert agent.session(alice.session_id).state == "connected"
        assert agent.session(alice.session_id).remote_user_id == meeting.users["alice"]


async def test_broadcast_signals_are_handled_like_direct_ones(
    meeting: Meeting, agent_factory
) -> None:
    # Generation 2 delivers broadcasts, but its rows do not say whether a signal was one: a
    # broadcast offer is answered (to its sender) and its broadcast candidates applied.
    agent = await agent_factory(meeting)
    async with meeting.peer("bob") as bob:
        await bob.offer(None, trickle=True, end_of_candidates=True)
        await media_both_ways(agent, bob)
        assert agent.session(bob.session_id).remote_user_id == meeting.users["bob"]
    applied_once(agent)
    rows = agent.participant.store._db.execute("SELECT DISTINCT outcome FROM signals").fetchall()
    assert {outcome for (outcome,) in rows} == {"applied"}


async def test_candidates_after_end_of_candidates_are_ignored(
    meeting: Meeting, agent_factory
) -> None:
    """ICE takes nothing after end-of-candidates (aiortc drops it silently): such a candidate, and
    a second marker, are recorded as ignored, not as applied."""
    agent = await agent_factory(meeting)
    bot = meeting.users["bot"]
    async with meeting.peer("alice", video=False) as alice:
        await alice.offer(bot, trickle=True, end_of_candidates=True)
        poller = agent.participant.poller
        async with asyncio.timeout(TIMEOUT):
            await alice.connected.wait()
            while not poller.idle:
                await poller.next_change()
        store = agent.participant.store

        def count(outcome: str) -> int:
            query = "SELECT COUNT(*) FROM signals WHERE outcome = ?"
            return int(store._db.execute(query, (outcome,)).fetchone()[0])

        applied, ignored, received = count("applied"), count("ignored"), poller.stats.received
        late = "candidate:9 1 udp 2130706431 127.0.0.1 9 typ host"
        await alice.send_ice({"candidate": late, "sdpMid": "0", "sdpMLineIndex": 0}, bot)
        await alice.send_ice({"candidate": "", "sdpMid": "1", "sdpMLineIndex": 1}, bot)
        async with asyncio.timeout(TIMEOUT):
            while poller.stats.received < received + 2 or not poller.idle:
                await poller.next_change()
        assert (count("applied"), count("ignored")) == (applied, ignored + 2)
        assert agent.session(alice.session_id).state == "connected"
    applied_once(agent)


async def test_an_early_candidate_waits_for_its_offer_behind_a_backlog(
    devserver_factory, agent_factory, monkeypatch
) -> None:
    """A candidate whose offer is hidden behind a backlog (pages stay full while acknowledgements
    fail) keeps its session however long that lasts; a session whose offer is nowhere (a poll saw
    everything pending) is dropped, and a late offer then opens a fresh one."""
    monkeypatch.setattr(manager_module, "ORPHAN_TIMEOUT_S", 0.0)
    server = devserver_factory()
    meeting = make_meeting(server, [*PEOPLE, "ghost"])
    bot = meeting.users["bot"]
    server.set_faults(ack_fail_rate=1.0, ack_fail_mode="before")
    await send_stale_backlog(server.url, meeting.tokens["ghost"], meeting.id, bot, 60)
    agent = await agent_factory(meeting, discovery_interval=60.0)
    manager, poller = agent.manager, agent.participant.poller
    async with meeting.peer("alice", video=False) as alice:
        offer, candidates = await alice.prepare_trickled_offer(bot)
        await alice.send_ice(candidates[0], bot)
        async with asyncio.timeout(TIMEOUT):
            await manager.wait_session(alice.session_id)
            views = poller.whole_views
            await poller.next_poll()
            await poller.next_poll()
        assert poller.whole_views == views  # 60 unacknowledged signals: every first page full
        await manager.discover_once()
        assert alice.session_id in manager.sessions  # kept: its offer may be behind the backlog
        await alice.send_sdp("offer", offer, bot)
        server.clear_faults()
        async with asyncio.timeout(TIMEOUT):
            await alice.connected.wait()
            await agent.frames_event(alice.session_id, "audio").wait()
        assert agent.session(alice.session_id).state == "connected"

    async with meeting.peer("bob", video=False) as bob:
        offer, candidates = await bob.prepare_trickled_offer(bot)
        await bob.send_ice(candidates[0], bot)
        async with asyncio.timeout(TIMEOUT):
            orphan = await manager.wait_session(bob.session_id)
            views = poller.whole_views
            while poller.whole_views == views:  # a poll that saw everything pending
                await poller.next_poll()
        await manager.discover_once()
        async with asyncio.timeout(TIMEOUT):
            await orphan.closed.wait()
        assert orphan.close_reason == "no offer arrived"
        await bob.send_sdp("offer", offer, bot)  # late after all: a fresh session answers it
        async with asyncio.timeout(TIMEOUT):
            await bob.connected.wait()
            await agent.frames_event(bob.session_id, "audio").wait()
        assert agent.session(bob.session_id) is not orphan
    applied_once(agent)
