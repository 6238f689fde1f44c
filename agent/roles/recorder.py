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
from agent.peer.participant import Participant, ParticipantSettings
from agent.roles.meeting_loop import run_meeting
from agent.signaling.api import ConnvoApi

log = logging.getLogger(__name__)

# Frames a track's file may fall behind by (encoding runs on the event loop) before the oldest
# are dropped: 10 s of audio, 10 s of 30 fps video.
MAX_QUEUED_FRAMES = 500


class Recorder:
    """A meeting with no local tracks whose remote tracks are recorded to `out`."""

    def __init__(self, api: ConnvoApi, settings: ParticipantSettings, out: Path) -> None:
        self.recording = MeetingRecording(out, settings.meeting_id)
        self.first_track = asyncio.Event()
        self.meeting = Meeting(api, settings, tracks_for_peer=list)

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
            self.recording.record(user, track.session_id, track.kind, _frames(track)),
            name=f"record-{track.kind}-{track.session_id}",
        )

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
        return lines


async def _frames(track: RemoteTrack) -> AsyncIterator[Any]:
    stream = track.frames(max_queued=MAX_QUEUED_FRAMES)
    async for media in stream:
        yield media.frame
    if stream.dropped:
        log.warning("%r: %d frames dropped: the file fell behind", track, stream.dropped)
