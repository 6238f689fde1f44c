"""The bot and the recorder export each connection's quality as Prometheus metrics, scraped over
HTTP while real aiortc peers send them media through the dev backend; and print it at exit."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from agent.config import AgentSettings
from agent.convex import ConvexClient, TokenSource
from agent.media import MediaSources
from agent.metrics import AgentMetrics
from agent.peer.ice import restrict_host_addresses
from agent.peer.participant import ParticipantSettings
from agent.peer.session import PeerSession
from agent.peer.session_quality import IntervalQuality
from agent.roles.bot import Bot
from agent.roles.recorder import Recorder
from agent.signaling.api import ConnvoApi
from tests.agent.conftest import Meeting, make_meeting

TIMEOUT = 20.0
QUALITY_METRICS = (
    "connvo_agent_audio_mos",
    "connvo_agent_rtp_packets",
    "connvo_agent_jitter_seconds",
    "connvo_agent_rtt_seconds",
    "connvo_agent_transport_bytes",
    "connvo_agent_video_frames",
    "connvo_agent_video_fps",
    "connvo_agent_video_freeze",
    "connvo_agent_keyframe_requests",
)


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses(None)


@pytest.fixture
async def api(devserver: Any) -> AsyncIterator[tuple[Meeting, ConnvoApi]]:
    meeting = make_meeting(devserver, ["bot", "alice"])
    client = ConvexClient(devserver.url, TokenSource(value=meeting.tokens["bot"]))
    yield meeting, ConnvoApi(client)
    await client.aclose()


class Measured:
    """Set once a session's quality was measured `count` times."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.intervals: list[IntervalQuality] = []
        self.done = asyncio.Event()

    def __call__(self, session: PeerSession, interval: IntervalQuality) -> None:
        self.intervals.append(interval)
        if len(self.intervals) >= self.count:
            self.done.set()


def settings(meeting: Meeting, tmp_path: Path, measured: Measured, **keys: Any) -> Any:
    """What `connvo-agent run` would use, measured every second and told to `measured`."""
    participant: ParticipantSettings = AgentSettings(
        url=meeting.server.url,
        token=SecretStr(meeting.tokens["bot"]),
        meeting=meeting.id,
        state_dir=tmp_path / "state",
        poll_idle_interval=0.2,
        **keys,
    ).participant_settings()
    session = dataclasses.replace(
        participant.session, quality_interval=1.0, quality_observer=measured
    )
    return dataclasses.replace(participant, session=session)


def scrape(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


@contextlib.asynccontextmanager
async def running(role: Any) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(role.run(stop))
    try:
        async with asyncio.timeout(TIMEOUT):
            joined = asyncio.create_task(role.participant.joined.wait())
            await asyncio.wait({task, joined}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()
        yield stop
    finally:
        stop.set()
        async with asyncio.timeout(TIMEOUT):
            await task


async def test_bot_exports_quality_and_prints_it_at_exit(
    api: tuple[Meeting, ConnvoApi], tmp_path: Path
) -> None:
    meeting, connvo = api
    measured = Measured(2)
    metrics = AgentMetrics()
    sources = MediaSources.open("tone", "testsrc")
    bot = Bot(connvo, settings(meeting, tmp_path, measured, receive="decode"), sources, metrics)
    server = metrics.start_http_server(0)
    try:
        async with running(bot), meeting.peer("alice") as alice:
            await alice.offer(meeting.users["bot"])
            async with asyncio.timeout(TIMEOUT):
                await measured.done.wait()
                async with httpx.AsyncClient() as http:
                    text = (await http.get(f"http://127.0.0.1:{server.port}/metrics")).text
    finally:
        server.stop()
        sources.close()
    values = scrape(text)
    inbound = '{direction="inbound"}'
    assert values[f"connvo_agent_audio_mos_count{inbound}"] >= 2
    # loopback: every MOS above G.107's "satisfied" 4.03 (bucket edges are upper bounds)
    assert values['connvo_agent_audio_mos_bucket{direction="inbound",le="4.03"}'] == 0
    assert values['connvo_agent_audio_mos_count{direction="outbound"}'] >= 1
    assert values[f"connvo_agent_rtp_packets_total{inbound}"] > 50
    assert values[f"connvo_agent_rtp_packets_lost_total{inbound}"] == 0
    assert values['connvo_agent_jitter_seconds_count{direction="inbound",kind="audio"}'] >= 2
    assert values["connvo_agent_rtt_seconds_count"] >= 1
    assert values[f"connvo_agent_transport_bytes_total{inbound}"] > 10_000
    # --receive decode: alice's video frames counted as they arrive, and freezes (none unless
    # a busy machine stalls the loop)
    assert values[f"connvo_agent_video_frames_total{inbound}"] > 10
    assert values[f"connvo_agent_video_fps_count{inbound}"] >= 2
    freezes = values[f"connvo_agent_video_freezes_total{inbound}"]
    assert values[f"connvo_agent_video_freeze_seconds_total{inbound}"] >= 0.15 * freezes
    # bounded labels: directions and kinds, never a session
    quality = [key for key in values if key.startswith(QUALITY_METRICS)]
    assert quality and not any(alice.session_id in key for key in quality)
    assert all("direction=" in key or key.startswith("connvo_agent_rtt") for key in quality)

    lines = [line for line in bot.summary_lines() if " quality: " in line]
    assert len(lines) == 1 and lines[0].startswith(f"session {alice.session_id} quality: over ")
    assert "in MOS 4." in lines[0] and "loss 0.0 %" in lines[0]
    assert re.search(r"video \d+ fps, \d+ freezes? \(\d+\.\d/min\)", lines[0]), lines[0]


async def test_recorder_exports_quality_and_prints_it_at_exit(
    api: tuple[Meeting, ConnvoApi], tmp_path: Path
) -> None:
    meeting, connvo = api
    measured = Measured(1)
    metrics = AgentMetrics()
    recorder = Recorder(
        connvo,
        settings(meeting, tmp_path, measured, role="recorder", out=tmp_path / "out"),
        tmp_path / "out",
        metrics,
    )
    async with running(recorder), meeting.peer("alice") as alice:
        await alice.offer(meeting.users["bot"])
        async with asyncio.timeout(TIMEOUT):
            await measured.done.wait()
    values = scrape(metrics.render().decode())
    assert values['connvo_agent_audio_mos_count{direction="inbound"}'] >= 1
    assert values['connvo_agent_video_frames_total{direction="inbound"}'] > 0
    # the recorder sends nothing: no outbound MOS (nothing reported back), no RTT
    assert values.get('connvo_agent_audio_mos_count{direction="outbound"}', 0) == 0
    # its connection signals are counted too, now that it has the metrics
    assert values["connvo_agent_signals_applied_total"] >= 1
    (line,) = [line for line in recorder.summary_lines() if " quality: " in line]
    assert "in MOS 4." in line and "video " in line and "out MOS -" in line
