"""One bot as a worker runs it: the role of `connvo-agent run` in a meeting, its auto-leave rules,
and what happens to it reported as plain JSON events.

`run_bot(job, emit, stop)` builds the role from the request, joins, and calls `emit` with each
event (see `agent.service.protocol`): its states (`joining`, `in_meeting`, `leaving`, `ended` or
`failed` with a reason), the first media connection, participants, connections and their quality,
transcript chunks as the backend stores them, and the recording's files when they are final. It
returns when the bot is out of the meeting; it never raises but for cancellation.

Auto-leave (`AutoLeave`): the roster (`listMeetingParticipants`) is read every quarter of the
shortest roster rule (between 0.5 and 15 s). A user of the roster counts as present while their
presence is "joined", unless their connection with the bot closed and has not come back: nothing
on the backend expires, so a browser that crashed stays "joined" for good, and only the closed
connection tells. "Alone" applies once someone else has been present; "nobody joined" until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import AgentSettings, ConfigError, load_settings
from agent.convex import AuthError, ConvexError, FunctionError
from agent.logsetup import register_secret
from agent.meeting import (
    ConnectionQuality,
    ConnectionStateChanged,
    Event,
    JoinRefused,
    MeetingEndedError,
    ParticipantJoined,
    ParticipantLeft,
)
from agent.metrics import AgentMetrics
from agent.patches import install as install_patches
from agent.peer.ice import restrict_host_addresses
from agent.peer.participant import MeetingGone
from agent.roles.recorder import Recorder
from agent.roles.run import build_role, token_source
from agent.roles.transcriber import Chunk, Transcriber
from agent.service.models import AutoLeave, BotState, FailureReason, LeaveReason

log = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]

ROSTER_INTERVAL_S = (0.5, 15.0)  # bounds of the roster's reading interval
QUALITY_INTERVAL_S = (0.5, 5.0)  # bounds of the connections' figures interval


@dataclass
class BotJob:
    """What a worker is given to run: the request as the API took it (token included)."""

    bot_id: str
    attempt: int
    request: dict[str, Any]
    directory: Path  # the bot's own: agent state, recording, transcript

    def settings(self) -> AgentSettings:
        """The settings of `connvo-agent run` for this bot; ConfigError (one line) if bad."""
        r = self.request
        given: dict[str, object] = {
            "url": r["url"],
            "meeting": r["meeting_id"],
            "role": r.get("role", "bot"),
            "token": r.get("token"),
            "token_file": r.get("token_file"),
            "display_name": r.get("display_name"),
            "state_dir": self.directory / "state",
            **{k: v for k, v in (r.get("media") or {}).items() if v is not None},
            **(r.get("settings") or {}),
        }
        if given["role"] == "recorder":
            given["out"] = self.directory / "recording"
        elif given["role"] == "transcriber":
            given["out"] = self.directory / "transcript"
        return load_settings(None, given)


class _Left(Exception):
    """The bot is out of the meeting for `reason` (a LeaveReason): a normal end."""

    def __init__(self, reason: LeaveReason) -> None:
        self.reason = reason


async def run_bot(job: BotJob, emit: Emit, stop: asyncio.Event, stop_reason: list[str]) -> None:
    """Run the bot until it leaves. `stop` set from outside makes it leave with `stop_reason[0]`
    (a LeaveReason value, or "handoff": leave without a final state, it runs again elsewhere)."""
    await _BotRun(job, emit).run(stop, stop_reason)


class _BotRun:
    def __init__(self, job: BotJob, emit: Emit) -> None:
        self.job = job
        self._emit = emit
        self.rules = AutoLeave.model_validate(job.request.get("auto_leave") or {})
        self.leave_reason: LeaveReason | None = None
        self.in_meeting = False
        self._media_connected = False
        self._present: set[str] = set()  # users with a live connection with the bot
        self._left: set[str] = set()  # users whose connection with the bot closed
        self._packets: dict[str, int] = {}  # remote session -> packets received
        self._last_media = time.monotonic()
        self._reports: asyncio.Queue[Event] = asyncio.Queue()

    def emit(self, kind: str, **data: Any) -> None:
        self._emit({"kind": kind, **data})

    def state(self, state: BotState, reason: str | None = None, detail: str | None = None) -> None:
        self.emit("state", state=state.value, reason=reason, detail=detail)

    async def run(self, stop: asyncio.Event, stop_reason: list[str]) -> None:
        self.state(BotState.JOINING)
        try:
            final = await self._run(stop, stop_reason)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever broke, the bot ends with a state saying why
            state, reason, detail = _failure(_cause(exc))
            log.warning("bot %s failed: %s: %s", self.job.bot_id, reason, detail)
            self.emit("error", message=detail)
            if self.in_meeting:
                self.state(BotState.LEAVING, reason)
            self.state(state, reason, detail)
            return
        if final is not None:
            self.state(BotState.ENDED, final)

    async def _run(self, stop: asyncio.Event, stop_reason: list[str]) -> str | None:
        settings = self.job.settings()
        # what `connvo-agent run` does at its start, once per worker process (idempotent): the
        # agent's changes inside aiortc and aioice, and the host addresses ICE gathers on. Those
        # are the process's: requests cannot set them, every bot reads the worker's environment
        # (CONNVO_ICE_HOST_ADDRESSES), so they are the same for all
        install_patches()
        if settings.ice_host_addresses:
            restrict_host_addresses(settings.ice_host_addresses)
        metrics = AgentMetrics()
        leave = asyncio.Event()
        async with contextlib.AsyncExitStack() as resources:
            token = token_source(settings)
            register_secret(token.current)  # kept out of every log line of this worker
            role = await build_role(settings, token, metrics, resources)
            meeting = role.meeting  # type: ignore[attr-defined]
            meeting.quality_interval = self._quality_interval()
            meeting.add_listener(self._on_event)
            if isinstance(role, Transcriber):
                role.on_posted = self._on_posted
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._watch(meeting, leave))
                relay = tasks.create_task(self._relay(stop, stop_reason, leave))
                reporter = tasks.create_task(self._report(meeting))
                try:
                    await role.run(leave)
                finally:
                    relay.cancel()
                    reporter.cancel()
            if isinstance(role, Recorder):
                self._recording_ready(role)
        if stop.is_set():
            if stop_reason and stop_reason[0] == "handoff":
                return None
            return stop_reason[0] if stop_reason else LeaveReason.REQUESTED.value
        if self.leave_reason is not None:
            return self.leave_reason.value
        if not self.in_meeting:
            raise MeetingEndedError("left before joining")
        self.state(BotState.LEAVING, LeaveReason.MEETING_ENDED.value)
        return LeaveReason.MEETING_ENDED.value

    def _quality_interval(self) -> float:
        wanted = (self.rules.no_media_s or 20.0) / 4
        return min(QUALITY_INTERVAL_S[1], max(QUALITY_INTERVAL_S[0], wanted))

    async def _relay(
        self, stop: asyncio.Event, stop_reason: list[str], leave: asyncio.Event
    ) -> None:
        """A stop from outside: leave, saying why (a hand-off is not the bot's end)."""
        await stop.wait()
        reason = stop_reason[0] if stop_reason else LeaveReason.REQUESTED.value
        if self.in_meeting and not leave.is_set() and reason != "handoff":
            self.state(BotState.LEAVING, reason)
        leave.set()

    # --- auto-leave ----------------------------------------------------------------------------

    async def _watch(self, meeting: Any, leave: asyncio.Event) -> None:
        """Once joined: report in_meeting, then apply the auto-leave rules until one fires."""
        joined = asyncio.create_task(meeting.participant.joined.wait())
        left = asyncio.create_task(leave.wait())
        try:
            await asyncio.wait({joined, left}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            joined.cancel()
            left.cancel()
        if leave.is_set():
            return
        self.in_meeting = True
        self.state(BotState.IN_MEETING)
        reason = await self._auto_leave(meeting, leave)
        if reason is not None and not leave.is_set():
            log.info("bot %s leaves: %s", self.job.bot_id, reason.value)
            self.leave_reason = reason
            self.state(BotState.LEAVING, reason.value)
            leave.set()

    async def _auto_leave(self, meeting: Any, leave: asyncio.Event) -> LeaveReason | None:
        rules = self.rules
        started = time.monotonic()
        self._last_media = started
        roster_rules = [s for s in (rules.alone_s, rules.nobody_joined_s) if s is not None]
        timed = [*roster_rules, rules.no_media_s, rules.max_duration_s]
        shortest = min((s for s in timed if s is not None), default=None)
        if shortest is None:
            return None
        tick = min(ROSTER_INTERVAL_S[1], max(0.25, shortest / 4))
        roster_every = (
            min(ROSTER_INTERVAL_S[1], max(ROSTER_INTERVAL_S[0], min(roster_rules) / 4))
            if roster_rules
            else None
        )
        next_roster = started
        company_ever = False
        alone_since: float | None = None
        me = meeting.user_id
        while not leave.is_set():
            if roster_every is not None and time.monotonic() >= next_roster:
                others = await self._others_present(meeting, me)
                # as of the answer: "alone" counts from a roster that said so, never before
                next_roster = time.monotonic() + roster_every
                if others is not None:
                    if others:
                        company_ever, alone_since = True, None
                    elif company_ever and alone_since is None:
                        alone_since = time.monotonic()
            now = time.monotonic()
            elapsed = now - started
            if rules.max_duration_s is not None and elapsed >= rules.max_duration_s:
                return LeaveReason.MAX_DURATION
            if (
                rules.alone_s is not None
                and alone_since is not None
                and now - alone_since >= rules.alone_s
            ):
                return LeaveReason.ALONE
            if (
                rules.nobody_joined_s is not None
                and not company_ever
                and elapsed >= rules.nobody_joined_s
            ):
                return LeaveReason.NOBODY_JOINED
            if (
                rules.no_media_s is not None
                and elapsed >= rules.no_media_after_s
                and now - self._last_media >= rules.no_media_s
            ):
                return LeaveReason.NO_MEDIA
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await leave.wait()
        return None

    async def _others_present(self, meeting: Any, me: str) -> set[str] | None:
        try:
            roster = await meeting.api.list_participants(meeting.meeting_id)
        except ConvexError as exc:  # a removal is the participant's to notice; retry the rest
            log.info("bot %s: could not read the roster: %s", self.job.bot_id, exc)
            return None
        joined = {p.userId for p in roster if p.presence == "joined" and p.userId != me}
        return (joined - self._left) | (joined & self._present)

    # --- what the meeting tells ----------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """Every event as it happens: the auto-leave rules' bookkeeping now, the report in
        order by `_report` (which waits for a newcomer's display name, as `events()` does)."""
        match event:
            case ParticipantJoined(participant=p):
                self._present.add(p.user_id)
                self._left.discard(p.user_id)
            case ParticipantLeft(participant=p):
                self._present.discard(p.user_id)
                self._left.add(p.user_id)
            case ConnectionQuality(participant=p):
                if p.packets_received > self._packets.get(p.session_id, 0):
                    self._last_media = time.monotonic()
                self._packets[p.session_id] = p.packets_received
        self._reports.put_nowait(event)

    async def _report(self, meeting: Any) -> None:
        """Report the meeting's events in order, until cancelled (then what is left, at once)."""
        try:
            while True:
                event = await self._reports.get()
                if isinstance(event, ParticipantJoined) and event.participant.display_name is None:
                    await meeting.wait_for_name(event.participant)
                self._report_event(event)
        finally:
            while not self._reports.empty():
                self._report_event(self._reports.get_nowait())

    def _report_event(self, event: Event) -> None:
        match event:
            case ParticipantJoined(participant=p):
                self.emit(
                    "participant", user_id=p.user_id, display_name=p.display_name, present=True
                )
            case ParticipantLeft(participant=p, reason=why):
                self.emit(
                    "participant",
                    user_id=p.user_id,
                    display_name=p.display_name,
                    present=False,
                    reason=why,
                )
            case ConnectionStateChanged(participant=p, state=state):
                self.emit("connection", session_id=p.session_id, user_id=p.user_id, state=state)
                if state == "connected" and not self._media_connected:
                    self._media_connected = True
                    self.emit("media_connected", session_id=p.session_id, user_id=p.user_id)
            case ConnectionQuality(participant=p):
                self.emit(
                    "quality",
                    session_id=p.session_id,
                    user_id=p.user_id,
                    rtt_ms=event.rtt_ms,
                    packets_received=event.packets_received,
                    packets_lost=event.packets_lost,
                )

    def _on_posted(self, chunk: Chunk, sequence: int) -> None:
        self.emit(
            "transcript",
            chunk_id=chunk.chunkId,
            sequence=sequence,
            speaker_id=chunk.speakerId,
            text=chunk.text,
            start_ms=chunk.startTime,
            end_ms=chunk.endTime,
            language=chunk.language,
            confidence=chunk.confidence,
        )

    def _recording_ready(self, recorder: Recorder) -> None:
        # file paths as the manifest has them (relative to its directory), so that each one read
        # in the manifest downloads as /v1/bots/{id}/recordings/{path}
        root = recorder.recording.root
        files = [
            {
                "user_id": user,
                "session_id": session.session_id,
                "kind": f.kind,
                "path": str(f.path.relative_to(root)),
                "duration_s": round(f.duration_s, 3),
                "error": f.error,
            }
            for session in recorder.recording.sessions
            for user in [session.user_id]
            for f in session.files
        ]
        # absolute: the service reads it where the worker wrote it (a volume both mount alike)
        manifest = str(recorder.recording.manifest_path.resolve())
        self.emit("recording", manifest=manifest, files=files)


def _cause(exc: Exception) -> Exception:
    """The error itself, out of the task groups it went through (the role's own and ours)."""
    while isinstance(exc, ExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _failure(exc: Exception) -> tuple[BotState, str, str]:
    """The final state, reason and detail of a bot that stopped on `exc`."""
    if isinstance(exc, MeetingEndedError | MeetingGone):
        return BotState.ENDED, LeaveReason.REMOVED.value, str(exc)
    if isinstance(exc, JoinRefused):
        known = {r.value for r in FailureReason}
        reason = exc.reason if exc.reason in known else FailureReason.INTERNAL.value
        if exc.message.startswith("invalid arguments") and "path .meetingId" in exc.message:
            # the id cannot name a meeting (of another table, or no id at all). A well-formed id
            # of no meeting is FORBIDDEN like any meeting of others: not_a_participant.
            reason = FailureReason.MEETING_NOT_FOUND.value
        return BotState.FAILED, reason, f"{exc.code or 'refused'}: {exc.message}"
    if isinstance(exc, AuthError):
        return BotState.FAILED, FailureReason.AUTH.value, exc.message
    if isinstance(exc, ConfigError) and "token" in str(exc):
        return BotState.FAILED, FailureReason.AUTH.value, str(exc)
    if isinstance(exc, FunctionError):
        return BotState.FAILED, FailureReason.INTERNAL.value, f"{exc.code}: {exc.message}"
    if isinstance(exc, ConvexError):
        return BotState.FAILED, FailureReason.BACKEND_UNREACHABLE.value, exc.message
    detail = f"{type(exc).__name__}: {exc}"
    return BotState.FAILED, FailureReason.INTERNAL.value, detail
