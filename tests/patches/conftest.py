"""Fixtures for the patch tests: patches taken out and put back, and a real call with the agent.

The call exercises every patch at once: the agent (a Participant in the test's loop) plays the
pre-encoded tone (packet_pump) and the video of a file that also has audio (one_stream_player),
counts what it receives without decoding (counting_receivers, counting_path), has one STUN server
that never answers (ice_gather_timeout), and is called by an aiortc peer through the dev backend
(remote_descriptions, shared_certificate, ice_host_addresses).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from av import AudioFrame, VideoFrame

from agent.convex import ConvexClient, RetryPolicy, TokenSource
from agent.media import MediaSources
from agent.patches import install, installed, uninstall
from agent.peer.ice import restrict_host_addresses
from agent.peer.participant import Participant, ParticipantSettings
from agent.peer.session import PeerSession, PeerState, SessionSettings
from agent.signaling.api import ConnvoApi
from tests.support.peers import RemotePeer

TIMEOUT_S = 30.0
GATHER_CAP_S = 0.5  # the agent's cap on STUN gathering in these calls (aioice waits 5 s)


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    """ICE host candidates on 127.0.0.1 (while ice_host_addresses is installed)."""
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses(None)


@pytest.fixture
def patches_restored() -> Iterator[None]:
    """Whatever a test installs or takes out, the patches are as before afterwards."""
    before = installed()
    yield
    uninstall()
    install(only=before)


@pytest.fixture
def install_all_but(patches_restored: None) -> Callable[..., frozenset[str]]:
    """`install_all_but("name", ...)`: every patch in place except those (as from a fresh start)."""

    def only_without(*names: str) -> frozenset[str]:
        uninstall()
        return install(skip=set(names))

    return only_without


@pytest.fixture
def silent_stun() -> Iterator[str]:
    """A STUN server URL whose requests go unanswered (a bound UDP socket nobody reads)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        yield f"stun:127.0.0.1:{silent.getsockname()[1]}"


def write_audio_video(path: Path, seconds: float = 2.0, fps: int = 15) -> Path:
    """A file with a video stream and an audio stream (the agent plays only its video)."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=48_000)
        audio.layout = "mono"
        samples = int(48_000 * seconds)
        pcm = (np.sin(2 * np.pi * 440 * np.arange(samples) / 48_000) * 8000).astype(np.int16)
        sound = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        sound.sample_rate = 48_000
        sound.pts = 0
        sound.time_base = fractions.Fraction(1, 48_000)
        for packet in audio.encode(sound):
            container.mux(packet)
        for i in range(int(seconds * fps)):
            rgb = np.full((48, 64, 3), (i * 20) % 256, dtype=np.uint8)
            for packet in video.encode(VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for stream in (audio, video):
            for packet in stream.encode():
                container.mux(packet)
    return path


@dataclass
class Call:
    """The agent, its media, and the aiortc peer that called it."""

    agent: Participant
    sources: MediaSources
    peer: RemotePeer
    answered_after: float  # seconds from the peer's offer to the agent's answer reaching it

    @property
    def session(self) -> PeerSession:
        assert self.agent.manager is not None
        return self.agent.manager.sessions[self.peer.session_id]

    @property
    def pc(self) -> Any:
        assert self.session.pc is not None
        return self.session.pc


async def inbound_rtp(pc: Any) -> dict[str, int]:
    """RTP packets received per kind (getStats)."""
    stats = await pc.getStats()
    return {s.kind: s.packetsReceived for s in stats.values() if s.type == "inbound-rtp"}


async def media_both_ways(call: Call, packets: int = 25) -> None:
    """The peer decoded audio and video from the agent; the agent counted both from the peer."""
    async with asyncio.timeout(TIMEOUT_S):
        await call.peer.connected.wait()
        await call.session.wait_state(PeerState.CONNECTED)
        await call.peer.received.audio.wait()
        await call.peer.received.video.wait()
        while True:
            counts = await inbound_rtp(call.pc)
            if counts.get("audio", 0) >= packets and counts.get("video", 0) >= 1:
                return
            await asyncio.sleep(0.1)


CallFactory = Callable[..., "contextlib.AbstractAsyncContextManager[Call]"]


@pytest.fixture
def agent_call(devserver_factory: Any, tmp_path: Path, silent_stun: str) -> CallFactory:
    """`async with agent_call() as call:` the agent joins, an aiortc peer offers, media flows."""
    media_file = write_audio_video(tmp_path / "audio-video.mkv")

    @contextlib.asynccontextmanager
    async def call(*, gather_timeout: float = GATHER_CAP_S) -> AsyncIterator[Call]:
        server = devserver_factory(ice_servers=[silent_stun])
        meeting_id = server.meeting("bot", ["alice"])
        client = ConvexClient(
            server.url, TokenSource(value=server.token("bot")), retry=RetryPolicy(max_attempts=6)
        )
        sources = MediaSources.open("tone", str(media_file))
        settings = ParticipantSettings(
            meeting_id=meeting_id,
            state_dir=tmp_path / "state-bot",
            session=SessionSettings(gather_timeout=gather_timeout, decode_media=False),
        )
        agent = Participant(ConnvoApi(client), settings, local_tracks=sources.local_tracks)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            async with asyncio.timeout(TIMEOUT_S):
                joined = asyncio.create_task(agent.joined.wait())
                await asyncio.wait({task, joined}, return_when=asyncio.FIRST_COMPLETED)
                if task.done():
                    task.result()  # the start-up error
            peer = RemotePeer(
                server.url, server.token("alice"), meeting_id, server.user_id("alice")
            )
            async with peer:
                started = time.monotonic()
                await peer.offer(server.user_id("bot"))
                async with asyncio.timeout(TIMEOUT_S):
                    await peer.wait_signal(lambda s: s["data"].get("type") == "answer")
                yield Call(agent, sources, peer, time.monotonic() - started)
        finally:
            stop.set()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(10):
                    await task
            sources.close()
            await client.aclose()

    return call
