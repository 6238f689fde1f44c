"""One-way mouth-to-ear audio latency per connection, from marks the sender puts in its audio.

The sender replaces 20 ms of its audio with a chirp (a 1.5 to 4.5 kHz sweep) at times every
receiver knows without being told: mark k leaves at `k * period_s + offset_s` on the Unix clock
(`time.time()`), k counted from the epoch, even marks sweeping up and odd ones down. The receiver
finds each chirp in the decoded audio by its normalised correlation with the chirp and dates the
chirp's first sample; latency = that date - the schedule's time of the mark.

- "Mouth" is the moment the frame holding the mark is handed to aiortc to send (a live track's
  `recv()` returning it; for pre-encoded audio, the `PacketPump` sending its packet), plus the
  mark's offset in that frame: the mark is put where it leaves exactly on the schedule.
- "Ear" is the moment the decoded frame holding the chirp's first sample comes out of the
  receiving track, plus that sample's offset in the frame. So the figure counts the encoder (and
  Opus's 6.5 ms look-ahead), the network, the jitter buffer, the decoder and any queue in between.
- Clocks: on one machine both ends read the same clock. Across machines the schedule is read from
  each machine's own clock, so their offset adds to every figure: synchronise them (NTP or chrony,
  docs/latency.md says how to check the bound) and record `clock_source()` with the figures.

Robust rather than complete: a mark whose chirp did not arrive whole (lost packets, a gap in the
decoded stream's timestamps) is missed, never mis-dated. A match must correlate at `threshold` or
more with the expected sweep (the other direction of sweep, ordinary tones and speech stay far
below), be loud enough, and fall within `max_latency_s` after its mark's time; anything else is
not a measurement. Up and down sweeps alternate, so a mark later than a period is not taken for
the next one.

Cheap: a frame with no mark due is passed on untouched by the sender; the receiver keeps every
fourth sample of each frame (12 kHz: the sweep fits under its Nyquist frequency) and looks at them
500 ms at a time, correlating (one FFT) only while a mark can be arriving (`max_latency_s` of each
`period_s`). `bench/mouth_to_ear_oneway.py` measures the receiver's CPU per stream.

The API, for a sender:

    marked = MarkedAudioTrack(source)          # live PCM: marks any s16/float track (or silence)
    audio = MarkedPreencodedAudio("tone")      # or pre-encoded: audio.track() per connection

and for a receiver, per received audio track:

    detector = MarkDetector()
    tasks.create_task(detector.consume(track))     # or detector.feed(frame) for each frame read
    summary = detector.summary()   # LatencySummary: marks heard and missed, p50/p95/min/max (ms)
    detector.samples               # the last `keep` LatencySample (mark, sent_at, heard_at, ...)
    total.merge(detector.histogram)    # LatencyHistogram: 1 ms bins, mergeable over connections

A detector's figures lag the audio by up to 500 ms (a batch); `consume` looks at the last one when
the track ends, `flush()` does it on demand. The receiving connection must decode its audio: a
counting receiver (`agent.peer.receiving.count_only`, the load tester's `preencoded` media) gives
a detector no frame. Sender and receiver must use the same `MarkSchedule`.

`JitterBufferWatch(receiver)` measures an aiortc receiver's own jitter-buffer delay, the floor of
the figure on a perfect link.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import subprocess
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.frame import Frame
from av.packet import Packet

from agent.media.packet_pump import PacketPump
from agent.media.pcm import SAMPLE_RATE, SAMPLES_PER_FRAME, tone_pcm
from agent.media.preencoded import (
    FrameClock,
    PreencodedAudio,
    encode_opus_loop,
)
from agent.patches.observe import watch_jitter_buffer

log = logging.getLogger(__name__)

MARK_S = 0.020  # a mark's length
CHIRP_LOW_HZ = 1500.0
CHIRP_HIGH_HZ = 4500.0  # under 6 kHz: intact at the detector's 12 kHz, and through Opus
MARK_AMPLITUDE = 0.5  # of full scale
TAPER_S = 0.002  # raised-cosine edges: no click spreading energy outside the sweep's band
DETECT_RATE = 12_000  # the detector decimates to this rate (where the rate allows)
BATCH_FRAMES = 25  # the detector looks at 500 ms at a time (numpy's cost is mostly per call)
THRESHOLD = 0.8  # the normalised correlation a match needs (whole chirps through Opus: ~0.89+)
MIN_LEVEL = 0.3  # and its RMS at least this share of the mark's
MAX_PLACEMENT_ERROR_S = 0.001  # a live frame handed over later than its mark: the mark is skipped
PTS_TOLERANCE = 2  # samples: a frame whose pts is further from the expected one starts afresh
FRAME_S = SAMPLES_PER_FRAME / SAMPLE_RATE


@dataclass(frozen=True)
class MarkSchedule:
    """When marks leave: mark k at `k * period_s + offset_s` (Unix time, k from the epoch).

    A receiver looks for mark k only within `max_latency_s` after it left. `period_s` is a whole
    number of 20 ms frames (the pre-encoded loop is two periods long).
    """

    period_s: float = 2.0
    offset_s: float = 0.25
    max_latency_s: float = 1.0

    def __post_init__(self) -> None:
        frames = self.period_s / FRAME_S
        if not (self.period_s > 0 and abs(frames - round(frames)) < 1e-6):
            raise ValueError(f"mark period must be a whole number of 20 ms, not {self.period_s}")
        if not 0 <= self.offset_s < self.period_s:
            raise ValueError(f"mark offset must be within the period, not {self.offset_s}")
        if not 0 < self.max_latency_s <= self.period_s - 2 * MARK_S:
            raise ValueError(
                f"max latency must be above 0 and under the period less two marks "
                f"({self.period_s - 2 * MARK_S:.3f} s), not {self.max_latency_s}"
            )

    def time_of(self, mark: int) -> float:
        return mark * self.period_s + self.offset_s

    def last_before(self, at: float) -> int:
        """The last mark due at or before `at`."""
        return math.floor((at - self.offset_s) / self.period_s)


def chirp(rate: int, up: bool) -> np.ndarray[Any, np.dtype[np.float64]]:
    """A mark at `rate`: a linear sweep over MARK_S, unit amplitude, raised-cosine edges."""
    n = round(MARK_S * rate)
    t = np.arange(n) / rate
    lo, hi = (CHIRP_LOW_HZ, CHIRP_HIGH_HZ) if up else (CHIRP_HIGH_HZ, CHIRP_LOW_HZ)
    x = np.sin(2 * np.pi * (lo * t + (hi - lo) / (2 * MARK_S) * t**2))
    edge = max(1, round(TAPER_S * rate))
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(edge) / edge)
    x[:edge] *= ramp
    x[-edge:] *= ramp[::-1]
    return x


def clock_source() -> str:
    """What keeps this machine's clock, to record with figures taken across machines: the
    kernel's clocksource and, where chrony runs, its estimate of the offset; one line."""
    parts = []
    with contextlib.suppress(OSError):
        with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
            parts.append(f"clocksource {f.read().strip()}")
    chronyc = shutil.which("chronyc")
    if chronyc is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [chronyc, "-c", "tracking"], capture_output=True, text=True, timeout=2
            ).stdout.split(",")
            if len(out) > 4:
                # -c tracking: ..., reference name, stratum, ref time, system time offset (s)
                parts.append(f"chrony ref {out[1]} stratum {out[2]} offset {float(out[4]):+.6f} s")
    return "; ".join(parts) or "unknown"


