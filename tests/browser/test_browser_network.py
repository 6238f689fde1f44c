"""The agent and real Chromium (the dev backend's join page) across an impaired link.

The agent runs on side A (a Participant on an event loop of its own, in a thread inside the side),
Chromium on side B (Playwright's driver, and so the browser, started from inside the side), and
both reach the dev backend through a forwarder in their side (signalling is not impaired; the
media is). The link routes everything by default (`default_route=True`): Chromium picks its
address by the default route. Media must flow both ways: the agent decodes Chromium's audio and
video, Chromium decodes the agent's, over the path between the sides' addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.network import ImpairedLink, Side, TcpForwarder
from agent.peer.ice import restrict_host_addresses
from tests.agent.conftest import Meeting
from tests.browser.conftest import Browser, Page, backend_signals, join_url
from tests.network.helpers import AgentEnd, run_agent
from tests.support.chromium import chromium_flags
from tests.support.waiting import poll_until

WAIT_S = 30.0
AUDIO_FRAMES = 50  # a second of Opus, at each end
VIDEO_FRAMES = 10


class BrowserInSide(Browser):
    """Chromium inside a side of the link: Playwright's driver is started from the side, and
    Chromium from the driver."""

    def __init__(self, side: Side) -> None:
        self._side = side
        super().__init__(chromium_flags(media_permission=True))

    def _start(self) -> None:
        with self._side.netns():  # this thread only, for the driver's start
            super()._start()


@contextlib.asynccontextmanager
async def browser_in(side: Side) -> AsyncIterator[Browser]:
    browser = await asyncio.to_thread(BrowserInSide, side)
    try:
        yield browser
    finally:
        await asyncio.to_thread(browser.close)  # before the link ends what runs in the side


@pytest.mark.parametrize(("profile", "offerer"), [("mobile", "chromium"), ("bad", "agent")])
async def test_chromium_and_the_agent_across_the_link(
    meeting: Meeting, tmp_path: Path, profile: str, offerer: str
) -> None:
    host, port = meeting.server.url.removeprefix("http://").split(":")
    agent = AgentEnd()
    async with (
        ImpairedLink(profile, seed=21, default_route=True) as link,
        TcpForwarder(link.a, (host, int(port))),
        TcpForwarder(link.b, (host, int(port))),
        browser_in(link.b) as chromium,
    ):
        restrict_host_addresses([link.a.address])  # the agent's side (tests/browser pins 127.0.0.1)
        agent_run = asyncio.create_task(
            link.a.run(
                lambda: run_agent(
                    meeting.server.url,
                    meeting.tokens["bot"],
                    meeting.id,
                    offerer == "agent",
                    tmp_path / "state",
                    agent,
                )
            )
        )
        page: Page | None = None
        try:
            call = 0 if offerer == "agent" else 1
            page = await chromium.new_page(join_url(meeting, "alice", loopback=0, call=call))
            await page.wait_for("connvo.state.running && connvo.state.sessionId")
            async with asyncio.timeout(WAIT_S):
                await poll_until(agent.is_connected)
                await poll_until(lambda: agent_heard(agent))
            summary = await page.wait_for(
                f"""(() => {{
                  const peers = Object.values(connvo.summary().peers);
                  const p = peers.find((p) => p.connectionState === 'connected');
                  return p && p.stats.audio.packetsReceived >= {AUDIO_FRAMES}
                    && p.stats.video.framesDecoded >= {VIDEO_FRAMES} && p;
                }})()""",
                within=WAIT_S,
            )
            heard = len(agent.audio_at) + len(agent.video_at)  # before the link's counts
            stats = await link.stats()
        finally:
            if page is not None:
                with contextlib.suppress(Exception):
                    await page.close()
            agent.leave()
            await agent_run

    sent = summary["sent"]
    print(profile, offerer, summary["stats"], sent, stats)
    # Chromium reached the agent at side A's address, from side B's.
    local, remote = summary["stats"]["path"].split(" -> ")
    assert local.startswith(f"{link.b.address}:") and remote.startswith(f"{link.a.address}:")
    assert (sent["offers"] > 0) == (offerer == "chromium"), sent
    assert agent.state == "connected"
    # Both directions crossed the link, and its loss model took its share. What each end had
    # received when the counts were read had crossed the link before: a floor for each lane.
    received = summary["stats"]
    chromium_received = received["audio"]["packetsReceived"] + received["video"]["packetsReceived"]
    assert chromium_received >= AUDIO_FRAMES + VIDEO_FRAMES, received
    assert stats.a_to_b.sent >= chromium_received, stats
    assert heard >= AUDIO_FRAMES + VIDEO_FRAMES
    assert stats.b_to_a.sent >= heard, stats
    assert stats.a_to_b.lost + stats.b_to_a.lost > 0, stats
    # aiortc's Opus has no fmtp: the agent's description asks for no in-band FEC, so Chromium
    # sends none (docs/network.md, "Calls under each profile").
    agent_sdp = [
        s["data"] for s in backend_signals(meeting) if s["from_user_id"] == meeting.users["bot"]
    ]
    assert any("opus/48000" in str(d) for d in agent_sdp)
    assert not any("useinbandfec=1" in str(d) for d in agent_sdp)


async def agent_heard(agent: AgentEnd) -> bool:
    return len(agent.audio_at) >= AUDIO_FRAMES and len(agent.video_at) >= VIDEO_FRAMES
