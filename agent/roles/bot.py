"""The bot: joins, plays its audio/video into the call, counts what it receives, leaves cleanly.

`run_role` is also the entry point of the other roles: they differ only in what they do with
remote tracks (count, record, transcribe).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiortc import MediaStreamTrack

from agent.config import AgentSettings, ConfigError
from agent.convex import ConvexClient, RetryPolicy, TokenError, TokenSource
from agent.logsetup import register_secret, setup_logging
from agent.media import MediaSources, MediaSpecError, ReceivedMedia
from agent.metrics import AgentMetrics
from agent.peer.ice import restrict_host_addresses
from agent.peer.participant import MeetingGone, Participant, ParticipantSettings
from agent.peer.session import PeerSession, PeerState, SessionSettings
from agent.signaling.api import ConnvoApi

log = logging.getLogger(__name__)


@dataclass
class BotReport:
    """What the bot saw, per remote session; printed at exit and used by the demo."""

    received: dict[str, ReceivedMedia] = field(default_factory=dict)
    time_to_connected: dict[str, float] = field(default_factory=dict)
    # set when the first remote track arrives
    first_track: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def summary_lines(self) -> list[str]:
        lines = []
        for session_id, media in self.received.items():
            ttc = self.time_to_connected.get(session_id)
            ttc_text = f"{ttc * 1000:.0f} ms" if ttc is not None else "never"
            lines.append(
                f"session {session_id}: connected after {ttc_text}, received "
                f"{media.audio_frames} audio frames, {media.video_frames} video frames"
            )
        return lines or ["no remote session"]


def participant_settings(settings: AgentSettings) -> ParticipantSettings:
    return ParticipantSettings(
        meeting_id=settings.meeting,
        state_dir=settings.state_dir,
        session_id=settings.session_id,
        call_everyone=settings.call_everyone,
        poll_fast_interval=settings.poll_fast_interval,
        poll_idle_interval=settings.poll_idle_interval,
        poll_recent_window=settings.poll_recent_window,
        discovery_interval=settings.discovery_interval,
        session=SessionSettings(
            session_timeout=settings.session_timeout,
            ice_restart_after=settings.ice_restart_after,
            media_timeout=settings.media_timeout,
        ),
    )


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

    def _on_track(self, session: PeerSession, track: MediaStreamTrack) -> Coroutine[Any, Any, None]:
        media = self.report.received.setdefault(session.remote_session_id, ReceivedMedia())
        self.report.first_track.set()
        return media.consume(track)

    def _on_state(self, session: PeerSession) -> None:
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


async def run_role(settings: AgentSettings) -> int:
    """`connvo-agent run`: the process's main coroutine. Returns the exit code."""
    setup_logging(settings.log_level, settings.log_format)
    if settings.role == "recorder" and settings.out is None:
        raise ConfigError(
            "config: out: required by the recorder role (--out, CONNVO_OUT or the config file)"
        )
    try:
        token = (
            TokenSource(path=settings.token_file)
            if settings.token_file
            else TokenSource(value=settings.read_token().get_secret_value())
        )
    except TokenError as exc:
        raise ConfigError(f"config: token: {exc}") from None
    register_secret(token.current)
    if settings.ice_host_addresses:
        restrict_host_addresses(settings.ice_host_addresses)
    sources: MediaSources | None = None
    engine: Any = None
    if settings.role == "bot":
        try:
            sources = MediaSources.open(settings.audio, settings.video)
        except MediaSpecError as exc:
            raise ConfigError(f"config: {exc}") from None
    elif settings.role == "transcriber":
        from agent.media.speech import SpeechEngineError, create_engine

        try:
            engine = create_engine(settings.stt_engine, settings.stt_model, settings.language)
        except SpeechEngineError as exc:
            raise ConfigError(f"config: {exc}") from None

    metrics = AgentMetrics()
    server = metrics.start_http_server(settings.metrics_port) if settings.metrics_port else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if settings.duration is not None:
        loop.call_later(settings.duration, stop.set)

    def client_with(attempts: int) -> ConvexClient:
        return ConvexClient(
            settings.url,
            token,
            timeout=settings.request_timeout,
            verify=str(settings.ca_bundle) if settings.ca_bundle else True,
            retry=RetryPolicy(max_attempts=attempts),
            observer=metrics.request,
        )

    client = client_with(max(1, settings.max_retries + 1))
    clients = [client]
    agent: Any
    if sources is not None:
        agent = Bot(ConnvoApi(client), participant_settings(settings), sources, metrics)
        summary = agent.report.summary_lines
    elif settings.role == "recorder":
        from agent.roles.recorder import Recorder

        assert settings.out is not None
        agent = Recorder(ConnvoApi(client), participant_settings(settings), settings.out)
        summary = agent.summary_lines
    else:
        from agent.roles.transcriber import Transcriber, TranscriberSettings

        # The poster decides which failures are safe to retry: no automatic retries there.
        clients.append(client_with(1))
        agent = Transcriber(
            ConnvoApi(client),
            participant_settings(settings),
            engine,
            TranscriberSettings(
                language=settings.language,
                vad_aggressiveness=settings.vad_aggressiveness,
                interim=settings.transcript_interim,
                transcript_dir=settings.out,
            ),
            ingest_api=ConnvoApi(clients[-1]),
        )
        summary = agent.summary_lines
    started = time.monotonic()
    code = 0
    try:
        await agent.run(stop)
    except MeetingGone as exc:
        log.error("the meeting is no longer available: %s", exc)
        code = 3
    finally:
        if sources is not None:
            sources.close()
        for c in clients:
            await c.aclose()
        if server is not None:
            server.stop()
    for line in summary():
        log.info("%s", line)
    log.info("ran for %.1f s", time.monotonic() - started)
    return code
