"""The agent's codec matching (the patch `remote_descriptions`, agent/patches/descriptions.py) on
Chromium's SDP: the same codecs as aiortc's own matching finds."""

from __future__ import annotations

from tests.agent.test_remote_description import assert_same_codecs
from tests.browser.conftest import Browser, Page

CHROMIUM_OFFER = """async () => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('audio');
  pc.addTransceiver('video');
  const offer = await pc.createOffer();
  pc.close();
  return offer.sdp;
}"""


async def test_codecs_as_aiortc_matches_them_on_chromium_sdp(
    chromium: Browser, pages: list[Page]
) -> None:
    page = await chromium.new_page("about:blank")
    pages.append(page)
    offer = await page.evaluate(CHROMIUM_OFFER)
    assert "H264" in offer and "VP8" in offer and "rtx" in offer and "opus" in offer
    assert_same_codecs(offer)
