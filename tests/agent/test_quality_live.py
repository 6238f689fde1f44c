"""A session measures its connection's quality as media flows: real aiortc peers through the dev
backend, on loopback (no loss, a MOS users are satisfied with, every frame counted)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from agent.peer.session import PeerSession
from agent.peer.session_quality import IntervalQuality, describe
from tests.agent.conftest import Meeting, RunningAgent
from tests.agent.test_negotiation import TIMEOUT, media_both_ways


class Measurements:
    """What a session's quality observer was told, with an event per measurement."""

    def __init__(self) -> None:
        self.intervals: list[IntervalQuality] = []
        self._changed = asyncio.Event()

    def __call__(self, session: PeerSession, interval: IntervalQuality) -> None:
        self.intervals.append(interval)
        self._changed.set()

    async def wait(self, count: int) -> None:
        while len(self.intervals) < count:
            self._changed.clear()
            await self._changed.wait()


async def start(
    agent_factory: Callable[..., Any], meeting: Meeting, interval_s: float
) -> tuple[RunningAgent, Measurements]:
    agent: RunningAgent = await agent_factory(meeting)
    measurements = Measurements()
    # the sessions take these settings when they are made: none is yet
    agent.participant.settings.session.quality_interval = interval_s
    agent.participant.settings.session.quality_observer = measurements
    return agent, measurements


async def test_a_session_measures_quality_every_interval(
    meeting: Meeting, agent_factory: Callable[..., Any]
) -> None:
    agent, measurements = await start(agent_factory, meeting, interval_s=1.0)
    async with meeting.peer("alice") as alice:
        await alice.offer(meeting.users["bot"])
        await media_both_ways(agent, alice)
        session = agent.session(alice.session_id)
        calls = 0
        pc = session.pc
        assert pc is not None
        read = pc.getStats  # counted, not changed: one reading per liveness tick

        async def counted() -> Any:
            nonlocal calls
            calls += 1
            return await read()

        pc.getStats = counted  # type: ignore[method-assign]
        before = len(measurements.intervals)
        async with asyncio.timeout(TIMEOUT):
            await measurements.wait(before + 3)
        # each measurement is the liveness check's own reading: one getStats per tick in all
        # (less one if a tick was reading as the count began)
        measured = len(measurements.intervals) - before
        assert measured - 1 <= calls <= measured, (calls, measured)
        first, *_, last = measurements.intervals
        assert last.at - first.at >= 1.5
        inbound, outbound = last.inbound, last.outbound
        assert inbound.interval_s is not None and 0.5 <= inbound.interval_s <= 1.6
        # loopback: nothing lost, and a MOS above G.107's "satisfied" (a loaded machine's
        # event-loop stalls show as jitter, which lowers it a little)
        assert inbound.packets > 50 and inbound.packets_lost == 0 and inbound.loss_pct == 0
        assert inbound.audio_mos is not None and inbound.audio_mos > 4.0
        assert outbound.packets > 50 and outbound.audio_mos is not None
        assert outbound.rtt_ms is not None and outbound.rtt_ms < 50
        assert inbound.bitrate_kbps is not None and inbound.bitrate_kbps > 50
        # aiortc's test video, 30 frames a second, decoded by the agent and counted as read
        # (a busy machine may stall the loop into a freeze: their count is checked through an
        # impaired link, tests/network/test_quality_impaired.py)
        assert inbound.video_frames is not None and inbound.fps is not None
        assert 10 <= inbound.fps <= 35 and inbound.freeze_count is not None
        assert outbound.video_frames is None  # what the far end renders is unknown

        view = session.quality
        assert view.latest == session.latest_quality == measurements.intervals[-1]
        totals = view.inbound_total
        assert totals.intervals == len(view.recent) == len(measurements.intervals)
        assert totals.packets == sum(i.inbound.packets for i in measurements.intervals)
        assert totals.audio_mos_min is not None and totals.audio_mos_min > 4.0
        assert totals.freeze_count is not None and totals.freezes_per_min is not None
        assert totals.fps is not None and 10 <= totals.fps <= 35
        # every frame the agent's reader got was counted, up to the last measurement
        assert totals.video_frames is not None
        assert 0 < totals.video_frames <= agent.received[alice.session_id]["video"]
        assert "in MOS 4." in describe(view) and " fps, " in describe(view)


async def test_closing_measures_the_last_interval(
    meeting: Meeting, agent_factory: Callable[..., Any]
) -> None:
    agent, measurements = await start(agent_factory, meeting, interval_s=60.0)
    async with meeting.peer("alice") as alice:
        await alice.offer(meeting.users["bot"])
        await media_both_ways(agent, alice)
        session = agent.session(alice.session_id)
        assert session.latest_quality is None  # the first interval is a minute away
        assert session.connected_at is not None
        connected_for = time.monotonic() - session.connected_at
        await session.close("test")
    # the close took a last reading: the connection's whole short life is in the totals
    (interval,) = measurements.intervals
    totals = session.quality.inbound_total
    assert totals.intervals == 1 and totals.packets == interval.inbound.packets > 0
    assert totals.duration_s >= connected_for
    assert totals.audio_mos_mean is not None and totals.audio_mos_mean > 4.0
    assert session.quality.outbound_total.packets > 0


async def test_totals_carry_on_across_an_ice_restart(
    meeting: Meeting, agent_factory: Callable[..., Any]
) -> None:
    agent, measurements = await start(agent_factory, meeting, interval_s=1.0)
    async with meeting.peer("alice") as alice:
        await alice.offer(meeting.users["bot"])
        await media_both_ways(agent, alice)
        session = agent.session(alice.session_id)
        async with asyncio.timeout(TIMEOUT):
            await measurements.wait(2)
            session.connected.clear()
            await alice.offer(meeting.users["bot"], restart=True)
            await session.connected.wait()
            restarted = len(measurements.intervals)
            await measurements.wait(restarted + 2)
    assert session.stats.replaced_connections == 1
    # the new connection's statistics start from zero: its first interval counts its own
    # packets (a second's worth), not the old connection's again
    first = measurements.intervals[restarted].inbound
    assert first.interval_s is not None and first.interval_s <= 1.6
    assert 0 < first.packets < 2 * max(i.inbound.packets for i in measurements.intervals[:2])
    totals = session.quality.inbound_total
    assert totals.intervals == len(measurements.intervals)
    assert totals.packets == sum(i.inbound.packets for i in measurements.intervals)
    assert totals.audio_mos_min is not None and totals.audio_mos_min > 4.0
