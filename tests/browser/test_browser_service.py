"""A person meets a bot the service sent: `connvo-agent serve` sends a bot into the meeting,
Chromium's join page joins, hears the bot's tone, and leaves; the bot, left alone, leaves too."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.agent.conftest import Meeting
from tests.browser.conftest import Browser, Page, open_page
from tests.service.conftest import bot_request, service_factory
from tests.support.service import Client, ServiceProcess

__all__ = ["service_factory"]

# totalAudioEnergy the page must receive: the bot's tone for a second is far more; silence is 0
HEARD_ENERGY = 0.01


@pytest.fixture
async def service_client(service_factory: object) -> AsyncIterator[Client]:
    service: ServiceProcess = service_factory("--workers", "1")  # type: ignore[operator]
    client = Client(service.url)
    yield client
    await client.aclose()


async def test_a_person_meets_a_bot_the_service_sent(
    chromium: Browser, pages: list[Page], meeting: Meeting, service_client: Client
) -> None:
    body = bot_request(
        meeting,
        media={"audio": "tone"},
        auto_leave={"alone_s": 1, "nobody_joined_s": None, "no_media_s": None},
    )
    bot_id = (await service_client.create(body)).json()["id"]
    await service_client.wait_state(bot_id, "in_meeting")
    page, _ = await open_page(chromium, pages, meeting, "alice", synthetic=1, video=0)
    await page.wait_for(
        "Object.values(connvo.summary().peers)"
        f".some(p => (p.stats.audio.totalAudioEnergy || 0) > {HEARD_ENERGY})"
    )
    bot = await service_client.wait_for(
        bot_id, lambda b: b["media_connected"] and any(p["present"] for p in b["participants"])
    )
    assert bot["participants"][0]["user_id"] == meeting.users["alice"]
    assert bot["participants"][0]["display_name"] == "alice"
    await page.close()
    pages.remove(page)
    bot = await service_client.wait_state(bot_id, "ended", "failed")
    assert (bot["state"], bot["reason"]) == ("ended", "alone"), bot["history"]
