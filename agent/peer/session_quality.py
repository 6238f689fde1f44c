"""A session's connection quality over its life: the latest interval, a few recent ones, and the
whole connection's totals, per direction. docs/quality.md says what each figure means.

`QualityTracker` is fed by the session: one getStats report per quality interval (the one its
liveness check reads anyway), and the arrival time of every decoded video frame, through a
`FreezeCounter` per received video track. Readers get immutable views: `IntervalQuality` (one
interval, both directions) and `SessionQuality` (recent intervals and the totals). Memory is
bounded: the previous report, `QUALITY_HISTORY` intervals and a counter per current video track.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from aiortc import MediaStreamTrack

from agent.peer.quality import (
    Direction,
    FrameReading,
    FreezeCounter,
    QualitySnapshot,
    quality_between,
)

N = TypeVar("N", int, float)

# Recent intervals a session keeps: a minute at the default 5 s interval.
QUALITY_HISTORY = 12
# The MOS from which a call counts as good in one-line summaries: G.107's "satisfied" band
# starts at R = 80, MOS 4.03.
GOOD_MOS = 4.0


@dataclass(frozen=True, slots=True)
class IntervalQuality:
    """Both directions of one connection over one interval, measured at `at` (time.monotonic())."""

    at: float
    inbound: QualitySnapshot
    outbound: QualitySnapshot


@dataclass(frozen=True, slots=True)
class QualityTotals:
    """One direction over every interval measured so far (the whole connection, across ICE
    restarts). Counts are sums; rates and means are weighted by the intervals' lengths. None:
    never known (aiortc does not report it, no video, or nothing measured yet)."""

    direction: Direction
    duration_s: float  # the time the measured intervals cover
    intervals: int
    packets: int
    packets_lost: int
    # inbound: lost / (received + lost), exactly; outbound: the intervals' loss weighted by
    # packets sent (the far end's reports say how many it expected only per interval)
    loss_pct: float | None
    packets_late: int | None
    audio_jitter_ms: float | None  # mean
    audio_jitter_ms_max: float | None
    video_jitter_ms: float | None  # mean
    rtt_ms: float | None  # mean
    bitrate_kbps: float | None  # mean
    audio_mos_mean: float | None
    audio_mos_min: float | None
    audio_mos_last: float | None
    video_duration_s: float  # the time covered by intervals that counted video frames
    video_frames: int | None
    fps: float | None
    freeze_count: int | None
    freeze_duration_s: float | None
    freezes_per_min: float | None
    pause_count: int | None
    pause_duration_s: float | None
    pli_count: int | None
    fir_count: int | None
    nack_count: int | None

    def as_dict(self) -> dict[str, Any]:
        """The fields by name, for JSON reports."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SessionQuality:
    """What a session's connection got: recent intervals (oldest first) and the totals."""

    recent: tuple[IntervalQuality, ...]
    inbound_total: QualityTotals
    outbound_total: QualityTotals

    @property
    def latest(self) -> IntervalQuality | None:
        return self.recent[-1] if self.recent else None