# --- senders ----------------------------------------------------------------------------------


class MarkedAudioTrack(MediaStreamTrack):
    """`source`'s audio (silence if None), a chirp in place of its audio at each mark's time.

    A frame holding no mark passes untouched; one that does is copied (a relay's frames are
    shared) with the chirp written over every channel, at the sample that leaves at the mark's
    time given when `recv()` hands the frame over. A mark whose frame comes later than
    MAX_PLACEMENT_ERROR_S after it is skipped (`skipped`), not sent late. Frames are s16, s16p,
    flt or fltp (what aiortc sends and sources give) at 12 kHz or more; others pass unmarked.
    """

    kind = "audio"

    def __init__(
        self,
        source: MediaStreamTrack | None = None,
        schedule: MarkSchedule | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        if source is None:
            from agent.media.sources import silence_track  # sources imports preencoded, as we do

            source = silence_track()
        self.source = source
        self.schedule = schedule or MarkSchedule()
        self._clock = clock
        self._next: int | None = None  # the next mark to place
        self._rest: np.ndarray[Any, np.dtype[np.float64]] | None = None  # a chirp's remainder
        self.sent: deque[tuple[int, float]] = deque(maxlen=64)  # (mark, when it left)
        self.skipped = 0
        self.unmarkable = 0  # frames at a rate too low for a mark

    async def recv(self) -> Frame | Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self.source.recv()
        if not isinstance(frame, av.AudioFrame):
            return frame
        return self._mark(frame, self._clock())

    def stop(self) -> None:
        super().stop()
        self.source.stop()

    def _mark(self, frame: av.AudioFrame, now: float) -> av.AudioFrame:
        rate = frame.sample_rate or SAMPLE_RATE
        if rate < DETECT_RATE:  # no room for the sweep (aiortc's own AudioStreamTrack: 8 kHz)
            if not self.unmarkable:
                log.warning("audio at %d Hz cannot carry latency marks: sent unmarked", rate)
            self.unmarkable += 1
            return frame
        n = frame.samples
        schedule = self.schedule
        if self._next is None:
            self._next = schedule.last_before(now) + 1
        writes: list[tuple[int, np.ndarray[Any, np.dtype[np.float64]]]] = []
        if self._rest is not None:
            writes.append((0, self._rest[:n]))
            self._rest = self._rest[n:] if len(self._rest) > n else None
        while (due := schedule.time_of(self._next)) < now + n / rate:
            mark, self._next = self._next, self._next + 1
            if due < now - MAX_PLACEMENT_ERROR_S:
                self.skipped += 1
                continue
            at = max(0, round((due - now) * rate))
            wave = MARK_AMPLITUDE * chirp(rate, up=mark % 2 == 0)
            writes.append((at, wave[: n - at]))
            if len(wave) > n - at:
                self._rest = wave[n - at :]
            self.sent.append((mark, now + at / rate))
        if not writes:
            return frame
        return _written(frame, writes)


def _written(
    frame: av.AudioFrame, writes: list[tuple[int, np.ndarray[Any, np.dtype[np.float64]]]]
) -> av.AudioFrame:
    """A copy of `frame` with each (position, samples) written over all its channels."""
    fmt, channels = frame.format.name, len(frame.layout.channels)
    if fmt not in ("s16", "s16p", "flt", "fltp"):
        return frame
    data = frame.to_ndarray().copy()
    # as (samples, channels) or (channels, samples): a view of `data` either way
    view = data.reshape(-1, channels) if not frame.format.is_planar else data.T
    scale = 32767.0 if fmt.startswith("s16") else 1.0
    for at, wave in writes:
        view[at : at + len(wave), :] = (wave * scale).astype(data.dtype)[:, None]
    out = av.AudioFrame.from_ndarray(data, format=fmt, layout=frame.layout.name)
    out.sample_rate = frame.sample_rate
    out.pts = frame.pts
    out.time_base = frame.time_base
    return out


class MarkedPreencodedAudio(PreencodedAudio):
    """`tone` or `silence` with the schedule's marks, encoded once (a loop of two periods, its
    start on a multiple of two periods of Unix time); `track()` per connection, as
    PreencodedAudio. Every track plays the loop's frame for the current frame time, so a mark
    leaves at its time whenever the connection started."""

    def __init__(self, spec: str = "silence", schedule: MarkSchedule | None = None) -> None:
        self.schedule = schedule or MarkSchedule()
        cycle_s = 2 * self.schedule.period_s
        samples = round(cycle_s * SAMPLE_RATE)
        if spec == "tone":
            pcm = np.tile(tone_pcm(), math.ceil(samples / SAMPLE_RATE))[:samples]
        elif spec == "silence":
            pcm = np.zeros(samples, dtype=np.int16)
        else:
            raise ValueError(f"pre-encoded audio is tone or silence, not {spec!r}")
        pcm = pcm.copy()
        for k in (0, 1):  # the even (up) mark, then the odd (down) one
            at = round((k * self.schedule.period_s + self.schedule.offset_s) * SAMPLE_RATE)
            wave = (MARK_AMPLITUDE * 32767 * chirp(SAMPLE_RATE, up=k == 0)).astype(np.int16)
            pcm[at : at + len(wave)] = wave[: samples - at]
        self.spec = spec
        self.payloads = encode_opus_loop(pcm)
        self.clock = FrameClock(FRAME_S, aligned_cycle_s=cycle_s)
        self.pump = PacketPump(self.payloads, FRAME_S, SAMPLES_PER_FRAME, aligned_cycle_s=cycle_s)
        self._tracks = weakref.WeakSet()


# --- receivers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencySample:
    """One mark heard: `sent_at` its schedule time, `heard_at` when its first sample came out of
    the receiving track (both Unix time), `score` its normalised correlation with the chirp."""

    mark: int
    sent_at: float
    heard_at: float
    score: float

    @property
    def latency_ms(self) -> float:
        return 1000 * (self.heard_at - self.sent_at)


class LatencyHistogram:
    """Latencies in 1 ms bins from 0 to `max_ms`: constant memory, percentiles to the
    millisecond, and mergeable (one per connection, summed over a run)."""

    def __init__(self, max_ms: int = 2000) -> None:
        self.bins = [0] * (max_ms + 1)
        self.count = 0
        self.total_ms = 0.0
        self.min_ms = math.inf
        self.max_ms = -math.inf

    def add(self, ms: float) -> None:
        self.bins[min(len(self.bins) - 1, max(0, int(ms)))] += 1
        self.count += 1
        self.total_ms += ms
        self.min_ms = min(self.min_ms, ms)
        self.max_ms = max(self.max_ms, ms)

    def merge(self, other: LatencyHistogram) -> None:
        if len(other.bins) > len(self.bins):
            self.bins.extend([0] * (len(other.bins) - len(self.bins)))
        for i, n in enumerate(other.bins):
            self.bins[i] += n
        self.count += other.count
        self.total_ms += other.total_ms
        self.min_ms = min(self.min_ms, other.min_ms)
        self.max_ms = max(self.max_ms, other.max_ms)

    def percentile(self, q: float) -> float | None:
        """The `q` quantile (0..1), as the middle of its 1 ms bin, clamped to min and max."""
        if not self.count:
            return None
        rank = q * (self.count - 1)
        seen = 0
        for i, n in enumerate(self.bins):
            seen += n
            if seen > rank:
                return min(self.max_ms, max(self.min_ms, i + 0.5))
        return self.max_ms


@dataclass(frozen=True)
class LatencySummary:
    """A connection's mouth-to-ear figures: marks `heard`, marks `missed` (due while the track
    played, not found whole within max latency), and the latencies' p50/p95/min/max/mean (ms)."""

    heard: int
    missed: int
    p50_ms: float | None
    p95_ms: float | None
    min_ms: float | None
    max_ms: float | None
    mean_ms: float | None


@dataclass
class _Template:
    """The two sweeps as the detector sees them: each the decimated analytic chirp (the chirp
    plus j times its Hilbert transform), so that the correlation's envelope scores a match the
    same whatever fraction of a detector sample it sits off the detector's grid."""

    factor: int  # input samples per detector sample
    rate: int  # the detector's rate
    waves: tuple[np.ndarray[Any, np.dtype[np.complex128]], np.ndarray[Any, np.dtype[np.complex128]]]
    norm: float  # of each chirp (its real part)
    level: float  # the least RMS a match must have
    length: int = field(init=False)
    _spectra: dict[tuple[int, bool], np.ndarray[Any, np.dtype[np.complex128]]] = field(
        init=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        self.length = len(self.waves[0])

    def envelope(self, x: np.ndarray[Any, np.dtype[np.float64]], up: bool) -> Any:
        """|sum_n x[k + n] * wave[n]| for every k where the wave fits in x, through the FFT."""
        lags = len(x) - self.length + 1
        size = 1 << (len(x) - 1).bit_length()  # no wrap-around reaches a whole window
        spectrum = self._spectra.get((size, up))
        if spectrum is None:
            # correlating with conj(wave) gives the conjugate, the same envelope; and conj(wave)'s
            # spectrum is (next to) nothing at negative frequencies: x's real FFT is all it meets
            wave = self.waves[0 if up else 1]
            full = np.conj(np.fft.fft(wave, size))
            spectrum = self._spectra[(size, up)] = full[: size // 2 + 1]
        product = np.zeros(size, dtype=np.complex128)
        product[: size // 2 + 1] = np.fft.rfft(x, size) * spectrum
        return np.abs(np.fft.ifft(product)[:lags])


_DTYPES: dict[str, np.dtype[Any]] = {
    "s16": np.dtype(np.int16),
    "s16p": np.dtype(np.int16),
    "flt": np.dtype(np.float32),
    "fltp": np.dtype(np.float32),
}


def _analytic(x: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.complex128]]:
    """x + j times its Hilbert transform, through the FFT (zero-padded: x fades in and out, so
    there is no wrap-around to speak of)."""
    n = 4 * len(x)
    gain = np.zeros(n)
    gain[0] = 1.0
    gain[1 : n // 2] = 2.0
    gain[n // 2] = 1.0
    return np.fft.ifft(np.fft.fft(x, n) * gain)[: len(x)]


def _template(rate: int) -> _Template:
    if rate < DETECT_RATE:
        raise ValueError(f"marks need audio at {DETECT_RATE} Hz or more, not {rate} Hz")
    factor = rate // DETECT_RATE if rate % DETECT_RATE == 0 else 1
    waves = []
    for rising in (True, False):
        wave = _analytic(MARK_AMPLITUDE * chirp(rate, rising))
        n = len(wave)
        waves.append(wave[:n:factor])  # decimated as the detector decimates
    up, down = waves
    norm = float(np.linalg.norm(up.real))
    level = MIN_LEVEL * norm / math.sqrt(len(up))
    return _Template(factor, rate // factor, (up, down), norm, level)


class MarkDetector:
    """Finds the schedule's marks in one received audio track and dates them.

    Feed it every decoded frame, in order, as it comes out of the track (`feed`, or `consume`
    reads a track to its end); a frame is dated by when it is fed unless `at` is given. Keeps the
    last `keep` samples, a LatencyHistogram of all, and the counts; memory is bounded.
    """

    def __init__(
        self,
        schedule: MarkSchedule | None = None,
        *,
        threshold: float = THRESHOLD,
        keep: int = 64,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.schedule = schedule or MarkSchedule()
        self.threshold = threshold
        self._clock = clock
        self.samples: deque[LatencySample] = deque(maxlen=keep)
        self.histogram = LatencyHistogram(math.ceil(1000 * self.schedule.max_latency_s))
        self.heard = 0
        self.missed = 0
        self.frames = 0
        self.batches = 0  # batches of frames looked at
        self.searched = 0  # of which correlated (the others could hold no mark)
        self._template: _Template | None = None
        self._x = np.zeros(0)  # detector samples not yet past every window (the buffer)
        self._x0 = 0  # detector index of self._x[0]
        self._next_lag = 0  # the first window start not yet scored
        self._carry: np.ndarray[Any, Any] = np.zeros(0)  # input samples past the last decimated
        self._pending: list[np.ndarray[Any, Any]] = []  # frames fed, not yet looked at
        self._pending_at: list[tuple[int, float]] = []
        self._last_at = 0.0
        # (first input index, fed at) of the frames in the buffer
        self._frames: deque[tuple[int, float]] = deque(maxlen=BATCH_FRAMES + 8)
        self._n_in = 0  # input samples fed, counted from the last reset's base
        self._pts: int | None = None  # the pts the next frame should have
        self._best: tuple[int, float, float] | None = None  # (mark, score, heard_at) pending
        self._best_lag = 0
        self._found: deque[int] = deque(maxlen=4)  # the last marks heard
        self._watching: int | None = None  # the first mark whose whole window is watched

    def __call__(self, frame: av.AudioFrame) -> None:
        self.feed(frame)

    async def consume(self, track: MediaStreamTrack) -> None:
        """Read `track` to its end, feeding every frame."""
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if isinstance(frame, av.AudioFrame):
                    self.feed(frame)
        self.flush()

    def feed(self, frame: av.AudioFrame, at: float | None = None) -> list[LatencySample]:
        """One decoded frame (s16, s16p, flt or fltp); the marks completed by the batch it
        completes, if it does."""
        at = self._clock() if at is None else at
        fmt = frame.format
        dtype = _DTYPES.get(fmt.name)
        if dtype is None:
            raise ValueError(f"marks: audio frames are s16, s16p, flt or fltp, not {fmt.name}")
        step = 1 if fmt.is_planar else frame.layout.nb_channels
        # the first channel, as a view of the frame's own memory (nothing copied yet)
        pcm = np.frombuffer(memoryview(frame.planes[0]), dtype)[: frame.samples * step : step]
        rate = frame.sample_rate or SAMPLE_RATE
        pts, base = frame.pts, frame.time_base
        if pts is not None and base is not None and (base.numerator, base.denominator) != (1, rate):
            pts = round(pts * base * rate)  # in samples
        return self.feed_pcm(pcm, rate, at, pts)

    def feed_pcm(
        self, pcm: np.ndarray[Any, Any], rate: int, at: float, pts: int | None = None
    ) -> list[LatencySample]:
        """Mono samples of one frame (int16, or float in -1..1) that came out of the track at
        `at`; `pts` in samples, or None where the frames carry none (then no gap can be seen).
        Frames are looked at in batches of BATCH_FRAMES: the marks completed, if any."""
        self.frames += 1
        done: list[LatencySample] = []
        tpl = self._template
        if tpl is None or tpl.rate * tpl.factor != rate:
            done += self.flush()
            self._template = _template(rate)
            self._reset()
        if pts is not None:
            if self._pts is not None and abs(pts - self._pts) > PTS_TOLERANCE:
                # lost or reordered frames: never correlate across the gap
                done += self.flush()
                self._reset()
            self._pts = pts + len(pcm)
        if self._watching is None:
            self._watching = self.schedule.last_before(at) + 1
        if pcm.dtype.kind == "f":
            pcm = pcm * 32767.0
        self._pending.append(pcm)
        self._pending_at.append((self._n_in, at))
        self._n_in += len(pcm)
        self._last_at = at
        if len(self._pending) >= BATCH_FRAMES:
            done += self.flush()
        return done

    def flush(self) -> list[LatencySample]:
        """Look at the frames fed so far (a batch is looked at once it is whole)."""
        tpl = self._template
        if not self._pending or tpl is None:
            return []
        self.batches += 1
        raw = np.concatenate((self._carry, *self._pending))
        whole = len(raw) // tpl.factor * tpl.factor
        self._carry = raw[whole:]
        # decimated by taking every factor-th sample: the sweep is under the detector's Nyquist
        # frequency; what is above it folds over, which a match (the chirp in place of the
        # audio) barely has
        self._x = np.concatenate((self._x, raw[: whole : tpl.factor]))
        self._frames.extend(self._pending_at)
        self._pending.clear()
        self._pending_at.clear()
        done = self._search(tpl)
        done += self._close_missed(self._last_at)
        # keep what windows not yet scored still need
        drop = min(self._next_lag - self._x0, len(self._x))
        if drop > 0:
            self._x = self._x[drop:]
            self._x0 += drop
        return done

    def _reset(self) -> None:
        """Start afresh after a gap (a pending match stands: its windows were whole): the
        detector's sample count jumps, so no window spans the gap."""
        base = self._x0 + len(self._x) + 1
        self._x = np.zeros(0)
        self._carry = np.zeros(0)
        self._x0 = self._next_lag = base
        self._frames.clear()
        self._n_in = base * (self._template.factor if self._template is not None else 1)

    def _heard_at(self, tpl: _Template, lag: float) -> float:
        """When the input sample at detector index `lag` came out of the track."""
        sample = lag * tpl.factor
        start, at = self._frames[0]
        for first, fed in self._frames:
            if first <= sample:
                start, at = first, fed
        return at + (sample - start) / (tpl.rate * tpl.factor)

    def _search(self, tpl: _Template) -> list[LatencySample]:
        lags = len(self._x) - tpl.length + 1 - (self._next_lag - self._x0)
        if lags <= 0 or not self._frames:
            return []
        first = self._next_lag
        self._next_lag += lags
        # the marks that can be heard at these lags: due within max latency before them
        lo = self._heard_at(tpl, first)
        hi = self._heard_at(tpl, first + lags - 1)
        schedule = self.schedule
        marks = range(
            schedule.last_before(lo - schedule.max_latency_s - MARK_S) + 1,
            schedule.last_before(hi) + 1,
        )
        done: list[LatencySample] = []
        if marks:
            self.searched += 1
        for mark in marks:
            if mark in self._found:
                continue
            start = first - self._x0
            x = self._x[start : start + lags + tpl.length - 1]
            dots = tpl.envelope(x, up=mark % 2 == 0)
            # a match needs dots >= threshold * norm * its RMS * sqrt(length), and its RMS at
            # least the level: most batches hold none, and end here
            if dots.max() < self.threshold * tpl.norm * tpl.level * math.sqrt(tpl.length):
                continue
            squares = np.concatenate(([0.0], np.cumsum(x * x)))
            energy = squares[tpl.length :] - squares[: -tpl.length]
            rms_ok = energy >= tpl.level**2 * tpl.length
            scores = np.where(rms_ok, dots / (np.sqrt(np.maximum(energy, 1e-9)) * tpl.norm), 0.0)
            for i in np.flatnonzero(scores >= self.threshold):
                heard = self._heard_at(tpl, first + int(i))
                sent = schedule.time_of(mark)
                if not 0 < heard - sent <= schedule.max_latency_s:
                    continue
                score = float(scores[i])
                if self._best is not None and self._best[0] != mark:
                    done.append(self._settle())  # the previous mark's match is whole
                if self._best is None or self._best[0] != mark or score > self._best[1]:
                    # the peak to a fraction of a detector sample (parabola through 3 scores)
                    frac = 0.0
                    if 0 < i < len(scores) - 1:
                        a, b, c = scores[i - 1], scores[i], scores[i + 1]
                        if a - 2 * b + c < 0:
                            frac = float(np.clip(0.5 * (a - c) / (a - 2 * b + c), -0.5, 0.5))
                    heard = self._heard_at(tpl, first + int(i) + frac)
                    self._best, self._best_lag = (mark, score, heard), first + int(i)
        # a match is final once a whole mark's length has been scored past its peak
        if self._best is not None and self._next_lag - self._best_lag > tpl.length:
            done.append(self._settle())
        return done

    def _settle(self) -> LatencySample:
        assert self._best is not None
        mark, score, heard = self._best
        self._best = None
        self._found.append(mark)
        sample = LatencySample(mark, self.schedule.time_of(mark), heard, score)
        self.heard += 1
        self.samples.append(sample)
        self.histogram.add(sample.latency_ms)
        return sample

    def _close_missed(self, now: float) -> list[LatencySample]:
        """Count the marks whose window has passed unheard (watched from their time on)."""
        assert self._watching is not None
        done: list[LatencySample] = []
        schedule = self.schedule
        while schedule.time_of(self._watching) + schedule.max_latency_s + 2 * MARK_S < now:
            mark = self._watching
            self._watching += 1
            if self._best is not None and self._best[0] == mark:
                done.append(self._settle())
            elif mark not in self._found:
                self.missed += 1
        return done

    def summary(self) -> LatencySummary:
        h = self.histogram
        return LatencySummary(
            heard=self.heard,
            missed=self.missed,
            p50_ms=h.percentile(0.5),
            p95_ms=h.percentile(0.95),
            min_ms=h.min_ms if h.count else None,
            max_ms=h.max_ms if h.count else None,
            mean_ms=h.total_ms / h.count if h.count else None,
        )


class JitterBufferWatch:
    """An aiortc receiver's own jitter-buffer delay, per frame: from the arrival of the frame's
    first packet at the buffer to the buffer's release of the frame (Unix time, ms), in a
    LatencyHistogram (agent.patches.observe reaches into the receiver): a measurement aid for
    tests and benchmarks; `installed` is False where aiortc's internals moved."""

    def __init__(self, receiver: Any, *, clock: Callable[[], float] = time.time) -> None:
        self.histogram = LatencyHistogram()
        self.recent: deque[tuple[float, float]] = deque(maxlen=512)  # (released at, delay ms)
        self.installed = watch_jitter_buffer(receiver, self._released, clock=clock)

    def _released(self, at: float, delay_s: float) -> None:
        self.histogram.add(1000 * delay_s)
        self.recent.append((at, 1000 * delay_s))
