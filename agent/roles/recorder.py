"""The recorder: joins without sending media and writes every remote track to files.

Built on the public API: each `TrackAdded` event's track is read frame by frame, as aiortc decoded
it, into a file of its own. See agent/media/recording.py for the layout, containers and manifest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agent.media.recording import MeetingRecording
from agent.meeting import Event, Meeting, RemoteTrack, TrackAdded
from agent.metrics import AgentMetrics
from agent.peer.participant import Participant, ParticipantSettings
from agent.peer.session_quality import SessionQuality, describe
from agent.roles.bot import watch_quality
from agent.roles.meeting_loop import run_meeting
from agent.signaling.api import ConnvoApi

log = logging.getLogger(__name__)

# Frames a track's file may fall behind by (encoding runs on the event loop) before the oldest
# are dropped: 10 s of audio, 10 s of 30 fps video.
MAX_QUEUED_FRAMES = 500


class Recorder:
    """A meeting with no local tracks whose remote tracks are recorded to `out`.

    Each connection's quality (docs/quality.md) goes to the metrics as it is measured, and its
    whole-call figures to the exit summary.
    """

    def __init__(
        self,
        api: ConnvoApi,
        settings: ParticipantSettings,
        out: Path,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.recording = MeetingRecording(out, settings.meeting_id)
        self.first_track = asyncio.Event()
        self.metrics = metrics
        self.quality: dict[str, SessionQuality] = {}  # by remote session id, as last measured
        self.meeting = Meeting(
            api,
            watch_quality(settings, self.quality, metrics),
            tracks_for_peer=list,
            metrics=metrics,
        )

    @property
    def participant(self) -> Participant:
        return self.meeting.participant

    def _on_event(self, event: Event, tasks: asyncio.TaskGroup) -> None:
        if not isinstance(event, TrackAdded):
            return
        self.first_track.set()
        self.recording.recorder_user_id = self.meeting.user_id
        track = event.track
        user = track.participant.user_id
        log.info("recording %s from user %s, session %s", track.kind, user, track.session_id)
        tasks.create_task(
            self.recording.record(
                user,
                track.session_id,
                track.kind,
                _frames(track),
                # its packets' arrival and the sender's RTCP reports place each frame in time
                receiver=self._receiver(track),
            ),
            name=f"record-{track.kind}-{track.session_id}",
        )

    def _receiver(self, track: RemoteTrack) -> Any:
        """The aiortc receiver of `track`: its session's newest of that kind (None if gone)."""
        manager = self.participant.manager
        session = manager.sessions.get(track.session_id) if manager is not None else None
        pc = session.pc if session is not None else None
        found = None
        for receiver in pc.getReceivers() if pc is not None else []:
            if receiver.track is not None and receiver.track.kind == track.kind:
                found = receiver
        return found

    async def run(self, stop: asyncio.Event) -> None:
        self.recording.write_manifest()
        try:
            await run_meeting(self.meeting, stop, self._on_event)
        finally:
            # Every track has ended and its file is written: the manifest is final.
            self.recording.close()

    def summary_lines(self) -> list[str]:
        lines = [
            f"{f.kind} {f.path}: {f.duration_s:.1f} s" + (f" (error: {f.error})" if f.error else "")
            for f in self.recording.files()
        ]
        lines.append(f"manifest {self.recording.manifest_path}")
        lines += [
            f"session {session_id} quality: {describe(quality)}"
            for session_id, quality in self.quality.items()
        ]
        return lines


async def _frames(track: RemoteTrack) -> AsyncIterator[Any]:
    stream = track.frames(max_queued=MAX_QUEUED_FRAMES)
    async for media in stream:
        yield media.frame
    if stream.dropped:
        log.warning("%r: %d frames dropped: the file fell behind", track, stream.dropped)