class _Totals:
    """The running sums behind one direction's QualityTotals."""

    def __init__(self, direction: Direction) -> None:
        self.direction: Direction = direction
        self.duration_s = 0.0
        self.intervals = 0
        self.packets = 0
        self.lost = 0
        self.loss_weighted = 0.0  # sum of loss_pct x weight
        self.loss_weight = 0.0
        self.late: int | None = None
        self.means: dict[str, list[float]] = {}  # name -> [sum of value x seconds, seconds]
        self.jitter_max: float | None = None
        self.mos_min: float | None = None
        self.mos_last: float | None = None
        self.video_s = 0.0  # the time covered by intervals with a frame count
        self.frames: int | None = None
        self.freezes: int | None = None
        self.freeze_s: float | None = None
        self.pauses: int | None = None
        self.pause_s: float | None = None
        self.requests: dict[str, int | None] = {"pli": None, "fir": None, "nack": None}

    def add(self, s: QualitySnapshot) -> None:
        seconds = s.interval_s or 0.0
        self.duration_s += seconds
        self.intervals += 1
        self.packets += s.packets
        self.lost += s.packets_lost
        if s.loss_pct is not None:
            weight = s.packets + s.packets_lost if s.direction == "inbound" else s.packets
            self.loss_weighted += s.loss_pct * weight
            self.loss_weight += weight
        self.late = _plus(self.late, s.packets_late)
        for name in ("audio_jitter_ms", "video_jitter_ms", "rtt_ms", "bitrate_kbps", "audio_mos"):
            value = getattr(s, name)
            if value is not None and seconds > 0.0:
                sums = self.means.setdefault(name, [0.0, 0.0])
                sums[0] += value * seconds
                sums[1] += seconds
        if s.audio_jitter_ms is not None:
            self.jitter_max = max(self.jitter_max or 0.0, s.audio_jitter_ms)
        if s.audio_mos is not None:
            self.mos_min = s.audio_mos if self.mos_min is None else min(self.mos_min, s.audio_mos)
            self.mos_last = s.audio_mos
        if s.video_frames is not None:
            self.video_s += seconds
            self.frames = _plus(self.frames, s.video_frames)
            self.freezes = _plus(self.freezes, s.freeze_count)
            self.freeze_s = _plus(self.freeze_s, s.freeze_duration_s)
            self.pauses = _plus(self.pauses, s.pause_count)
            self.pause_s = _plus(self.pause_s, s.pause_duration_s)
        for name, value in (("pli", s.pli_count), ("fir", s.fir_count), ("nack", s.nack_count)):
            self.requests[name] = _plus(self.requests[name], value)

    def mean(self, name: str) -> float | None:
        sums = self.means.get(name)
        return sums[0] / sums[1] if sums else None

    def view(self) -> QualityTotals:
        minutes = self.video_s / 60.0
        freeze_rate = self.freezes / minutes if self.freezes is not None and minutes else None
        return QualityTotals(
            direction=self.direction,
            duration_s=self.duration_s,
            intervals=self.intervals,
            packets=self.packets,
            packets_lost=self.lost,
            loss_pct=self.loss_weighted / self.loss_weight if self.loss_weight else None,
            packets_late=self.late,
            audio_jitter_ms=self.mean("audio_jitter_ms"),
            audio_jitter_ms_max=self.jitter_max,
            video_jitter_ms=self.mean("video_jitter_ms"),
            rtt_ms=self.mean("rtt_ms"),
            bitrate_kbps=self.mean("bitrate_kbps"),
            audio_mos_mean=self.mean("audio_mos"),
            audio_mos_min=self.mos_min,
            audio_mos_last=self.mos_last,
            video_duration_s=self.video_s,
            video_frames=self.frames,
            fps=self.frames / self.video_s if self.frames is not None and self.video_s else None,
            freeze_count=self.freezes,
            freeze_duration_s=self.freeze_s,
            freezes_per_min=freeze_rate,
            pause_count=self.pauses,
            pause_duration_s=self.pause_s,
            pli_count=self.requests["pli"],
            fir_count=self.requests["fir"],
            nack_count=self.requests["nack"],
        )


