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

Timing. Each frame is placed at its true time, so a file lasts as long as its track did. Within a
stream it is placed by its RTP timestamp (`frame.pts`, unwrapped): frames lost, late or never sent
(DTX, a pause whose timestamps go on) leave a gap of the right length, which audio fills with
silence. The stream is tied to this machine's clock by when its frames arrived: by their first
packet at aiortc's jitter buffer when the track's receiver is given (`PacketArrivals`), else by
the decoded frame less the time aiortc usually holds one. The offset between RTP time and that
clock is the least seen (the least-delayed frame): during the first `SETTLE_S` seconds the file's
start moves with it; after that a lower one is followed at once and the least may only rise at
clock-drift rates (`MAX_DRIFT`), in steps of `DRIFT_S` (a little silence added, or a few samples
dropped), so a queue that grows on the way does not stretch the media while a sender's clock
that runs slow or fast is followed. A pause that did not move the timestamps (or timestamps that
jumped) moves the placement at once: a frame `JUMP_S` later (earlier) than the last by their
timestamps, followed by frames as far from their place for `JUMP_CONFIRM_S`. With the receiver
given, video is placed by the sender's RTCP sender reports plus the delay audio is placed with
(`SessionSync`): both tracks of a session keep the sender's own alignment. Each file's
`startedAtMs` is the clock time of its first sample. The manifest records per file the media
duration, the clock time it spans by its frames' arrival and their difference, and per session
the audio/video offset at the end.

Kill -9: the writers flush every packet to the file, Ogg pages every `OGG_PAGE_S` and WebM clusters
every `WEBM_CLUSTER_MS`, and the manifest is rewritten every `MANIFEST_EVERY_S` while recording, so
a recorder killed outright leaves files that decode up to about a second before the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

log = logging.getLogger(__name__)

Clock = Callable[[], float]  # epoch seconds

AUDIO_CONTAINER, AUDIO_CODEC, AUDIO_SUFFIX = "ogg", "libopus", "ogg"
VIDEO_CONTAINER, VIDEO_CODEC, VIDEO_SUFFIX = "webm", "libvpx", "webm"
AUDIO_RATE = 48_000
VIDEO_TIME_BASE = Fraction(1, 1000)
VIDEO_BITRATE = 1_000_000
# Speech needs far less than libopus's default for 48 kHz stereo (about 190 kbit/s).
AUDIO_BITRATE = 64_000

# Flushing, so that a kill -9 loses about a second at most.
OGG_PAGE_S = 0.5
WEBM_CLUSTER_MS = 1000
MANIFEST_EVERY_S = 2.0

# Placement (see the module docstring).
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)
AIORTC_AUDIO_PREFETCH = 4  # packets aiortc's audio jitter buffer holds before releasing one
DEFAULT_FRAME_S = 1 / 30  # video frame interval until one is seen
SETTLE_S = 3.0  # the file's origin moves with the least offset seen until then
DRIFT_S = 0.015  # the placement follows the clock when they differ by more than this
JUMP_S = 1.0  # a frame this much later or earlier than the last, by their timestamps, ...
JUMP_CONFIRM_S = 2.0  # ... followed by frames as far from their place for this long: a pause
SOURCES = ("frames", "packets", "reports")  # what a placement follows, worst to best
MAX_DRIFT = 0.001  # the fastest the placement follows the clock (1 ms per second)
AUDIO_TOLERANCE_S = 0.005  # audio placed within this of the end already written is contiguous
SILENCE_CHUNK = AUDIO_RATE  # samples of silence encoded at a time (bounded memory)


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


