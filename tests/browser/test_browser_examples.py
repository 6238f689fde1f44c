"""An examples/ bot met by a person: Chromium's join page talks to the echo bot and hears itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.agent.conftest import Meeting
from tests.browser.conftest import Browser, Page, open_page
from tests.examples.test_examples import bot_listed, end_meeting, example, options
from tests.support.peers import RemotePeer

TIMEOUT = 30
# totalAudioEnergy of received audio (sum over samples of level^2 x duration): the agent's silence
# adds nothing; the page's synthetic tone, echoed for a few seconds, adds far more than this.
HEARD_ENERGY = 0.01


async def test_a_person_hears_themselves_through_the_echo_bot(
    chromium: Browser, pages: list[Page], meeting: Meeting, tmp_path: Path
) -> None:
    bot = asyncio.create_task(example("echo_bot").main(**options(meeting, tmp_path)))
    # carol only asks the backend who is there (no session of hers: the page would call it)
    watcher = RemotePeer(
        meeting.server.url, meeting.tokens["carol"], meeting.id, meeting.users["carol"]
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            await bot_listed(meeting, watcher)
    finally:
        await watcher.stop(close_session=False)
    page, _ = await open_page(chromium, pages, meeting, "alice", synthetic=1, video=0)
    energy = await page.wait_for(
        "Object.values(connvo.summary().peers)"
        f".some(p => (p.stats.audio.totalAudioEnergy || 0) > {HEARD_ENERGY})"
        " && Object.values(connvo.summary().peers)[0].stats.audio.totalAudioEnergy"
    )
    assert energy > HEARD_ENERGY
    await end_meeting(meeting, bot)
