"""The recorder: joins without sending media and writes every remote track to files.

See agent/media/recording.py for the layout, containers and the manifest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiortc import MediaStreamTrack

from agent.media.recording import MeetingRecording
from agent.peer.participant import Participant, ParticipantSettings
from agent.peer.session import PeerSession
from agent.signaling.api import ConnvoApi

log = logging.getLogger(__name__)


class Recorder:
    """A Participant with no local tracks whose track consumer records to `out`."""

    def __init__(self, api: ConnvoApi, settings: ParticipantSettings, out: Path) -> None:
        self.recording = MeetingRecording(out, settings.meeting_id)
        self.first_track = asyncio.Event()
        self.participant = Participant(api, settings, on_track=self._on_track)

    def _on_track(self, session: PeerSession, track: MediaStreamTrack) -> Coroutine[Any, Any, None]:
        self.first_track.set()
        self._note_identity()
        log.info(
            "recording %s from user %s, session %s",
            track.kind,
            session.remote_user_id,
            session.remote_session_id,
        )
        return self.recording.record(session.remote_user_id, session.remote_session_id, track)

    async def run(self, stop: asyncio.Event) -> None:
        self.recording.write_manifest()
        try:
            await self.participant.run(stop)
        finally:
            # Every session, and so every track consumer, has ended: files are finalised.
            self._note_identity()
            self.recording.close()

    def _note_identity(self) -> None:
        if self.participant.local is not None:
            self.recording.recorder_user_id = self.participant.local.user_id

    def summary_lines(self) -> list[str]:
        lines = [
            f"{f.kind} {f.path}: {f.duration_s:.1f} s" + (f" (error: {f.error})" if f.error else "")
            for f in self.recording.files()
        ]
        lines.append(f"manifest {self.recording.manifest_path}")
        return lines