class QualityTracker:
    """One session's quality: fed a getStats report per interval and the video frames' arrivals.

    `new_connection()` when the session replaces its RTCPeerConnection (its counters start over);
    `watch_video(track)` for each received video track; `measure(report, now, since)` at the end
    of each interval. Totals carry on across connections.
    """

    def __init__(self, history: int = QUALITY_HISTORY) -> None:
        self._recent: deque[IntervalQuality] = deque(maxlen=history)
        self._inbound = _Totals("inbound")
        self._outbound = _Totals("outbound")
        self._previous: Mapping[str, Any] | None = None  # the last report of this connection
        self._counters: list[FreezeCounter] = []  # the current connection's video tracks
        self._frames_base = FrameReading()  # the totals of earlier connections' tracks
        self._frames_previous: FrameReading | None = None
        self._video = False  # a video track was ever watched

    @property
    def latest(self) -> IntervalQuality | None:
        return self._recent[-1] if self._recent else None

    def view(self) -> SessionQuality:
        return SessionQuality(tuple(self._recent), self._inbound.view(), self._outbound.view())

    def new_connection(self) -> None:
        """The session's connection was replaced: its statistics start from zero."""
        self._previous = None
        if self._counters:
            self._frames_base = _sum_readings(
                self._frames_base, *(c.reading() for c in self._counters)
            )
            self._counters.clear()

    def watch_video(self, track: MediaStreamTrack) -> None:
        """Count the arrival of each frame `track` yields, for fps and freezes.

        The track's `recv` is wrapped on the instance: whoever reads the track gets the same
        frames, each stamped as it is handed over. Every remote track of the agent is read as
        frames arrive (the meeting's reader queues them for slower consumers), so that is
        when the frame was decoded. The cost is one more coroutine call and a FreezeCounter.add
        (about 1 µs) per frame.
        """
        counter = FreezeCounter()
        self._counters.append(counter)
        self._video = True
        receive: Callable[[], Awaitable[Any]] = track.recv

        async def recv() -> Any:
            frame = await receive()
            counter.add(time.monotonic())
            return frame

        track.recv = recv  # type: ignore[method-assign]

    def measure(self, report: Mapping[str, Any], now: float, since: float) -> IntervalQuality:
        """Close an interval at `report` (a getStats reading taken at `now`, time.monotonic()).

        `since` is when this connection came up: the first interval of a connection runs from
        there (its counters started with it).
        """
        previous = self._previous
        interval_s = None if previous is not None else max(1e-3, now - since)
        frames = None
        if self._video:
            current = _sum_readings(self._frames_base, *(c.reading() for c in self._counters))
            current = FrameReading(
                now,
                current.frames,
                current.freeze_count,
                current.freeze_duration_s,
                current.pause_count,
                current.pause_duration_s,
            )
            before = self._frames_previous or FrameReading(at=since)
            frames = (before, current)
            self._frames_previous = current
        inbound = quality_between(previous, report, "inbound", frames=frames, interval_s=interval_s)
        outbound = quality_between(previous, report, "outbound", interval_s=interval_s)
        self._previous = report
        interval = IntervalQuality(now, inbound, outbound)
        self._recent.append(interval)
        self._inbound.add(inbound)
        self._outbound.add(outbound)
        return interval


def _plus(total: N | None, value: N | None) -> N | None:
    """A sum of values that may be unknown (None): None until one is known."""
    if value is None:
        return total
    return value if total is None else total + value


def _sum_readings(*readings: FrameReading) -> FrameReading:
    return FrameReading(
        at=max(r.at for r in readings),
        frames=sum(r.frames for r in readings),
        freeze_count=sum(r.freeze_count for r in readings),
        freeze_duration_s=sum(r.freeze_duration_s for r in readings),
        pause_count=sum(r.pause_count for r in readings),
        pause_duration_s=sum(r.pause_duration_s for r in readings),
    )


def describe(quality: SessionQuality) -> str:
    """One readable line of a connection's whole-call quality, for exit summaries."""
    inbound, outbound = quality.inbound_total, quality.outbound_total
    if not inbound.intervals:
        return "no quality measured (never connected)"
    parts = [
        f"over {inbound.duration_s:.0f} s",
        "in " + _direction(inbound),
        "out " + _direction(outbound),
    ]
    rtt = outbound.rtt_ms if outbound.rtt_ms is not None else inbound.rtt_ms
    parts.append("RTT " + (f"{rtt:.0f} ms" if rtt is not None else "unknown"))
    return "; ".join(parts)


def _direction(t: QualityTotals) -> str:
    figures = []
    if t.audio_mos_mean is not None:
        assert t.audio_mos_min is not None
        figures.append(f"MOS {t.audio_mos_mean:.2f} (min {t.audio_mos_min:.2f})")
    else:
        figures.append("MOS -")
    figures.append("loss " + (f"{t.loss_pct:.1f} %" if t.loss_pct is not None else "-"))
    if t.audio_jitter_ms is not None:
        figures.append(f"jitter {t.audio_jitter_ms:.0f} ms")
    if t.fps is not None and t.freezes_per_min is not None:
        freezes = f"{t.freeze_count} freeze" + ("" if t.freeze_count == 1 else "s")
        figures.append(f"video {t.fps:.0f} fps, {freezes} ({t.freezes_per_min:.1f}/min)")
    if t.bitrate_kbps is not None:
        figures.append(f"{t.bitrate_kbps:.0f} kbit/s")
    return ", ".join(figures)
