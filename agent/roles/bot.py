"""The bot: joins, plays its audio/video into the call, counts what it receives, leaves cleanly."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiortc import MediaStreamTrack

from agent.config import AgentSettings
from agent.media import MediaSources, ReceivedMedia
from agent.metrics import AgentMetrics
from agent.peer.participant import Participant, ParticipantSettings
from agent.peer.session import PeerSession
from agent.peer.states import PeerState
from agent.signaling.api import ConnvoApi

log = logging.getLogger(__name__)


@dataclass
class BotReport:
    """What the bot saw, per remote session; printed at exit and used by the demo."""

    received: dict[str, ReceivedMedia] = field(default_factory=dict)  # when decoding
    rtp_packets: dict[str, int] = field(default_factory=dict)  # RTP received, per remote session
    time_to_connected: dict[str, float] = field(default_factory=dict)
    # set when the first remote track arrives
    first_track: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def summary_lines(self) -> list[str]:
        lines = []
        for session_id in {**self.rtp_packets, **self.received}:
            ttc = self.time_to_connected.get(session_id)
            ttc_text = f"{ttc * 1000:.0f} ms" if ttc is not None else "never"
            received = f"{self.rtp_packets.get(session_id, 0)} RTP packets"
            media = self.received.get(session_id)
            if media is not None:
                received += (
                    f", {media.audio_frames} audio frames, {media.video_frames} video frames"
                )
            lines.append(f"session {session_id}: connected after {ttc_text}, received {received}")
        return lines or ["no remote session"]


def participant_settings(settings: AgentSettings) -> ParticipantSettings:
    """The participant's settings of a role run by `connvo-agent run`."""
    return settings.participant_settings()


class Bot:
    """A Participant with local media sources and frame counters for what it receives."""

    def __init__(
        self,
        api: ConnvoApi,
        settings: ParticipantSettings,
        sources: MediaSources,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.sources = sources
        self.metrics = metrics
        self.report = BotReport()
        self.participant = Participant(
            api,
            settings,
            local_tracks=sources.local_tracks,
            on_track=self._on_track,
            on_state=self._on_state,
            observer=metrics,
        )

    def _on_track(
        self, session: PeerSession, track: MediaStreamTrack
    ) -> Coroutine[Any, Any, None] | None:
        self.report.first_track.set()
        if not session.settings.decode_media:
            return None  # counted from the connection's statistics instead
        media = self.report.received.setdefault(session.remote_session_id, ReceivedMedia())
        return media.consume(track)

    def _on_state(self, session: PeerSession) -> None:
        if session.stats.rtp_received or session.state is PeerState.CONNECTED:
            self.report.rtp_packets[session.remote_session_id] = session.stats.rtp_received
        if session.state is PeerState.CONNECTED and session.time_to_connected is not None:
            self.report.time_to_connected.setdefault(
                session.remote_session_id, session.time_to_connected
            )
            if self.metrics is not None:
                self.metrics.time_to_connected_seconds.observe(session.time_to_connected)
        if self.metrics is not None and self.participant.manager is not None:
            counts: dict[str, int] = {}
            for s in self.participant.manager.sessions.values():
                counts[s.state.value] = counts.get(s.state.value, 0) + 1
            self.metrics.set_sessions(counts)

    async def run(self, stop: asyncio.Event) -> None:
        await self.participant.run(stop)

    def summary_lines(self) -> list[str]:
        return self.report.summary_lines()