class PacketArrivals:
    """When the first packet of each frame of one aiortc receiver arrived (clock time, by RTP
    timestamp), taken at its jitter buffer's door: frames are then placed by their packets'
    arrival, free of the time the buffer holds them (aiortc holds audio 80 ms, and about 300 ms
    from the first loss on; video until a frame is whole). Reaches into aiortc's receiver
    (`watch` gives None where its internals moved: the frames' own arrival is used then)."""

    KEEP = 1024  # frames remembered (20 s of audio, 30 s of video)
    REPORTS = 16  # sender reports remembered (about 16 s)

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._first: dict[int, float] = {}
        self._mapper: Any = None  # aiortc's: frame.pts = RTP timestamp - the first one
        self.ssrc: int | None = None  # the media stream's (RTX and others' reports are not its)
        # the sender's last RTCP sender reports: (its clock time, Unix s; the RTP timestamp then)
        self.sender_reports: deque[tuple[float, int]] = deque(maxlen=self.REPORTS)

    @classmethod
    def watch(cls, receiver: Any, *, clock: Clock = time.time) -> PacketArrivals | None:
        buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
        add = getattr(buffer, "add", None)
        if buffer is None or not callable(add):
            return None
        arrivals = cls(clock)
        arrivals._mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)

        def timed_add(packet: Any) -> Any:
            arrivals.ssrc = packet.ssrc
            arrivals.arrived(int(packet.timestamp))
            return add(packet)

        buffer.add = timed_add
        handle_rtcp = getattr(receiver, "_handle_rtcp_packet", None)
        if callable(handle_rtcp):

            async def noting_rtcp(packet: Any) -> None:
                info = getattr(packet, "sender_info", None)
                # (a report before any packet was sent maps nothing: aiortc sends NTP 0 then)
                ours = getattr(packet, "ssrc", None) == arrivals.ssrc
                if ours and info is not None and info.packet_count and info.ntp_timestamp:
                    ntp = int(info.ntp_timestamp)
                    sent_at = (ntp >> 32) - NTP_EPOCH_OFFSET + (ntp & 0xFFFFFFFF) / (1 << 32)
                    arrivals.sender_reports.append((sent_at, int(info.rtp_timestamp)))
                await handle_rtcp(packet)

            receiver._handle_rtcp_packet = noting_rtcp
        return arrivals

    def sender_time(self, pts: int, rate: float) -> float | None:
        """The sender's clock time of the frame with this pts (Unix s), by its recent reports.

        A report pairs an RTP timestamp with the moment its packet was sent, a little after the
        frame was made (encoding, a busy sender): the earliest of the recent reports' mappings
        is the closest to the frame's making."""
        rtp_timestamp = self.rtp_timestamp(pts)
        if not self.sender_reports or rtp_timestamp is None:
            return None
        earliest = float("inf")
        for sent_at, report_rtp in self.sender_reports:
            delta = (rtp_timestamp - report_rtp) % (1 << 32)
            if delta >= 1 << 31:
                delta -= 1 << 32
            earliest = min(earliest, sent_at + delta / rate)
        return earliest

    def arrived(self, rtp_timestamp: int) -> None:
        if rtp_timestamp not in self._first:
            self._first[rtp_timestamp] = self._clock()
            if len(self._first) > self.KEEP:
                del self._first[next(iter(self._first))]

    def rtp_timestamp(self, pts: int) -> int | None:
        """A decoded frame's RTP timestamp (aiortc counts frames' pts from the first one)."""
        origin = getattr(self._mapper, "_origin", None)
        return None if origin is None else (pts + origin) % (1 << 32)

    def of(self, pts: int) -> float | None:
        """When the first packet of the frame with this pts arrived."""
        rtp = self.rtp_timestamp(pts)
        return None if rtp is None else self._first.get(rtp)


@dataclass
class SessionSync:
    """What the tracks of one remote session share to be in sync: how much later than the
    sender's clock (by its sender reports) the audio is placed. Video placed by this, not by its
    own arrival, shares audio's delay: a link busy with video delays video's packets more than
    audio's, and the sender's reports say when each frame left."""

    audio_delay: float | None = None


