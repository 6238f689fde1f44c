"""Longer session behaviour: renegotiation, ICE restart, several peers, backlogs, ID orders."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Callable
from typing import cast

import pytest
from aioice import stun

from agent.convex import ConvexClient, TokenSource
from agent.peer.manager import ManagerSettings, SessionManager
from agent.peer.session import LocalIdentity, PeerState
from agent.signaling.api import ConnvoApi
from tests.agent.conftest import Meeting, make_meeting
from tests.agent.test_negotiation import TIMEOUT, applied_once, media_both_ways
from tests.support.peers import SIGNALING, split_candidates
from tests.support.waiting import POLL_INTERVAL_S, poll_until


async def test_renegotiation_remote_adds_video(meeting: Meeting, agent_factory) -> None:
    agent = await agent_factory(meeting)
    async with meeting.peer("alice", video=False) as alice:
        await alice.offer(meeting.users["bot"])
        async with asyncio.timeout(TIMEOUT):
            await alice.connected.wait()
            await agent.frames_event(alice.session_id, "audio").wait()
        assert not agent.frames_event(alice.session_id, "video").is_set()
        await alice.add_video()
        async with asyncio.timeout(TIMEOUT):
            await agent.frames_event(alice.session_id, "video").wait()
        session = agent.session(alice.session_id)
        assert session.state == "connected"
        assert session.stats.replaced_connections == 0  # renegotiated in place


async def test_remote_ice_restart(meeting: Meeting, agent_factory) -> None:
    """The remote restarts ICE (new credentials): the agent follows on a fresh connection."""
    agent = await agent_factory(meeting)
    async with meeting.peer("alice") as alice:
        await alice.offer(meeting.users["bot"])
        await media_both_ways(agent, alice)
        session = agent.session(alice.session_id)
        session.connected.clear()
        await alice.offer(meeting.users["bot"], restart=True)
        async with asyncio.timeout(TIMEOUT):
            await alice.connected.wait()
            await session.connected.wait()
        assert session.stats.replaced_connections == 1
    applied_once(agent)


async def test_an_answer_not_taken_is_followed_by_an_offer(meeting: Meeting, agent_factory) -> None:
    """The remote drops the agent's answer: the agent offers afresh after ice_restart_after."""
    agent = await agent_factory(meeting, ice_restart_after=1.0)
    async with meeting.peer("alice", ignore_answers=1) as alice:
        await alice.offer(meeting.users["bot"])
        async with asyncio.timeout(TIMEOUT):
            await alice.connected.wait()
        # the agent offered afresh, and alice answered it
        assert alice.offers_received == 1 and alice.answers == 1
        await media_both_ways(agent, alice)
    applied_once(agent)


class _RefusedChecks(asyncio.DatagramProtocol):
    """A remote candidate whose every check is refused: an error response authenticated with the
    remote's ICE password (aioice drops unauthenticated ones and retransmits for half a minute)."""

    def __init__(self, password: str) -> None:
        self.password = password.encode()
        self.refused = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = stun.parse_message(data)
        response = stun.Message(
            message_method=request.message_method,
            message_class=stun.Class.ERROR,
            transaction_id=request.transaction_id,
        )
        response.attributes["ERROR-CODE"] = (400, "Bad Request")
        response.add_message_integrity(self.password)
        response.add_fingerprint()
        self.transport.sendto(bytes(response), addr)
        self.refused += 1


