"""`connvo-agent demo`: the whole thing on one machine, in a few seconds.

Against a dev backend (started by `agent.cli.demo` on a temporary database) it creates a meeting,
runs a bot and a second participant (a guest that calls everyone) through the same HTTP API, lets
media flow both ways, prints what each side received, and exits 0 when media flowed both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.convex import ConvexClient, TokenSource
from agent.media import MediaSources
from agent.peer.ice import restrict_host_addresses
from agent.peer.participant import ParticipantSettings
from agent.roles.bot import Bot
from agent.signaling.api import ConnvoApi

CONNECT_TIMEOUT_S = 30.0


class DemoBackend(Protocol):
    """What the demo needs of a dev backend (`agent.devserver.process.DevServerProcess` is one)."""

    @property
    def url(self) -> str: ...

    def token(self, name: str) -> str:
        """A bearer token for user `name`."""
        ...

    def meeting(self, host: str, participants: Iterable[str] = ()) -> str:
        """An active meeting of `host` and `participants`; its ID."""
        ...


@dataclass
class DemoResult:
    lines: list[str]
    ok: bool


async def run_demo(
    server: DemoBackend, workdir: Path, seconds: float, echo: bool = True
) -> DemoResult:
    """Run the bot and the guest against `server`; their state lives under `workdir`."""

    def say(line: str) -> None:
        if echo:
            print(line, flush=True)

    meeting_id = server.meeting("bot", ["guest"])
    say(f"dev backend  {server.url}  (temporary database)")
    say(f"meeting      {meeting_id}")
    # Everything stays on this machine: ICE host candidates on loopback only.
    restrict_host_addresses(["127.0.0.1"])
    try:
        return await _run_pair(server, meeting_id, workdir, seconds, say)
    finally:
        restrict_host_addresses(None)


async def _run_pair(
    server: DemoBackend,
    meeting_id: str,
    workdir: Path,
    seconds: float,
    say: Callable[[str], None],
) -> DemoResult:
    bots: dict[str, Bot] = {}
    clients: list[ConvexClient] = []
    stop = asyncio.Event()
    for name, call_everyone in (("bot", False), ("guest", True)):
        client = ConvexClient(server.url, TokenSource(value=server.token(name)))
        clients.append(client)
        settings = ParticipantSettings(
            meeting_id=meeting_id,
            state_dir=workdir / f"state-{name}",
            call_everyone=call_everyone,
            discovery_interval=0.5,
        )
        bots[name] = Bot(ConnvoApi(client), settings, MediaSources.open("tone", "testsrc"))
    started = time.monotonic()
    try:
        async with asyncio.TaskGroup() as tasks:
            for name, bot in bots.items():
                tasks.create_task(bot.run(stop), name=f"demo-{name}")
            ok = await _wait_for_media(bots)
            if ok:
                say(f"media flowing both ways; letting it run for {seconds:.0f} s")
                await asyncio.sleep(seconds)
            stop.set()
    finally:
        for bot in bots.values():
            bot.sources.close()
        for client in clients:
            await client.aclose()
    lines = []
    for name, bot in bots.items():
        for media in bot.report.received.values():
            ttc = next(iter(bot.report.time_to_connected.values()), None)
            ttc_text = f"{ttc * 1000:.0f} ms" if ttc is not None else "never"
            size = f" ({media.video_width}x{media.video_height})" if media.video_width else ""
            lines.append(
                f"{name:<6} connected in {ttc_text}; received {media.audio_frames} audio frames, "
                f"{media.video_frames} video frames{size}"
            )
    verdict = "media flowed both ways" if ok else "media did NOT flow both ways"
    lines.append(f"result: {verdict} in {time.monotonic() - started:.1f} s")
    for line in lines:
        say(line)
    return DemoResult(lines=lines, ok=ok)


async def _wait_for_media(bots: dict[str, Bot]) -> bool:
    """True once every participant received both audio and video from the other."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            for bot in bots.values():
                await bot.report.first_track.wait()
                media = next(iter(bot.report.received.values()))
                await media.first_audio.wait()
                await media.first_video.wait()
            return True
    return False