class Placement:
    """Where each frame of one track belongs on this machine's clock (epoch seconds).

    `place(frame, arrival)` gives the frame's position in its file (seconds from the file's
    first sample, `origin`), or None for a frame without a timestamp (written after the last).
    """

    def __init__(
        self, kind: str, arrivals: PacketArrivals | None = None, sync: SessionSync | None = None
    ) -> None:
        self.kind = kind
        self.arrivals = arrivals
        self.sync = sync
        self.synced = False  # the last frame was placed by the sender's reports (video)
        self.origin: float | None = None  # clock time of the file's position 0
        self._offset = 0.0  # clock time - RTP time, as placed
        self._last_raw: int | None = None
        self._rtp = 0  # unwrapped RTP time, in the frame's time base
        self._first_rtp_s = 0.0
        self._settled = False  # the origin is fixed after the first full window
        self._reset_at = 0.0
        self._least = float("inf")  # the least offset seen, rising at MAX_DRIFT at most
        self._least_at = 0.0
        self._frame_s = DEFAULT_FRAME_S
        self._time_base = 1.0
        self._away_since: float | None = None  # arrival of the first frame far from its place
        self._away_later = False
        self._away_least = 0.0
        self._previous_observed: float | None = None
        self._source = -1  # index in SOURCES of what the placement follows
        # the last frame's placement less its time on the sender's clock (its reports)
        self.sender_delay: float | None = None
        self.last_end_s: float | None = None  # RTP time of the end of the last frame
        self.anchors = 0  # times the placement moved at once (pauses, jumps)
        self.corrections = 0  # times it followed the clock (drift)

    def _hold(self, frame: Any) -> float:
        if self.kind == "audio":
            return float(AIORTC_AUDIO_PREFETCH * frame.samples) / (frame.sample_rate or AUDIO_RATE)
        return self._frame_s

    def _duration(self, frame: Any) -> float:
        if self.kind == "audio":
            return float(frame.samples / (frame.sample_rate or AUDIO_RATE))
        return self._frame_s

    def _unwrap(self, raw: int) -> int:
        if self._last_raw is None:
            self._rtp = raw
        else:
            delta = (raw - self._last_raw) % (1 << 32)
            if delta >= 1 << 31:
                delta -= 1 << 32
            if self.kind == "video" and delta > 0:
                self._frame_s = min(0.2, delta * self._time_base)
            self._rtp += delta
        self._last_raw = raw
        return self._rtp

    def _reset(self, arrival: float) -> None:
        self._reset_at = self._least_at = arrival
        self._least = float("inf")

    def least_offset(self) -> float:
        """The least clock - RTP offset seen (the least-delayed frame), allowed to rise at
        clock-drift rates only."""
        return self._offset if self._least == float("inf") else self._least

    def place(self, frame: Any, arrival: float) -> float | None:
        if frame.pts is None or frame.time_base is None:
            return None
        self._time_base = float(frame.time_base)
        rtp_s = self._unwrap(int(frame.pts)) * self._time_base
        packet_arrival = self.arrivals.of(int(frame.pts)) if self.arrivals is not None else None
        sender_time = None
        if self.arrivals is not None:
            sender_time = self.arrivals.sender_time(int(frame.pts), 1 / self._time_base)
        audio_delay = self.sync.audio_delay if self.sync is not None else None
        synced = self.kind == "video" and sender_time is not None and audio_delay is not None
        if synced:
            assert sender_time is not None and audio_delay is not None
            source, observed = SOURCES.index("reports"), sender_time + audio_delay - rtp_s
        elif packet_arrival is not None:
            source, observed = SOURCES.index("packets"), packet_arrival - rtp_s
        else:
            source, observed = SOURCES.index("frames"), arrival - self._hold(frame) - rtp_s
        if source > self._source:
            log.debug("%s placement by %s", self.kind, SOURCES[source])
            # offsets from another source do not compare: start the least afresh
            self._source, self._least = source, float("inf")
        elif source < self._source:
            # a frame the better source missed: placed as the frames around it
            return self._placed(frame, rtp_s, sender_time)
        self.synced = synced
        if self.origin is None:
            self._offset = observed
            self._first_rtp_s = rtp_s
            self.origin = rtp_s + observed
            self._reset(arrival)
        if synced:
            # not a delay measured but audio's placement carried over: followed as it is
            self._least, self._least_at = observed, arrival
        else:
            if self._least != float("inf"):
                self._least += MAX_DRIFT * max(0.0, arrival - self._least_at)
            self._least, self._least_at = min(self._least, observed), arrival
        previous, self._previous_observed = self._previous_observed, observed
        if self._away_since is not None:
            if abs(observed - self._offset) < JUMP_S or (
                (observed > self._offset) != self._away_later
            ):
                self._away_since = None  # back in place: a stall, not a pause
            else:
                self._away_least = min(self._away_least, observed)
        elif previous is not None and abs(observed - previous) > JUMP_S:
            # Far more (or less) time between this frame and the last than their timestamps
            # say: a pause that did not move the timestamps, or timestamps that jumped; if the
            # frames after it stay away from their place, the placement moves to them.
            self._away_since, self._away_later = arrival, observed > self._offset
            self._away_least = observed
        if self._away_since is not None and arrival - self._away_since >= JUMP_CONFIRM_S:
            log.debug(
                "%s placement: moved by %.3f s (pause or jump)",
                self.kind,
                self._away_least - self._offset,
            )
            self._offset = self._away_least
            self.anchors += 1
            self._settled = True  # a pause early on keeps its length: the origin stays
            self._reset(arrival)
            self._least = observed
            self._away_since = None
        elif not self._settled or abs(self.least_offset() - self._offset) > DRIFT_S:
            # Later frames only ever lower the least offset (a queue that drained, a frame
            # less delayed) and it rises at clock-drift rates: a queue that grows on the way
            # does not stretch the media, a sender's clock that runs slow or fast does.
            if self._settled:
                log.debug(
                    "%s placement: follows the clock by %.3f s",
                    self.kind,
                    self.least_offset() - self._offset,
                )
                self.corrections += 1
            self._offset = self.least_offset()
        if not self._settled:
            # Until the first window is full the origin moves with the offset: the file starts
            # at the clock time of its first sample, not at the first frame's (late) arrival.
            self.origin = self._first_rtp_s + self._offset
            self._settled = arrival - self._reset_at >= SETTLE_S
        return self._placed(frame, rtp_s, sender_time)

    def _placed(self, frame: Any, rtp_s: float, sender_time: float | None) -> float | None:
        if self.origin is None:
            return None
        self.last_end_s = rtp_s + self._duration(frame)
        if sender_time is not None:
            self.sender_delay = rtp_s + self._offset - sender_time
            if self.kind == "audio" and self.sync is not None:
                self.sync.audio_delay = self.sender_delay
        return rtp_s + self._offset - self.origin

    def drift_s(self) -> float:
        """How far the last frame's end is placed from where the clock puts it now (placed
        minus observed, seconds)."""
        return self._offset - self.least_offset()

    def clock_end(self) -> float | None:
        """Clock time at which the last frame ended, by the least-delayed arrivals."""
        if self.last_end_s is None:
            return None
        return self.last_end_s + self.least_offset()