async def test_a_connection_that_fails_while_connecting_is_restarted_at_once(
    meeting: Meeting, agent_factory
) -> None:
    """Every candidate pair fails: the remote's only candidate (and end-of-candidates, both sent
    before its offer) leads to a socket that refuses the checks. The agent offers afresh at once
    instead of waiting ice_restart_after (20 s here, longer than the test waits)."""
    agent = await agent_factory(meeting, ice_restart_after=20.0)
    async with meeting.peer("alice") as alice:
        bot = meeting.users["bot"]
        alice.remote_user_id = bot
        await alice._new_pc()
        assert alice.pc is not None
        await alice.pc.setLocalDescription(await alice.pc.createOffer())
        offer, candidates = split_candidates(alice.pc.localDescription.sdp)
        password = re.search(r"a=ice-pwd:(\S+)", offer)
        assert password is not None and len(candidates) == 1
        transport, refuser = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _RefusedChecks(password.group(1)), local_addr=("127.0.0.1", 0)
        )
        try:
            port = transport.get_extra_info("sockname")[1]
            candidate = candidates[0]
            candidate["candidate"] = re.sub(
                r"127\.0\.0\.1 \d+ typ", f"127.0.0.1 {port} typ", candidate["candidate"]
            )
            await alice.send_ice(candidate, bot)
            await alice.send_ice({"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}, bot)
            await alice.send_sdp("offer", offer, bot)
            async with asyncio.timeout(TIMEOUT):
                await alice.connected.wait()
        finally:
            transport.close()
        session = agent.session(alice.session_id)
        assert refuser.refused >= 1
        assert alice.offers_received == 1  # the agent's offer, with fresh ICE credentials
        assert session.stats.ice_restarts == 1
        await media_both_ways(agent, alice)
    applied_once(agent)


async def test_a_connection_whose_state_event_is_lost_is_adopted(
    meeting: Meeting, agent_factory
) -> None:
    """The connection comes up but its connectionstatechange never reaches the session (seen once
    with Chromium; injected here by removing the listener): the watchdog finds DTLS connected and
    adopts it, instead of taking the answer as lost and tearing a working connection down."""
    agent = await agent_factory(meeting, ice_restart_after=1.0)
    async with meeting.peer("alice") as alice:
        await alice.offer(meeting.users["bot"])
        async with asyncio.timeout(TIMEOUT):
            session = await agent.manager.wait_session(alice.session_id)
            await session.wait_state(PeerState.NEGOTIATING)  # its connection exists, unanswered
            session.pc.remove_all_listeners("connectionstatechange")
            await alice.connected.wait()
            await session.wait_state(PeerState.CONNECTED)
        assert session.stats.replaced_connections == 0 and alice.offers_received == 0
        await media_both_ways(agent, alice)


async def test_agent_restarts_ice_when_media_stops(meeting: Meeting, agent_factory) -> None:
    """The remote's connection dies silently: the agent notices the silence and restarts ICE."""
    agent = await agent_factory(meeting, media_timeout=1.0, ice_restart_after=0.5)
    async with meeting.peer("alice") as alice:
        await alice.offer(meeting.users["bot"])
        await media_both_ways(agent, alice)
        session = agent.session(alice.session_id)
        await alice._close_pc()  # the remote's connection vanishes; it keeps signalling
        async with asyncio.timeout(TIMEOUT):
            await session.wait_state(PeerState.DISCONNECTED)
            await alice.connected.wait()
            await session.connected.wait()
        assert session.stats.ice_restarts >= 1
        assert alice.offers_received >= 1  # the restart came from the agent


async def test_a_user_back_after_a_crash_is_called_on_the_new_session(
    meeting: Meeting, agent_factory
) -> None:
    """A remote that only answers crashes (its row stays listed: the backend never expires it)
    and comes back with a new session: the agent calls the new one as soon as its connection to
    the old one is down, without waiting for its ICE restarts to run out."""
    agent = await agent_factory(
        meeting, call_everyone=True, discovery_interval=0.3, media_timeout=1.0
    )
    async with meeting.peer("alice") as alice:
        await media_both_ways(agent, alice)
        old = agent.session(alice.session_id)
        await alice.crash()
    async with meeting.peer("alice") as again:
        # far inside the ICE restarts' bound (3 x session_timeout, 30 s each)
        async with asyncio.timeout(TIMEOUT):
            await again.connected.wait()
            await old.closed.wait()
            await agent.frames_event(again.session_id, "audio").wait()
        assert again.offers_received == 1
        assert old.close_reason == "replaced by a newer session"
        assert [s.remote_session_id for s in agent.manager.sessions.values()] == [again.session_id]


async def test_a_restart_offer_to_a_session_down_for_long_gets_the_whole_timeout(
    meeting: Meeting, agent_factory
) -> None:
    """The connection went down longer ago than the session timeout, then the remote restarts
    ICE: the agent negotiates with the whole timeout ahead of it, not the first negotiation's."""
    agent = await agent_factory(
        meeting, media_timeout=1.0, ice_restart_after=60.0, session_timeout=3.0
    )
    async with meeting.peer("alice") as alice:
        await alice.offer(meeting.users["bot"])
        await media_both_ways(agent, alice)
        session = agent.session(alice.session_id)
        first_started = session.negotiation_started_at
        await alice._close_pc()  # the remote's connection vanishes; it keeps signalling
        async with asyncio.timeout(TIMEOUT):
            await session.wait_state(PeerState.DISCONNECTED)

        async def past_the_first_timeout() -> bool:
            return time.monotonic() - first_started > 3.0

        async with asyncio.timeout(TIMEOUT):
            await poll_until(past_the_first_timeout)
        session.connected.clear()
        await alice.offer(meeting.users["bot"], restart=True)
        async with asyncio.timeout(TIMEOUT):
            await session.connected.wait()
        assert session.state is PeerState.CONNECTED
        assert session.negotiation_started_at > first_started


async def test_mesh_of_three_peers(meeting: Meeting, agent_factory) -> None:
    agent = await agent_factory(meeting)
    async with (
        meeting.peer("alice") as alice,
        meeting.peer("bob") as bob,
        meeting.peer("carol") as carol,
    ):
        for peer in (alice, bob, carol):
            await peer.offer(meeting.users["bot"])
        await asyncio.gather(*(media_both_ways(agent, p) for p in (alice, bob, carol)))
        assert {s.remote_user_id for s in agent.manager.sessions.values()} == {
            meeting.users["alice"],
            meeting.users["bob"],
            meeting.users["carol"],
        }
    applied_once(agent)


@pytest.mark.parametrize("generation", [1, 2])
@pytest.mark.parametrize("ids", ["random", "ordered"])
async def test_generations_and_id_orders(devserver_factory, agent_factory, generation, ids) -> None:
    meeting = make_meeting(devserver_factory(generation=generation, ids=ids))
    agent = await agent_factory(meeting)
    async with meeting.peer("alice") as alice:
        await alice.offer(meeting.users["bot"], trickle=True, end_of_candidates=True)
        await media_both_ways(agent, alice)
    applied_once(agent)


async def test_stale_backlog_generation_1(devserver_factory, agent_factory) -> None:
    """250 unprocessed signals from a dead session sit in front: generation 1 returns nothing
    newer until they are acknowledged. The agent drains them and still connects."""
    meeting = make_meeting(devserver_factory(generation=1, ids="random"))
    async with meeting.peer("carol") as ghost:
        for i in range(250):
            await ghost.send_ice(
                {
                    "candidate": f"candidate:{i} 1 udp 1 127.0.0.1 {10000 + i} typ host",
                    "sdpMid": "0",
                    "sdpMLineIndex": 0,
                },
                meeting.users["bot"],
            )
        await ghost.crash()
    agent = await agent_factory(meeting)
    async with meeting.peer("alice") as alice:
        await alice.offer(meeting.users["bot"])
        await media_both_ways(agent, alice)
    poller = agent.participant.poller
    assert poller.stats.received == 251  # 250 stale candidates and the offer
    applied_once(agent)


async def test_cancelled_agent_still_leaves(meeting: Meeting, agent_factory) -> None:
    """Cancelling the participant's task (not a clean stop) still closes, reports and leaves."""
    agent = await agent_factory(meeting)
    async with meeting.peer("alice") as alice:
        await alice.offer(meeting.users["bot"])
        await media_both_ways(agent, alice)
        session = agent.session(alice.session_id)
        agent.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await agent.task
        assert session.state == "closed" and session.pc is None
        active = await alice.call(
            "meetings/webrtc/signaling/getActiveSessions", meetingId=meeting.id
        )
        assert all(s["userId"] != meeting.users["bot"] for s in active)
        people = await alice.call("meetings/queries/listMeetingParticipants", meetingId=meeting.id)
        assert next(p for p in people if p["userId"] == meeting.users["bot"])["presence"] == "left"


async def test_a_request_held_by_the_backend_does_not_hold_up_leaving(
    meeting: Meeting, agent_factory
) -> None:
    """Stopping while the agent's answer is held 8 s by a slow backend: the session's close
    interrupts that request after a grace second, so the agent still reports, closes its session
    and leaves within its 4 s shutdown budget (before, it gave up leaving)."""
    server = meeting.server
    send_signal = "meetings/webrtc/signaling/exchangeSessionDescription"

    async def answer_held(before: int) -> bool:
        return int(server.stats()["functions"].get(send_signal, 0)) > before

    agent = await agent_factory(meeting)
    loop = asyncio.get_running_loop()
    async with meeting.peer("alice") as alice:
        await alice.offer(meeting.users["bot"])  # one request, candidates in the offer
        before = int(server.stats()["functions"].get(send_signal, 0))
        server.set_faults(latency_ms=8000, functions=[send_signal])
        try:
            async with asyncio.timeout(TIMEOUT):
                await poll_until(lambda: answer_held(before))
            session = agent.session(alice.session_id)
            started = loop.time()
            agent.stop.set()
            async with asyncio.timeout(TIMEOUT):
                await agent.task
            took = loop.time() - started
        finally:
            server.clear_faults()
        assert session.state == "closed" and session.pc is None
        assert took < 4.0, took
        people = await alice.call("meetings/queries/listMeetingParticipants", meetingId=meeting.id)
        assert next(p for p in people if p["userId"] == meeting.users["bot"])["presence"] == "left"


async def test_unanswered_stun_server_does_not_stall_the_answer(
    devserver_factory, agent_factory
) -> None:
    """The meeting's ICE servers come from getMeetingConnectionInfo. A STUN server that never
    answers (a closed port on loopback) would hold aioice's gathering for 5 s; the agent caps it."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never read: requests go unanswered
        port = silent.getsockname()[1]
        server = devserver_factory(ice_servers=[f"stun:127.0.0.1:{port}"])
        meeting = make_meeting(server)
        agent = await agent_factory(meeting)
        assert [s.urls for s in agent.participant.settings.session.ice_servers] == [
            f"stun:127.0.0.1:{port}"
        ]
        async with meeting.peer("alice") as alice:
            await alice.offer(meeting.users["bot"])
            async with asyncio.timeout(TIMEOUT):
                await alice.wait_signal(lambda s: s["data"].get("type") == "answer")
            session = agent.session(alice.session_id)
            async with asyncio.timeout(TIMEOUT):
                await session.wait_state(PeerState.CONNECTED)
            # offer applied -> connected includes gathering: well under aioice's 5 s
            assert session.time_to_connected is not None and session.time_to_connected < 3.0


async def test_discovery_backs_off_while_nothing_changes(meeting: Meeting, agent_factory) -> None:
    """Discovery doubles its gap while the meeting is unchanged, starts small again after a change.

    Asserted on the gaps between the backend's getActiveSessions calls, as ratios: a loaded machine
    stretches every gap a little, never turns a doubling sequence into a flat one.
    """
    server = meeting.server
    name = "meetings/webrtc/signaling/getActiveSessions"
    clock = _CallTimes(lambda: int(server.stats()["functions"].get(name, 0)))
    first, longest = 0.3, 2.4
    async with asyncio.timeout(TIMEOUT), asyncio.TaskGroup() as tasks:
        sampler = tasks.create_task(clock.run())
        # alone: gaps of 0.3, 0.6, 1.2, then 2.4 s
        await agent_factory(
            meeting, call_everyone=True, discovery_first_interval=first, discovery_interval=longest
        )
        await clock.wait_for(5)
        alone = clock.gaps()[-4:]
        # 8x when doubling, 1x when fixed (a loaded CI machine stretched a 0.2 s gap to 0.58 s)
        assert alone[-1] > 2 * alone[0], alone
        # someone joins: the first discovery that sees them is followed by short gaps again
        async with meeting.peer("alice") as alice:
            await clock.next_sample()  # every call counted from here on came after alice joined
            joined = len(clock.times)
            await clock.wait_for(joined + 2)
            await alice.connected.wait()
        # times[joined] is the call that found alice or the one after: the next gap is 0.3 or 0.6 s
        after = clock.gaps()[joined]
        assert after < alone[-1] / 2, (alone, after)  # not the 2.4 s of an unchanged meeting
        sampler.cancel()


async def test_discovery_counts_joining_as_a_change(meeting: Meeting) -> None:
    """The first discovery is a change even in an empty meeting, so the next one comes after
    discovery_first_interval, not a doubled gap: a star spoke that joins a moment before its hub
    finds the hub 1 s later (a load test's 2 s hold once ended before a spoke had called)."""
    async with ConvexClient(meeting.server.url, TokenSource(value=meeting.tokens["bot"])) as client:
        local = LocalIdentity(meeting.id, meeting.users["bot"], "bot-session")
        manager = SessionManager(ConnvoApi(client), local, ManagerSettings(call_everyone=True))
        assert await manager.discover_once()  # nobody else there: joining is still a change
        assert not await manager.discover_once()  # the same view again


class _CallTimes:
    """When a backend call count went up, sampled every POLL_INTERVAL_S (another process)."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count
        self.times: list[float] = []
        self._samples = 0
        self._changed = asyncio.Condition()

    async def run(self) -> None:
        seen = self._count()
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            now, total = asyncio.get_running_loop().time(), self._count()
            self.times.extend([now] * (total - seen))
            seen = total
            self._samples += 1
            async with self._changed:
                self._changed.notify_all()

    async def wait_for(self, n: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.times) >= n)

    async def next_sample(self) -> None:
        async with self._changed:
            target = self._samples + 1
            await self._changed.wait_for(lambda: self._samples >= target)

    def gaps(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.times)]


async def test_a_remote_that_closed_before_it_was_ever_listed_is_dropped(
    meeting: Meeting, agent_factory
) -> None:
    """The remote's session opens, calls the agent and closes its row, all between two of the
    agent's reads of the active sessions (a page that left a second after joining): it was never
    seen listed, and the next read drops it, as one seen listed before would be."""
    agent = await agent_factory(meeting, discovery_first_interval=600.0, discovery_interval=600.0)
    async with meeting.peer("alice") as alice:
        await alice.offer(meeting.users["bot"])
        await media_both_ways(agent, alice)
        session = agent.session(alice.session_id)
        await alice.call(
            f"{SIGNALING}/closeSession", meetingId=meeting.id, sessionId=alice.session_id
        )
        await agent.manager.discover_once()
        async with asyncio.timeout(TIMEOUT):
            await session.closed.wait()
        assert session.close_reason == "remote left"
        assert alice.session_id not in agent.manager.sessions
