"""`connvo-agent run`: build the configured role, run it until SIGINT/SIGTERM, clean up.

Every role is a `Meeting` of the public Python API (agent.meeting) plus what it does with the
meeting's events and media: the bot plays and counts, the recorder writes files, the transcriber
posts what people say. They share this entry point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Protocol

from agent.config import AgentSettings, ConfigError
from agent.convex import ConvexClient, RetryPolicy, TokenError, TokenSource
from agent.logsetup import register_secret, setup_logging
from agent.media import MediaSources, MediaSpecError
from agent.meeting import MeetingEndedError
from agent.metrics import AgentMetrics
from agent.patches import install as install_patches
from agent.peer.ice import restrict_host_addresses
from agent.peer.participant import MeetingGone
from agent.roles.bot import Bot, participant_settings
from agent.signaling.api import ConnvoApi

log = logging.getLogger(__name__)

EXIT_MEETING_GONE = 3


class Role(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...

    def summary_lines(self) -> list[str]: ...


def token_source(settings: AgentSettings) -> TokenSource:
    try:
        if settings.token_file:
            return TokenSource(path=settings.token_file)
        return TokenSource(value=settings.read_token().get_secret_value())
    except TokenError as exc:
        raise ConfigError(f"config: token: {exc}") from None


async def build_role(
    settings: AgentSettings,
    token: TokenSource,
    metrics: AgentMetrics,
    resources: contextlib.AsyncExitStack,
) -> Role:
    """The role, with everything it holds registered in `resources` for cleanup."""

    async def client(attempts: int) -> ConvexClient:
        convex = ConvexClient(
            settings.url,
            token,
            timeout=settings.request_timeout,
            verify=str(settings.ca_bundle) if settings.ca_bundle else True,
            retry=RetryPolicy(max_attempts=attempts),
            observer=metrics.request,
            max_in_flight=settings.max_requests_in_flight,
        )
        resources.push_async_callback(convex.aclose)
        return convex

    api = ConnvoApi(await client(max(1, settings.max_retries + 1)))
    participant = participant_settings(settings)
    if settings.role == "recorder":
        from agent.roles.recorder import Recorder

        if settings.out is None:
            raise ConfigError(
                "config: out: required by the recorder role (--out, CONNVO_OUT or the config file)"
            )
        return Recorder(api, participant, settings.out, metrics)
    if settings.role == "transcriber":
        from agent.media.speech import SpeechEngineError, create_engine
        from agent.roles.transcriber import Transcriber, TranscriberSettings

        try:
            # Loading a model takes seconds (vosk's Korean model: 2.5 s): off the event loop, so
            # that signal handlers (SIGINT during start-up) still run.
            engine = await asyncio.to_thread(
                create_engine, settings.stt_engine, settings.stt_model, settings.language
            )
        except SpeechEngineError as exc:
            raise ConfigError(f"config: {exc}") from None
        # The poster decides which failures are safe to retry: no automatic retries there.
        ingest = ConnvoApi(await client(1))
        return Transcriber(
            api,
            participant,
            engine,
            TranscriberSettings(
                language=settings.language,
                vad_aggressiveness=settings.vad_aggressiveness,
                interim=settings.transcript_interim,
                transcript_dir=settings.out,
            ),
            ingest_api=ingest,
        )
    try:
        sources = MediaSources.open(settings.audio, settings.video)
    except MediaSpecError as exc:
        raise ConfigError(f"config: {exc}") from None
    resources.callback(sources.close)
    return Bot(api, participant, sources, metrics)


async def run_role(settings: AgentSettings) -> int:
    """The process's main coroutine. Returns the exit code; ConfigError for bad settings."""
    setup_logging(settings.log_level, settings.log_format)
    install_patches()  # the agent's changes inside aiortc and aioice, once per process
    token = token_source(settings)
    register_secret(token.current)
    if settings.ice_host_addresses:
        restrict_host_addresses(settings.ice_host_addresses)
    metrics = AgentMetrics()
    async with contextlib.AsyncExitStack() as resources:
        role = await build_role(settings, token, metrics, resources)
        if settings.metrics_port:
            resources.callback(metrics.start_http_server(settings.metrics_port).stop)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if settings.duration is not None:
            loop.call_later(settings.duration, stop.set)
        started = time.monotonic()
        code = 0
        try:
            await role.run(stop)
        except (MeetingGone, MeetingEndedError) as exc:
            log.error("the meeting is no longer available: %s", exc)
            code = EXIT_MEETING_GONE
    for line in role.summary_lines():
        log.info("%s", line)
    log.info("ran for %.1f s", time.monotonic() - started)
    return code