class TrackWriter:
    """Encodes the frames of one track into one file. Synchronous; not thread-safe."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path = path
        self.kind = kind
        self.frames = 0
        self.samples = 0  # audio, silence included
        self.silence_samples = 0  # audio written as silence (gaps)
        self.dropped_samples = 0  # audio dropped where frames overlapped their place
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
            options = {"flush_packets": "1"}  # every packet to the file: see kill -9
            if self.kind == "audio":
                options["page_duration"] = str(round(OGG_PAGE_S * 1_000_000))
            else:
                options["cluster_time_limit"] = str(WEBM_CLUSTER_MS)
            self._container = av.open(
                str(self.path), mode="w", format=self.container_format, options=options
            )
            if self.kind == "audio":
                layout = "mono" if frame.layout.name == "mono" else "stereo"
                self._stream = self._container.add_stream(AUDIO_CODEC, rate=AUDIO_RATE)
                self._stream.layout = layout
                self._stream.bit_rate = AUDIO_BITRATE
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

    def write(self, frame: Any, at: float | None = None) -> None:
        """Encode one av.AudioFrame or av.VideoFrame, at `at` seconds from the file's start
        (a `Placement`; None: audio right after the last frame, video by its own timestamps).
        Audio placed past the end written is preceded by silence; audio placed before it loses
        the samples that overlap. Raises RecordingError."""
        if self._container is None:
            self._open(frame)
        try:
            if self.kind == "audio":
                self._write_audio(frame, at)
            else:
                self._write_video(frame, at)
        except (OSError, av.FFmpegError) as exc:
            self._abandon()
            raise RecordingError(f"cannot write {self.path}: {_reason(exc)}") from None

    def _encode_audio(self, out: Any) -> None:
        out.pts = self.samples
        out.time_base = Fraction(1, AUDIO_RATE)
        self.samples += out.samples
        for packet in self._stream.encode(out):
            self._container.mux(packet)

    def fill_to(self, at: float) -> None:
        """Audio: silence from the end written up to `at` seconds (nothing if already there)."""
        target = round(at * AUDIO_RATE)
        channels = 1 if self._stream.layout.name == "mono" else 2
        while (missing := target - self.samples) > 0:
            n = min(missing, SILENCE_CHUNK)
            silence = av.AudioFrame.from_ndarray(
                np.zeros((1, n * channels), dtype=np.int16),
                format="s16",
                layout=self._stream.layout.name,
            )
            silence.sample_rate = AUDIO_RATE
            self.silence_samples += n
            self._encode_audio(silence)

    def _write_audio(self, frame: Any, at: float | None) -> None:
        outs = self._resampler.resample(frame)
        if at is not None and outs:
            tolerance = round(AUDIO_TOLERANCE_S * AUDIO_RATE)
            target = round(at * AUDIO_RATE)
            if target - self.samples > tolerance:
                self.fill_to(at)
            elif self.samples - target > tolerance:
                outs = self._trim(outs, self.samples - target)
        for out in outs:
            self.frames += 1
            self._encode_audio(out)

    def _trim(self, outs: list[Any], count: int) -> list[Any]:
        """`outs` less their first `count` samples (they overlap what is written)."""
        kept: list[Any] = []
        for out in outs:
            if count >= out.samples:
                count -= out.samples
                self.dropped_samples += out.samples
                continue
            if count > 0:
                channels = 1 if out.layout.name == "mono" else 2
                data = out.to_ndarray()[:, count * channels :]
                self.dropped_samples += count
                count = 0
                trimmed = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(data), format="s16", layout=out.layout.name
                )
                trimmed.sample_rate = AUDIO_RATE
                out = trimmed
            kept.append(out)
        return kept

    def _write_video(self, frame: Any, at: float | None) -> None:
        # Timestamps from the placement, or from the RTP clock relative to the first frame;
        # strictly increasing.
        pts = 0
        if at is not None:
            pts = round(at / VIDEO_TIME_BASE)
        elif frame.pts is not None and frame.time_base is not None:
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
    # the clock time from the first sample to the end of the last frame, by arrivals
    wall_clock_s: float | None = None
    silence_s: float = 0.0  # audio: gaps written as silence
    drift_s: float = 0.0  # the last frame's placement less where the clock puts it, at the end
    sender_delay_s: float | None = None  # the last frame's placement less its sender's time

    @property
    def duration_error_pct(self) -> float | None:
        if not self.wall_clock_s:
            return None
        return 100 * (self.duration_s - self.wall_clock_s) / self.wall_clock_s

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
            "wallClockS": round(self.wall_clock_s, 3) if self.wall_clock_s is not None else None,
            "durationErrorPct": (
                round(error, 3) if (error := self.duration_error_pct) is not None else None
            ),
            "frames": self.frames,
            "complete": self.ended_at is not None and self.error is None,
        }
        if self.kind == "audio":
            data["silenceS"] = round(self.silence_s, 3)
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
    sync: SessionSync = field(default_factory=SessionSync)

    @property
    def av_offset_ms(self) -> float | None:
        """How much later audio is placed than video, at the end of the latest file of each kind
        (ms): against the sender's clock by its RTCP sender reports when the recording has them
        (the track's receiver was given), else against the arrival clock."""
        latest: dict[str, FileEntry] = {}
        for f in self.files:
            if f.wall_clock_s is not None and f.error is None:
                latest[f.kind] = f
        if "audio" not in latest or "video" not in latest:
            return None
        audio, video = latest["audio"], latest["video"]
        if audio.sender_delay_s is not None and video.sender_delay_s is not None:
            # by the sender's reports: how much later than video audio is placed, against
            # when the sender sent them
            return 1000 * (audio.sender_delay_s - video.sender_delay_s)
        return 1000 * (audio.drift_s - video.drift_s)

    def to_json(self, root: Path) -> dict[str, Any]:
        offset = self.av_offset_ms
        return {
            "sessionId": self.session_id,
            "startedAt": _iso(self.started_at),
            "endedAt": _iso(self.ended_at) if self.ended_at is not None else None,
            "avOffsetMs": round(offset, 1) if offset is not None else None,
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
        self._manifest_at = 0.0  # clock time of the last manifest written

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
        self,
        user_id: str,
        session_id: str,
        kind: str,
        frames: AsyncIterable[Any],
        *,
        receiver: Any = None,
    ) -> Coroutine[Any, Any, None]:
        """The coroutine that records one track's decoded `frames` (av.AudioFrame or
        av.VideoFrame) until they end or it is cancelled. `receiver`: the track's aiortc
        RTCRtpReceiver, if known, so that frames are placed by their packets' arrival
        (`PacketArrivals`); without it, by their own arrival less aiortc's usual hold."""
        session = self._session(user_id, session_id)
        session.open_tracks += 1
        session.ended_at = None
        arrivals = None
        if receiver is not None:
            arrivals = PacketArrivals.watch(receiver, clock=self._clock)
        log.debug("%s of %s placed by %s", kind, session_id, "packets" if arrivals else "frames")
        return self._record(session, kind, frames, Placement(kind, arrivals, session.sync))

    async def _record(
        self, session: SessionEntry, kind: str, frames: AsyncIterable[Any], placement: Placement
    ) -> None:
        writer: TrackWriter | None = None
        entry: FileEntry | None = None
        try:
            async for frame in frames:
                arrival = self._clock()
                at = placement.place(frame, arrival)
                if entry is None:
                    self._counter += 1
                    suffix = AUDIO_SUFFIX if kind == "audio" else VIDEO_SUFFIX
                    session_part = safe_path_component(session.session_id)
                    name = f"{session_part}_{_stamp(arrival)}_{self._counter}_{kind}"
                    user_part = safe_path_component(session.user_id)
                    path = self.root / user_part / f"{name}.{suffix}"
                    writer = TrackWriter(path, kind)
                    started = placement.origin if placement.origin is not None else arrival
                    entry = FileEntry(path, kind, writer.container_format, writer.codec, started)
                    session.files.append(entry)
                    self.write_manifest()
                if writer is None:
                    continue  # failed earlier: drain the track, keep the session alive
                try:
                    if kind == "audio" and at is not None and writer.duration > 0:
                        # a long gap: its silence a second at a time, letting others run
                        while at - writer.duration > 1.0:
                            writer.fill_to(writer.duration + 1.0)
                            await asyncio.sleep(0)
                    writer.write(frame, at)
                except RecordingError as exc:
                    self._failed(entry, str(exc))
                    writer = None
                    continue
                self._update(entry, writer, placement)
                if arrival - self._manifest_at >= MANIFEST_EVERY_S:
                    self.write_manifest()  # so that a kill -9 leaves durations near the end
        finally:
            if entry is not None:
                entry.ended_at = self._clock()
                if writer is not None:
                    try:
                        writer.close()
                    except RecordingError as exc:
                        self._failed(entry, str(exc))
                    self._update(entry, writer, placement)
            session.open_tracks -= 1
            if session.open_tracks == 0:
                session.ended_at = self._clock()
            self.write_manifest()

    @staticmethod
    def _update(entry: FileEntry, writer: TrackWriter, placement: Placement) -> None:
        entry.duration_s = writer.duration
        entry.frames = writer.frames
        entry.width, entry.height = writer.width, writer.height
        entry.silence_s = writer.silence_samples / AUDIO_RATE
        if placement.origin is not None:
            entry.started_at = placement.origin
            clock_end = placement.clock_end()
            if clock_end is not None:
                entry.wall_clock_s = clock_end - placement.origin
            entry.drift_s = placement.drift_s()
            entry.sender_delay_s = placement.sender_delay

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
            self._manifest_at = self._clock()
        except OSError as exc:
            message = f"cannot write {self.manifest_path}: {_reason(exc)}"
            if message != self._manifest_error:
                log.error("recording manifest: %s", message)
                self._manifest_error = message
            return False
        self._manifest_error = None
        return True
