"""Recording remote media to files: one file per remote track, a JSON manifest per meeting.

Layout under the output directory::

    OUT/<meeting>/manifest.json
    OUT/<meeting>/<user>/<session>_<YYYYmmddTHHMMSS.mmmZ>_<n>_audio.ogg   (Opus in Ogg)
    OUT/<meeting>/<user>/<session>_<YYYYmmddTHHMMSS.mmmZ>_<n>_video.webm  (VP8 in WebM)

Audio is re-encoded to Opus (48 kHz, the layout received) in Ogg; video to VP8 in WebM (realtime
settings). Both play in every browser, VLC, mpv and ffplay, and both containers stay readable up to
the last complete page/cluster if the process dies. Each track gets its own file, so a track added
by renegotiation, or a new connection of the same session, simply starts another file; the manifest
gives each file's start time so they can be aligned.

`MeetingRecording.record(user, session, kind, frames)` returns the coroutine that writes one track's
frames until they end or it is cancelled (the owner runs it in a TaskGroup); the file is finalised
in `finally`, so a closed session and the agent's shutdown both leave complete files. A file that
cannot be created or written (unwritable directory, full disk) gives one error, logged once and
kept in the manifest; the track is then drained so the session and other recordings carry on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

log = logging.getLogger(__name__)

Clock = Callable[[], float]  # epoch seconds

AUDIO_CONTAINER, AUDIO_CODEC, AUDIO_SUFFIX = "ogg", "libopus", "ogg"
VIDEO_CONTAINER, VIDEO_CODEC, VIDEO_SUFFIX = "webm", "libvpx", "webm"
AUDIO_RATE = 48_000
VIDEO_TIME_BASE = Fraction(1, 1000)
VIDEO_BITRATE = 1_000_000


class RecordingError(Exception):
    """A recording could not be written; str() is one line naming the file and the reason."""


def _iso(epoch_s: float) -> str:
    return (
        datetime.fromtimestamp(epoch_s, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _stamp(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"


def safe_path_component(name: str) -> str:
    """A path component from an id: keeps [A-Za-z0-9._-], replaces anything else."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return cleaned.lstrip(".") or "_"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class TrackWriter:
    """Encodes the frames of one track into one file. Synchronous; not thread-safe."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path = path
        self.kind = kind
        self.frames = 0
        self.samples = 0  # audio
        self.first_pts: int | None = None
        self.last_pts = -1  # video, in VIDEO_TIME_BASE
        self.width: int | None = None
        self.height: int | None = None
        self._container: Any = None
        self._stream: Any = None
        self._resampler: Any = None
        self._closed = False
        self.codec = AUDIO_CODEC if kind == "audio" else VIDEO_CODEC
        self.container_format = AUDIO_CONTAINER if kind == "audio" else VIDEO_CONTAINER

    @property
    def duration(self) -> float:
        """Seconds of media written so far."""
        if self.kind == "audio":
            return self.samples / AUDIO_RATE
        if self.frames == 0:
            return 0.0
        if self.frames == 1:
            return float(VIDEO_TIME_BASE)
        # the last frame lasts as long as the average frame
        return float(self.last_pts * VIDEO_TIME_BASE) * self.frames / (self.frames - 1)

    def _open(self, frame: Any) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(str(self.path), mode="w", format=self.container_format)
            if self.kind == "audio":
                layout = "mono" if frame.layout.name == "mono" else "stereo"
                self._stream = self._container.add_stream(AUDIO_CODEC, rate=AUDIO_RATE)
                self._stream.layout = layout
                self._resampler = av.AudioResampler(format="s16", layout=layout, rate=AUDIO_RATE)
            else:
                self.width = frame.width - frame.width % 2
                self.height = frame.height - frame.height % 2
                self._stream = self._container.add_stream(VIDEO_CODEC, rate=30)
                self._stream.width, self._stream.height = self.width, self.height
                self._stream.pix_fmt = "yuv420p"
                self._stream.bit_rate = VIDEO_BITRATE
                self._stream.codec_context.time_base = VIDEO_TIME_BASE
                self._stream.options = {
                    "deadline": "realtime",
                    "cpu-used": "8",
                    "lag-in-frames": "0",
                }
        except (OSError, av.FFmpegError) as exc:
            self._abandon()
            raise RecordingError(f"cannot create {self.path}: {_reason(exc)}") from None

    def write(self, frame: Any) -> None:
        """Encode one av.AudioFrame or av.VideoFrame. Raises RecordingError."""
        if self._container is None:
            self._open(frame)
        try:
            if self.kind == "audio":
                self._write_audio(frame)
            else:
                self._write_video(frame)
        except (OSError, av.FFmpegError) as exc:
            self._abandon()
            raise RecordingError(f"cannot write {self.path}: {_reason(exc)}") from None

    def _write_audio(self, frame: Any) -> None:
        for out in self._resampler.resample(frame):
            out.pts = self.samples
            out.time_base = Fraction(1, AUDIO_RATE)
            self.samples += out.samples
            self.frames += 1
            for packet in self._stream.encode(out):
                self._container.mux(packet)

    def _write_video(self, frame: Any) -> None:
        # Timestamps from the RTP clock, relative to the first frame, strictly increasing.
        pts = 0
        if frame.pts is not None and frame.time_base is not None:
            if self.first_pts is None:
                self.first_pts = frame.pts
            pts = int((frame.pts - self.first_pts) * frame.time_base / VIDEO_TIME_BASE)
        pts = max(pts, self.last_pts + 1)
        size = (frame.width, frame.height)
        if size != (self.width, self.height) or frame.format.name != "yuv420p":
            frame = frame.reformat(width=self.width, height=self.height, format="yuv420p")
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        self.last_pts = pts
        self.frames += 1
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        """Flush the encoder and finish the container (idempotent). Raises RecordingError."""
        if self._closed:
            return
        self._closed = True
        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
        except (OSError, av.FFmpegError) as exc:
            self._abandon()
            raise RecordingError(f"cannot finish {self.path}: {_reason(exc)}") from None
        finally:
            self._container = None

    def _abandon(self) -> None:
        self._closed = True
        container, self._container = self._container, None
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()


@dataclass
class FileEntry:
    path: Path
    kind: str
    container: str
    codec: str
    started_at: float  # epoch seconds, first frame
    ended_at: float | None = None
    duration_s: float = 0.0
    frames: int = 0
    width: int | None = None
    height: int | None = None
    error: str | None = None

    def to_json(self, root: Path) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": os.path.relpath(self.path, root),
            "kind": self.kind,
            "container": self.container,
            "codec": self.codec.removeprefix("lib"),
            "startedAt": _iso(self.started_at),
            "startedAtMs": round(self.started_at * 1000),
            "endedAt": _iso(self.ended_at) if self.ended_at is not None else None,
            "durationS": round(self.duration_s, 3),
            "frames": self.frames,
            "complete": self.ended_at is not None and self.error is None,
        }
        if self.kind == "video":
            data["width"], data["height"] = self.width, self.height
        if self.error is not None:
            data["error"] = self.error
        return data


@dataclass
class SessionEntry:
    user_id: str
    session_id: str
    started_at: float
    ended_at: float | None = None
    open_tracks: int = 0
    files: list[FileEntry] = field(default_factory=list)

    def to_json(self, root: Path) -> dict[str, Any]:
        return {
            "sessionId": self.session_id,
            "startedAt": _iso(self.started_at),
            "endedAt": _iso(self.ended_at) if self.ended_at is not None else None,
            "files": [f.to_json(root) for f in self.files],
        }


class MeetingRecording:
    """Every recording of one meeting, and its manifest (rewritten atomically on each change)."""

    def __init__(self, out: Path, meeting_id: str, *, clock: Clock = time.time) -> None:
        self.root = out / safe_path_component(meeting_id)
        self.meeting_id = meeting_id
        self._clock = clock
        self.started_at = clock()
        self.ended_at: float | None = None
        self.recorder_user_id: str | None = None
        self.sessions: list[SessionEntry] = []
        self.errors: list[str] = []
        self._counter = 0
        self._manifest_error: str | None = None

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def files(self) -> list[FileEntry]:
        return [f for s in self.sessions for f in s.files]

    def _session(self, user_id: str, session_id: str) -> SessionEntry:
        for entry in reversed(self.sessions):
            if entry.session_id == session_id and entry.user_id == user_id:
                return entry
        entry = SessionEntry(user_id, session_id, self._clock())
        self.sessions.append(entry)
        return entry

    def record(
        self, user_id: str, session_id: str, kind: str, frames: AsyncIterable[Any]
    ) -> Coroutine[Any, Any, None]:
        """The coroutine that records one track's decoded `frames` (av.AudioFrame or
        av.VideoFrame) until they end or it is cancelled."""
        session = self._session(user_id, session_id)
        session.open_tracks += 1
        session.ended_at = None
        return self._record(session, kind, frames)

    async def _record(self, session: SessionEntry, kind: str, frames: AsyncIterable[Any]) -> None:
        writer: TrackWriter | None = None
        entry: FileEntry | None = None
        try:
            async for frame in frames:
                if entry is None:
                    now = self._clock()
                    self._counter += 1
                    suffix = AUDIO_SUFFIX if kind == "audio" else VIDEO_SUFFIX
                    session_part = safe_path_component(session.session_id)
                    name = f"{session_part}_{_stamp(now)}_{self._counter}_{kind}"
                    user_part = safe_path_component(session.user_id)
                    path = self.root / user_part / f"{name}.{suffix}"
                    writer = TrackWriter(path, kind)
                    entry = FileEntry(path, kind, writer.container_format, writer.codec, now)
                    session.files.append(entry)
                    self.write_manifest()
                if writer is None:
                    continue  # failed earlier: drain the track, keep the session alive
                try:
                    writer.write(frame)
                except RecordingError as exc:
                    self._failed(entry, str(exc))
                    writer = None
        finally:
            if entry is not None:
                entry.ended_at = self._clock()
                if writer is not None:
                    try:
                        writer.close()
                    except RecordingError as exc:
                        self._failed(entry, str(exc))
                    self._update(entry, writer)
            session.open_tracks -= 1
            if session.open_tracks == 0:
                session.ended_at = self._clock()
            self.write_manifest()

    @staticmethod
    def _update(entry: FileEntry, writer: TrackWriter) -> None:
        entry.duration_s = writer.duration
        entry.frames = writer.frames
        entry.width, entry.height = writer.width, writer.height

    def _failed(self, entry: FileEntry, message: str) -> None:
        entry.error = message
        self.errors.append(message)
        log.error("recording failed: %s", message)

    def close(self) -> None:
        """Mark the meeting's recording ended and write the final manifest."""
        self.ended_at = self._clock()
        self.write_manifest()

    def manifest(self) -> dict[str, Any]:
        participants: dict[str, list[dict[str, Any]]] = {}
        for s in self.sessions:
            participants.setdefault(s.user_id, []).append(s.to_json(self.root))
        return {
            "meetingId": self.meeting_id,
            "recorderUserId": self.recorder_user_id,
            "startedAt": _iso(self.started_at),
            "endedAt": _iso(self.ended_at) if self.ended_at is not None else None,
            "participants": [
                {"userId": user, "sessions": sessions} for user, sessions in participants.items()
            ],
        }

    def write_manifest(self) -> bool:
        """Write manifest.json atomically; an error is logged once. Returns success."""
        tmp = self.manifest_path.with_name(".manifest.json.tmp")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.manifest(), indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, self.manifest_path)
        except OSError as exc:
            message = f"cannot write {self.manifest_path}: {_reason(exc)}"
            if message != self._manifest_error:
                log.error("recording manifest: %s", message)
                self._manifest_error = message
            return False
        self._manifest_error = None
        return True
