"""The bot: joins, plays its audio/video into the call, counts what it receives, leaves cleanly."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass, field

from agent.config import AgentSettings
from agent.media import MediaSources, ReceivedMedia
from agent.meeting import ConnectionStateChanged, Event, Meeting, RemoteParticipant, TrackAdded
from agent.metrics import AgentMetrics
from agent.peer.participant import Participant, ParticipantSettings
from agent.peer.session import PeerSession
from agent.peer.session_quality import IntervalQuality, SessionQuality, describe
from agent.roles.meeting_loop import run_meeting
from agent.signaling.api import ConnvoApi

log = logging.getLogger(__name__)


@dataclass
class BotReport:
    """What the bot saw, per remote session; printed at exit and used by the demo."""

    received: dict[str, ReceivedMedia] = field(default_factory=dict)  # when decoding
    rtp_packets: dict[str, int] = field(default_factory=dict)  # RTP received, per remote session
    time_to_connected: dict[str, float] = field(default_factory=dict)
    quality: dict[str, SessionQuality] = field(default_factory=dict)  # as last measured
    # set when the first remote track arrives
    first_track: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def summary_lines(self) -> list[str]:
        lines = []
        for session_id in {**self.rtp_packets, **self.received, **self.quality}:
            ttc = self.time_to_connected.get(session_id)
            ttc_text = f"{ttc * 1000:.0f} ms" if ttc is not None else "never"
            received = f"{self.rtp_packets.get(session_id, 0)} RTP packets"
            media = self.received.get(session_id)
            if media is not None:
                received += (
                    f", {media.audio_frames} audio frames, {media.video_frames} video frames"
                )
            lines.append(f"session {session_id}: connected after {ttc_text}, received {received}")
            quality = self.quality.get(session_id)
            if quality is not None:
                lines.append(f"session {session_id} quality: {describe(quality)}")
        return lines or ["no remote session"]


def participant_settings(settings: AgentSettings) -> ParticipantSettings:
    """The participant's settings of a role run by `connvo-agent run`."""
    return settings.participant_settings()


def watch_quality(
    settings: ParticipantSettings,
    latest: dict[str, SessionQuality],
    metrics: AgentMetrics | None,
) -> ParticipantSettings:
    """`settings` whose sessions, at each quality measurement, also keep their figures in
    `latest` (by remote session id, for the exit summary) and give the interval to `metrics`
    (a copy: the caller's settings are left as they are)."""
    previous = settings.session.quality_observer

    def measured(session: PeerSession, interval: IntervalQuality) -> None:
        if previous is not None:
            previous(session, interval)
        latest[session.remote_session_id] = session.quality
        if metrics is not None:
            metrics.observe_quality(interval.inbound, interval.outbound)

    session = dataclasses.replace(settings.session, quality_observer=measured)
    return dataclasses.replace(settings, session=session)


class Bot:
    """A meeting that sends the configured media sources and counts what it receives.

    Built on the public API: with `receive: count` (no decoding) the figures come from the
    connections' statistics; with `receive: decode` every frame of every track is counted.
    Each connection's quality (docs/quality.md) goes to the metrics as it is measured, and its
    whole-call figures to the exit summary.
    """

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
        self._states: dict[str, str] = {}  # remote session id -> its connection's state
        self.meeting = Meeting(
            api,
            watch_quality(settings, self.report.quality, metrics),
            decode=settings.session.decode_media,
            tracks_for_peer=sources.local_tracks,
            metrics=metrics,
        )

    @property
    def participant(self) -> Participant:
        return self.meeting.participant

    def _on_event(self, event: Event, tasks: asyncio.TaskGroup) -> None:
        if isinstance(event, TrackAdded):
            self.report.first_track.set()
            if self.meeting.decode:
                track = event.track
                media = self.report.received.setdefault(track.session_id, ReceivedMedia())
                frames = (f.frame async for f in track.frames())
                tasks.create_task(media.consume_frames(track.kind, frames))
        elif isinstance(event, ConnectionStateChanged):
            self._state_changed(event.participant, event.state)

    def _state_changed(self, p: RemoteParticipant, state: str) -> None:
        if p.packets_received or state == "connected":
            self.report.rtp_packets[p.session_id] = p.packets_received
        if state == "connected" and p.time_to_connected_s is not None:
            if p.session_id not in self.report.time_to_connected:
                self.report.time_to_connected[p.session_id] = p.time_to_connected_s
                if self.metrics is not None:
                    self.metrics.time_to_connected_seconds.observe(p.time_to_connected_s)
        self._states[p.session_id] = state
        if self.metrics is not None:
            counts: dict[str, int] = {}
            for s in self._states.values():
                counts[s] = counts.get(s, 0) + 1
            self.metrics.set_sessions(counts)

    async def run(self, stop: asyncio.Event) -> None:
        await run_meeting(self.meeting, stop, self._on_event)

    def summary_lines(self) -> list[str]:
        return self.report.summary_lines()
