"""Fixtures for agent tests: a meeting on a real dev backend, agents running in the test loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from agent.convex import ConvexClient, RetryPolicy, TokenSource
from agent.peer.ice import restrict_host_addresses
from agent.peer.participant import Participant, ParticipantSettings
from agent.peer.session import PeerSession, SessionSettings
from agent.signaling.api import ConnvoApi
from tests.support.peers import RemotePeer


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    """Every ICE host candidate in these tests is 127.0.0.1: no packet leaves loopback."""
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses(None)


@dataclass
class Meeting:
    server: Any  # DevServerProcess
    id: str
    users: dict[str, str]  # name -> user id
    tokens: dict[str, str] = field(repr=False)  # name -> token (kept out of failure output)

    def peer(self, name: str, **kwargs: Any) -> RemotePeer:
        return RemotePeer(self.server.url, self.tokens[name], self.id, self.users[name], **kwargs)


PEOPLE = ["bot", "alice", "bob", "carol"]


def make_meeting(server: Any, people: list[str] = PEOPLE) -> Meeting:
    meeting_id = server.meeting(people[0], people[1:])
    return Meeting(
        server=server,
        id=meeting_id,
        users={p: server.user_id(p) for p in people},
        tokens={p: server.token(p) for p in people},
    )


@pytest.fixture
def meeting(devserver: Any) -> Meeting:
    return make_meeting(devserver)


@dataclass
class RunningAgent:
    participant: Participant
    task: asyncio.Task[None]
    stop: asyncio.Event
    received: dict[str, dict[str, int]] = field(default_factory=dict)  # session -> kind -> frames
    first_frames: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)

    @property
    def manager(self) -> Any:
        assert self.participant.manager is not None
        return self.participant.manager

    def session(self, remote_session_id: str) -> PeerSession:
        return self.manager.sessions[remote_session_id]  # type: ignore[no-any-return]

    def frames_event(self, remote_session_id: str, kind: str) -> asyncio.Event:
        return self.first_frames.setdefault((remote_session_id, kind), asyncio.Event())

    async def shutdown(self) -> None:
        self.stop.set()
        await self.task


AgentFactory = Callable[..., "contextlib.AbstractAsyncContextManager[RunningAgent]"]


@pytest.fixture
async def agent_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    running: list[RunningAgent] = []
    clients: list[ConvexClient] = []

    async def start(meeting: Meeting, name: str = "bot", **overrides: Any) -> RunningAgent:
        client = ConvexClient(
            meeting.server.url,
            TokenSource(value=meeting.tokens[name]),
            retry=RetryPolicy(max_attempts=overrides.pop("max_attempts", 6)),
        )
        clients.append(client)
        session = SessionSettings(
            session_timeout=overrides.pop("session_timeout", 30.0),
            ice_restart_after=overrides.pop("ice_restart_after", 5.0),
            media_timeout=overrides.pop("media_timeout", 5.0),
        )
        settings = ParticipantSettings(
            meeting_id=meeting.id,
            state_dir=overrides.pop("state_dir", tmp_path / f"state-{name}"),
            session=session,
            **overrides,
        )
        agent_ref: list[RunningAgent] = []

        def tracks() -> list[MediaStreamTrack]:
            return [AudioStreamTrack(), VideoStreamTrack()]

        async def count(session: PeerSession, track: MediaStreamTrack) -> None:
            agent = agent_ref[0]
            counts = agent.received.setdefault(session.remote_session_id, {})
            event = agent.frames_event(session.remote_session_id, track.kind)
            with contextlib.suppress(Exception):
                while True:
                    await track.recv()
                    counts[track.kind] = counts.get(track.kind, 0) + 1
                    event.set()

        participant = Participant(ConnvoApi(client), settings, local_tracks=tracks, on_track=count)
        stop = asyncio.Event()
        task = asyncio.create_task(participant.run(stop))
        agent = RunningAgent(participant, task, stop)
        agent_ref.append(agent)
        running.append(agent)
        joined = asyncio.create_task(participant.joined.wait())
        await asyncio.wait({task, joined}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raise the start-up error
        assert participant.joined.is_set(), "agent did not join within 10 s"
        return agent

    yield start
    for agent in running:
        agent.stop.set()
    for agent in running:
        # a test may have cancelled the task itself
        with contextlib.suppress(Exception, asyncio.CancelledError):
            async with asyncio.timeout(10):
                await agent.task
    for client in clients:
        await client.aclose()
