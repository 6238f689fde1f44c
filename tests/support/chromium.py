"""How Debian's Chromium is launched for the browser tests and the browser benchmark."""

from __future__ import annotations

CHROMIUM = "/usr/lib/chromium/chromium"
# Playwright adds its own --disable-features list; Chromium keeps only the last such flag, so none
# is passed here.
BASE_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--no-pings",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-device-for-media-stream",
    # gather candidates on loopback too (Chromium skips it otherwise); pages signal only those
    "--allow-loopback-in-peer-connection",
]
FAKE_UI = "--use-fake-ui-for-media-stream"


def chromium_flags(*, media_permission: bool = True) -> list[str]:
    """Launch flags; without `media_permission` the camera/microphone prompt is refused, and
    Chromium hides its host addresses behind mDNS `.local` names."""
    return BASE_FLAGS + ([FAKE_UI] if media_permission else [])
