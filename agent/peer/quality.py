"""Quality figures of a connection: audio MOS, video freezes, and what each direction got.

Pure computation, standard library only, no I/O: later layers (getStats readers, the load report,
metrics, exit summaries) feed it numbers and timestamps. Three parts:

- The ITU-T G.107 E-model (06/2015): `emodel_r`, `emodel_terms`, `mos_from_r` and `audio_mos`,
  which turns network delay, jitter and loss into an estimated MOS for a voice stream.
- `FreezeCounter`: freezes, pauses and frame rate of one video stream from the times its frames
  arrive, as libwebrtc counts `freezeCount` and `totalFreezesDuration`. Constant memory.
- `QualitySnapshot` and `quality_between`: one direction's figures over the interval between two
  getStats readings of an aiortc RTCPeerConnection.

docs/quality.md says what each figure means and where each constant comes from.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

# --- The E-model (ITU-T G.107) ---------------------------------------------------------------

# Packet-loss robustness factors from ITU-T G.113 Appendix I (random loss): G.711 without
# packet-loss concealment (a lost packet is heard as silence), and G.711 with its Appendix I one.
G711_BPL = 4.3
G711_PLC_BPL = 25.1
# Opus is in neither G.113 Appendix I nor G.107, so these are choices, on the E-model's
# narrowband scale (R <= 93.2 with defaults). On that scale G.711 (Ie = 0) is the best a codec can
# rate: the scale has no room for wideband gains (ITU-T G.107.1 extends it for those). Opus at the
# bitrates WebRTC uses (browsers about 32 kbit/s, aiortc 96 kbit/s) is wideband or fullband speech,
# so it is given G.711's Ie = 0: an assumption, not a measured planning value.
OPUS_IE = 0.0
# Opus decoders (libopus, every browser) conceal lost packets, so Opus gets the value of the one
# concealing codec G.113 lists with Ie = 0: G.711 with concealment. A planning value, not measured.
OPUS_BPL = G711_PLC_BPL
# A receiver that conceals nothing. aiortc (1.16) is one: it decodes the Opus packets that arrive
# and skips lost ones, without libopus's concealment or in-band FEC.
NO_CONCEALMENT_BPL = G711_BPL

# Mouth-to-ear delay that the network does not show: audio_mos adds this to the one-way network
# delay, as does the common "effective latency = latency + 2 x jitter + 10 ms" estimate used by
# VoIP monitors. A lower bound for WebRTC, whose 20 ms frames and jitter buffer add more.
PROCESSING_DELAY_MS = 10.0
# A jitter buffer holds about twice the interarrival jitter (the same common estimate).
JITTER_BUFFER_FACTOR = 2.0


@dataclass(frozen=True, slots=True)
class EModelParams:
    """The E-model's inputs other than delay, loss and codec, at G.107's default values.

    Loudness ratings in dB, noise levels in dBm0p/dBmp/dB(A) as G.107 defines them. The D-value of
    the receive side (Dr) enters only through LSTR = STMR + Dr, so LSTR is given directly.
    """

    slr: float = 8.0  # send loudness rating
    rlr: float = 2.0  # receive loudness rating
    stmr: float = 15.0  # sidetone masking rating
    lstr: float = 18.0  # listener sidetone rating
    ds: float = 3.0  # D-value of the telephone, send side
    telr: float = 65.0  # talker echo loudness rating
    wepl: float = 110.0  # weighted echo path loss
    qdu: float = 1.0  # quantizing distortion units
    nc: float = -70.0  # circuit noise referred to the 0 dBr point, dBm0p
    nfor: float = -64.0  # noise floor at the receive side, dBmp
    ps: float = 35.0  # room noise at the send side, dB(A)
    pr: float = 35.0  # room noise at the receive side, dB(A)
    a: float = 0.0  # advantage factor
    mt: float = 100.0  # delay sensitivity (G.107 06/2015): the delay below which Idd is 0, ms
    st: float = 1.0  # delay sensitivity: steepness of Idd above mt


G107_DEFAULTS = EModelParams()


@dataclass(frozen=True, slots=True)
class EModelTerms:
    """The terms of R = Ro - Is - Id - Ie,eff + A (G.107 §7), and R itself."""

    r: float
    ro: float  # basic signal-to-noise ratio
    is_: float  # simultaneous impairments (loudness, sidetone, quantizing)
    id: float  # delay impairments: idte + idle + idd
    idte: float  # talker echo
    idle: float  # listener echo
    idd: float  # absolute delay (too long to talk naturally)
    ie_eff: float  # equipment impairment under packet loss
    a: float  # advantage factor


def ie_eff(ie: float, loss_pct: float, bpl: float, burst_r: float = 1.0) -> float:
    """Effective equipment impairment under packet loss (G.107 §7.4, formula 7-29).

    Ie,eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl), with Ppl the loss in percent.
    """
    _check_loss(loss_pct, burst_r)
    return ie + (95.0 - ie) * loss_pct / (loss_pct / burst_r + bpl)


def burst_r_for(loss_pct: float, mean_burst_packets: float) -> float:
    """G.107's burst ratio for losses in bursts of `mean_burst_packets` on average (Gilbert model).

    BurstR is the mean length of a run of losses over the mean that random loss would give,
    1 / (1 - Ppl/100); for a two-state Markov (Gilbert) loss model that is
    mean burst x (1 - Ppl/100). Random loss (bursts of 1 / (1 - Ppl/100)) gives 1.
    """
    if not 0.0 <= loss_pct < 100.0 or mean_burst_packets < 1.0:
        raise ValueError("need 0 <= loss_pct < 100 and mean_burst_packets >= 1")
    return max(1.0, mean_burst_packets * (1.0 - loss_pct / 100.0))


def emodel_terms(
    delay_ms: float = 0.0,
    loss_pct: float = 0.0,
    *,
    burst_r: float = 1.0,
    ie: float = 0.0,
    bpl: float = G711_BPL,
    echo_delay_ms: float | None = None,
    round_trip_ms: float | None = None,
    params: EModelParams = G107_DEFAULTS,
) -> EModelTerms:
    """The E-model's terms for a one-way mouth-to-ear delay and a packet loss (see `emodel_r`)."""
    if delay_ms < 0.0:
        raise ValueError(f"delay_ms must be >= 0, not {delay_ms}")
    _check_loss(loss_pct, burst_r)
    p = params
    ta = delay_ms  # absolute one-way delay
    t = ta if echo_delay_ms is None else echo_delay_ms  # mean one-way delay of the echo path
    tr = 2.0 * ta if round_trip_ms is None else round_trip_ms  # round trip of a 4-wire loop

    # §7.2 basic signal-to-noise ratio
    olr = p.slr + p.rlr
    nos = p.ps - p.slr - p.ds - 100.0 + 0.004 * (p.ps - olr - p.ds - 14.0) ** 2
    pre = p.pr + 10.0 * math.log10(1.0 + 10.0 ** ((10.0 - p.lstr) / 10.0))
    nor = p.rlr - 121.0 + pre + 0.008 * (pre - 35.0) ** 2
    nfo = p.nfor + p.rlr
    no = 10.0 * math.log10(
        10.0 ** (p.nc / 10.0) + 10.0 ** (nos / 10.0) + 10.0 ** (nor / 10.0) + 10.0 ** (nfo / 10.0)
    )
    ro = 15.0 - 1.5 * (p.slr + no)

    # §7.3 simultaneous impairments
    xolr = olr + 0.2 * (64.0 + no - p.rlr)
    iolr = 20.0 * ((1.0 + (xolr / 8.0) ** 8) ** (1.0 / 8.0) - xolr / 8.0)
    stmro = -10.0 * math.log10(
        10.0 ** (-p.stmr / 10.0) + math.exp(-t / 4.0) * 10.0 ** (-p.telr / 10.0)
    )
    ist = (
        12.0 * (1.0 + ((stmro - 13.0) / 6.0) ** 8) ** (1.0 / 8.0)
        - 28.0 * (1.0 + ((stmro + 1.0) / 19.4) ** 35) ** (1.0 / 35.0)
        - 13.0 * (1.0 + ((stmro - 3.0) / 33.0) ** 13) ** (1.0 / 13.0)
        + 29.0
    )
    q = 37.0 - 15.0 * math.log10(p.qdu)
    g = 1.07 + 0.258 * q + 0.0602 * q**2
    z = 46.0 / 30.0 - g / 40.0
    y = (ro - 100.0) / 15.0 + 46.0 / 8.4 - g / 9.0
    iq = 15.0 * math.log10(1.0 + 10.0**y + 10.0**z)
    is_ = iolr + ist + iq

    # §7.4 delay impairments: talker echo, listener echo, absolute delay
    terv = (
        p.telr
        - 40.0 * math.log10((1.0 + t / 10.0) / (1.0 + t / 150.0))
        + 6.0 * math.exp(-0.3 * t**2)
    )
    if p.stmr < 9.0:  # very low sidetone: echo masked less
        terv += ist / 2.0
    roe = -1.5 * (no - p.rlr)
    re = 80.0 + 2.5 * (terv - 14.0)
    idte = ((roe - re) / 2.0 + math.sqrt((roe - re) ** 2 / 4.0 + 100.0) - 1.0) * (
        1.0 - math.exp(-t)
    )
    if p.stmr > 20.0:  # very high sidetone masking: the sidetone impairment shows as echo
        idte = math.sqrt(idte**2 + ist**2)
    rle = 10.5 * (p.wepl + 7.0) * (tr + 1.0) ** -0.25
    idle = (ro - rle) / 2.0 + math.sqrt((ro - rle) ** 2 / 4.0 + 169.0)
    idd = 0.0
    if ta > p.mt:
        x = math.log10(ta / p.mt) / math.log10(2.0)
        k = 6.0 * p.st
        idd = 25.0 * ((1.0 + x**k) ** (1.0 / k) - 3.0 * (1.0 + (x / 3.0) ** k) ** (1.0 / k) + 2.0)
    id_ = idte + idle + idd

    # §7.5 equipment impairment under packet loss
    ie_e = ie_eff(ie, loss_pct, bpl, burst_r)
    r = ro - is_ - id_ - ie_e + p.a
    return EModelTerms(
        r=r, ro=ro, is_=is_, id=id_, idte=idte, idle=idle, idd=idd, ie_eff=ie_e, a=p.a
    )


def emodel_r(
    delay_ms: float = 0.0,
    loss_pct: float = 0.0,
    *,
    burst_r: float = 1.0,
    ie: float = 0.0,
    bpl: float = G711_BPL,
    echo_delay_ms: float | None = None,
    round_trip_ms: float | None = None,
    params: EModelParams = G107_DEFAULTS,
) -> float:
    """The E-model's transmission rating R (ITU-T G.107 06/2015): 93.2 with every default.

    `delay_ms` is the absolute one-way mouth-to-ear delay Ta; the talker-echo delay T defaults to
    it and the listener-echo round trip Tr to twice it, as for a call whose echo comes back from
    the far end. `loss_pct` is the packet loss Ppl in percent, `burst_r` G.107's burst ratio
    (1 = random loss, see `burst_r_for`), `ie` and `bpl` the codec's equipment impairment and
    packet-loss robustness (defaults: G.711 without concealment; with G.107's default of no loss
    Bpl has no effect).
    """
    return emodel_terms(
        delay_ms,
        loss_pct,
        burst_r=burst_r,
        ie=ie,
        bpl=bpl,
        echo_delay_ms=echo_delay_ms,
        round_trip_ms=round_trip_ms,
        params=params,
    ).r


def mos_from_r(r: float) -> float:
    """Estimated conversational MOS (1 to 4.5) from R, by G.107 Annex B (formula B-4).

    MOS = 1 + 0.035 R + R (R - 60) (100 - R) 7e-6 for 0 < R < 100; 1 below, 4.5 above. The cubic
    dips to 0.99 between R = 0 and 6.5; the result is floored at 1 there, so MOS never falls as R
    rises.
    """
    if r <= 0.0:
        return 1.0
    if r >= 100.0:
        return 4.5
    return max(1.0, 1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6)


def audio_mos(
    delay_ms: float,
    loss_pct: float,
    jitter_ms: float = 0.0,
    *,
    burst_r: float = 1.0,
    ie: float = OPUS_IE,
    bpl: float = OPUS_BPL,
    processing_delay_ms: float = PROCESSING_DELAY_MS,
    params: EModelParams = G107_DEFAULTS,
) -> float:
    """Estimated MOS of an Opus voice stream over a network path.

    `delay_ms` is the one-way network delay (half the RTT when only that is known), `jitter_ms`
    the interarrival jitter (RFC 3550, as RTCP reports it) and `loss_pct` the packets lost in
    percent, counting those a jitter buffer discarded for arriving late when that is known. The
    mouth-to-ear delay is taken as delay + 2 x jitter + `processing_delay_ms` (the jitter buffer
    holds about twice the jitter; 10 ms for coding and playout). With a measured mouth-to-ear
    delay, pass it as `delay_ms` with `jitter_ms=0` and `processing_delay_ms=0`.
    """
    if jitter_ms < 0.0 or processing_delay_ms < 0.0:
        raise ValueError("jitter_ms and processing_delay_ms must be >= 0")
    ta = delay_ms + JITTER_BUFFER_FACTOR * jitter_ms + processing_delay_ms
    return mos_from_r(emodel_r(ta, loss_pct, burst_r=burst_r, ie=ie, bpl=bpl, params=params))


def _check_loss(loss_pct: float, burst_r: float) -> None:
    if not 0.0 <= loss_pct <= 100.0:
        raise ValueError(f"loss_pct must be between 0 and 100, not {loss_pct}")
    if burst_r <= 0.0:
        raise ValueError(f"burst_r must be > 0, not {burst_r}")


# --- Video freezes ----------------------------------------------------------------------------

# libwebrtc's VideoQualityObserver (video/video_quality_observer2.cc), whose counts browsers
# report as freezeCount and totalFreezesDuration.
FREEZE_WINDOW_FRAMES = 30  # kAvgInterframeDelaysWindowSizeFrames: intervals in the average
FREEZE_MIN_SAMPLES = 5  # kMinFrameSamplesToDetectFreeze: intervals needed before a freeze counts
FREEZE_FACTOR = 3.0  # a freeze lasts at least 3 x the average interval ...
FREEZE_MIN_INCREASE_S = 0.150  # ... and at least the average + 150 ms (kMinIncreaseForFreezeMs)
PAUSE_AFTER_S = 5.0  # W3C webrtc-stats pauseCount: no frame for more than 5 s is a pause
MAX_FPS = 240.0  # the frame rate FreezeCounter.fps() measures up to (it bounds its memory)


@dataclass(frozen=True, slots=True)
class FrameReading:
    """A FreezeCounter's totals at one moment (`at`, on the clock its frames were stamped with)."""

    at: float = 0.0
    frames: int = 0
    freeze_count: int = 0
    freeze_duration_s: float = 0.0
    pause_count: int = 0
    pause_duration_s: float = 0.0


class FreezeCounter:
    """Freezes, pauses and frame rate of one video stream, fed the time each frame arrives.

    A freeze is an interval between consecutive frames of at least max(3 x avg, avg + 150 ms),
    where avg is the mean of the last 30 intervals, this one included, once 5 intervals are known:
    libwebrtc's definition of `freezeCount`. Its duration is the whole interval. An interval longer
    than `pause_after_s` (5 s, W3C `pauseCount`) is a pause instead: the sender stopped, or the
    path was down; it is neither a freeze nor part of the average (None: never a pause).

    Feed `add()` monotonic seconds (`time.monotonic()` as each frame is rendered or received). A
    time earlier than the previous frame's counts as the same time. Memory is constant: the last
    30 intervals and at most `max_fps` x `fps_window_s` frame times.
    """

    def __init__(
        self,
        *,
        window_frames: int = FREEZE_WINDOW_FRAMES,
        min_samples: int = FREEZE_MIN_SAMPLES,
        factor: float = FREEZE_FACTOR,
        min_increase_s: float = FREEZE_MIN_INCREASE_S,
        pause_after_s: float | None = PAUSE_AFTER_S,
        fps_window_s: float = 1.0,
        max_fps: float = MAX_FPS,
    ) -> None:
        if window_frames < 1 or min_samples < 1 or fps_window_s <= 0.0 or max_fps <= 0.0:
            raise ValueError("window_frames, min_samples, fps_window_s and max_fps must be > 0")
        self.factor = factor
        self.min_increase_s = min_increase_s
        self.min_samples = min_samples
        self.pause_after_s = pause_after_s
        self.fps_window_s = fps_window_s
        self._intervals: deque[float] = deque(maxlen=window_frames)
        self._recent: deque[float] = deque(maxlen=max(1, math.ceil(max_fps * fps_window_s)))
        self.first_frame_at: float | None = None
        self.last_frame_at: float | None = None
        self.frames = 0
        self.freeze_count = 0
        self.freeze_duration_s = 0.0
        self.pause_count = 0
        self.pause_duration_s = 0.0

    def add(self, t: float) -> bool:
        """Count a frame that arrived at `t` (seconds); True if it ended a freeze."""
        frozen = False
        last = self.last_frame_at
        if last is None:
            self.first_frame_at = t
        else:
            t = max(t, last)
            interval = t - last
            if self.pause_after_s is not None and interval > self.pause_after_s:
                self.pause_count += 1
                self.pause_duration_s += interval
            else:
                self._intervals.append(interval)
                if len(self._intervals) >= self.min_samples:
                    avg = sum(self._intervals) / len(self._intervals)
                    frozen = interval >= max(self.factor * avg, avg + self.min_increase_s)
                if frozen:
                    self.freeze_count += 1
                    self.freeze_duration_s += interval
        self.last_frame_at = t
        self.frames += 1
        self._recent.append(t)
        return frozen

    def fps(self, now: float | None = None) -> float:
        """Frames a second over the `fps_window_s` before `now` (default: the last frame's time)."""
        end = self.last_frame_at if now is None else now
        if end is None:
            return 0.0
        start = end - self.fps_window_s
        return sum(1 for t in self._recent if start < t <= end) / self.fps_window_s

    def reading(self, now: float | None = None) -> FrameReading:
        """The totals so far, stamped `now` (default: the last frame's time)."""
        at = now if now is not None else (self.last_frame_at or 0.0)
        return FrameReading(
            at=at,
            frames=self.frames,
            freeze_count=self.freeze_count,
            freeze_duration_s=self.freeze_duration_s,
            pause_count=self.pause_count,
            pause_duration_s=self.pause_duration_s,
        )


# --- One direction's figures from two getStats readings -------------------------------------

Direction = Literal["inbound", "outbound"]
# RTP clock rates by kind, to turn RTCP jitter (in RTP timestamp units) into time: Opus 48 kHz,
# video 90 kHz (what the agent negotiates; PCMU/PCMA would be 8 kHz).
DEFAULT_CLOCK_RATES: Mapping[str, int] = {"audio": 48_000, "video": 90_000}


@dataclass(frozen=True, slots=True)
class QualitySnapshot:
    """What one direction of a connection got over an interval (docs/quality.md).

    `inbound` is what this end receives (its own receive statistics), `outbound` what it sends as
    the far end reports it in RTCP receiver reports. Counts are over the interval. None: not
    known for this interval, or not reported by aiortc (packets_late, pli/fir/nack counts).
    """

    direction: Direction
    interval_s: float | None
    packets: int  # RTP packets received (inbound) or sent (outbound), audio and video
    packets_lost: int
    loss_pct: float | None
    packets_late: int | None  # discarded by the receiver's jitter buffer for arriving late
    audio_loss_pct: float | None
    audio_jitter_ms: float | None
    video_jitter_ms: float | None
    rtt_ms: float | None
    bitrate_kbps: float | None  # all the DTLS transport carried that way: RTP, RTCP, DTLS
    audio_mos: float | None
    video_frames: int | None
    fps: float | None
    freeze_count: int | None
    freeze_duration_s: float | None
    pause_count: int | None
    pause_duration_s: float | None
    pli_count: int | None
    fir_count: int | None
    nack_count: int | None

    def as_dict(self) -> dict[str, Any]:
        """The fields by name, for JSON reports."""
        return asdict(self)


def quality_between(
    previous: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    direction: Direction,
    *,
    frames: tuple[FrameReading, FrameReading] | None = None,
    interval_s: float | None = None,
    clock_rates: Mapping[str, int] = DEFAULT_CLOCK_RATES,
    ie: float = OPUS_IE,
    bpl: float | None = None,
    processing_delay_ms: float = PROCESSING_DELAY_MS,
) -> QualitySnapshot:
    """One direction's figures between two `await pc.getStats()` readings of an aiortc connection.

    `previous` None counts from the start of the connection (every counter at zero); then
    `interval_s` gives the time, which otherwise comes from the reports' timestamps. `frames` is
    the pair of `FreezeCounter.reading()`s taken with the two reports, for the video this end
    receives (inbound) or, if the far end tells it, the video it sends (outbound).

    The audio MOS uses half the RTT as the network delay (0 while no RTT is known), the audio
    stream's jitter and its loss in the interval (late discards included when reported), `ie`
    and `bpl`: by default Opus with concealment for outbound (browsers conceal), and
    NO_CONCEALMENT_BPL for inbound, as aiortc receives. No audio packets in the interval: no MOS.
    """
    before = _by_stream(previous or {})
    after = _by_stream(current)
    if interval_s is None and previous is not None:
        t0, t1 = _reading_time(previous), _reading_time(current)
        if t0 is not None and t1 is not None:
            interval_s = (t1 - t0).total_seconds()
    if interval_s is not None and interval_s <= 0.0:
        interval_s = None

    inbound = direction == "inbound"
    rtp_type = "inbound-rtp" if inbound else "outbound-rtp"
    packets = sum(
        _delta(s, before.get(key), "packetsReceived" if inbound else "packetsSent")
        for key, s in after.items()
        if s.type == rtp_type
    )
    # loss, as this end counts it (inbound) or as the far end reports it (outbound)
    loss_type = "inbound-rtp" if inbound else "remote-inbound-rtp"
    loss = _Loss()
    audio_loss = _Loss()
    for key, s in after.items():
        if s.type != loss_type:
            continue
        lost = _lost_delta(s, before.get(key))
        received = _delta(s, before.get(key), "packetsReceived")
        fraction = None if inbound else _number(s, "fractionLost")
        loss.add(lost, received, fraction)
        if getattr(s, "kind", None) == "audio":
            audio_loss.add(lost, received, fraction)

    late: int | None = None
    if inbound:
        late = _optional_sum(after, before, "inbound-rtp", "packetsDiscarded")

    # RFC 3550 interarrival jitter, in RTP timestamp units: the worst stream of each kind
    jitters: dict[str, float] = {}
    for s in after.values():
        units = _number(s, "jitter") if s.type == loss_type else None
        kind = str(getattr(s, "kind", ""))
        if units is not None and kind in clock_rates:
            jitters[kind] = max(units / clock_rates[kind] * 1000.0, jitters.get(kind, 0.0))

    rtts = [
        rtt
        for s in after.values()
        if s.type == "remote-inbound-rtp" and (rtt := _number(s, "roundTripTime")) is not None
    ]
    rtt_ms = sum(rtts) / len(rtts) * 1000.0 if rtts else None

    bitrate = None
    if interval_s is not None:
        counter = "bytesReceived" if inbound else "bytesSent"
        carried = sum(
            _delta(s, before.get(key), counter) for key, s in after.items() if s.type == "transport"
        )
        bitrate = carried * 8 / 1000.0 / interval_s

    mos = None
    audio_loss_pct = audio_loss.pct()
    if audio_loss_pct is not None:
        mos_loss = audio_loss_pct
        if inbound and audio_loss.expected:  # late discards are losses to the listener
            audio_late = _optional_sum(after, before, "inbound-rtp", "packetsDiscarded", "audio")
            mos_loss = min(100.0, mos_loss + 100.0 * (audio_late or 0) / audio_loss.expected)
        mos = audio_mos(
            (rtt_ms or 0.0) / 2.0,
            mos_loss,
            jitters.get("audio", 0.0),
            ie=ie,
            bpl=bpl if bpl is not None else (NO_CONCEALMENT_BPL if inbound else OPUS_BPL),
            processing_delay_ms=processing_delay_ms,
        )

    video_frames = fps = freeze_count = freeze_s = pause_count = pause_s = None
    if frames is not None:
        f0, f1 = frames
        video_frames = f1.frames - f0.frames
        fps = video_frames / (f1.at - f0.at) if f1.at > f0.at else None
        freeze_count = f1.freeze_count - f0.freeze_count
        freeze_s = f1.freeze_duration_s - f0.freeze_duration_s
        pause_count = f1.pause_count - f0.pause_count
        pause_s = f1.pause_duration_s - f0.pause_duration_s

    # keyframe and retransmission requests: sent by this end (inbound), received (outbound)
    return QualitySnapshot(
        direction=direction,
        interval_s=interval_s,
        packets=packets,
        packets_lost=loss.lost,
        loss_pct=loss.pct(),
        packets_late=late,
        audio_loss_pct=audio_loss_pct,
        audio_jitter_ms=jitters.get("audio"),
        video_jitter_ms=jitters.get("video"),
        rtt_ms=rtt_ms,
        bitrate_kbps=bitrate,
        audio_mos=mos,
        video_frames=video_frames,
        fps=fps,
        freeze_count=freeze_count,
        freeze_duration_s=freeze_s,
        pause_count=pause_count,
        pause_duration_s=pause_s,
        pli_count=_optional_sum(after, before, rtp_type, "pliCount"),
        fir_count=_optional_sum(after, before, rtp_type, "firCount"),
        nack_count=_optional_sum(after, before, rtp_type, "nackCount"),
    )


class _Loss:
    """Packets lost and expected over an interval, across streams."""

    def __init__(self) -> None:
        self.lost = 0
        self.expected = 0
        self.fractions: list[float] = []

    def add(self, lost: int, received: int, fraction_lost: float | None) -> None:
        self.lost += lost
        self.expected += lost + received
        if fraction_lost is not None:
            self.fractions.append(fraction_lost)

    def pct(self) -> float | None:
        if self.expected > 0:
            return 100.0 * self.lost / self.expected
        if self.fractions:  # no new receiver report: the last one's fraction lost (of 256)
            return 100.0 * max(self.fractions) / 256.0
        return None


def _by_stream(report: Mapping[str, Any]) -> dict[tuple[str, object], Any]:
    """The report's statistics by (id, SSRC): a new SSRC under the same id is a new stream."""
    return {
        (str(s.id), getattr(s, "ssrc", None)): s
        for s in report.values()
        if isinstance(getattr(s, "type", None), str) and hasattr(s, "id")
    }


def _reading_time(report: Mapping[str, Any]) -> datetime | None:
    """When the report was read: the stamp of the statistics getStats makes afresh."""
    stamps = [
        s.timestamp
        for s in report.values()
        if getattr(s, "type", None) in ("inbound-rtp", "outbound-rtp", "transport")
        and isinstance(getattr(s, "timestamp", None), datetime)
    ]
    return max(stamps) if stamps else None


def _number(stats: Any, name: str) -> float | None:
    value = getattr(stats, name, None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _delta(stats: Any, before: Any | None, name: str) -> int:
    """A counter's growth; from zero when the stream is new or its counter started over."""
    now = int(_number(stats, name) or 0)
    then = int(_number(before, name) or 0) if before is not None else 0
    return now - then if now >= then else now


def _lost_delta(stats: Any, before: Any | None) -> int:
    """Packets lost since `before`: RFC 3550's cumulative count can fall (duplicates), never < 0."""
    now = int(_number(stats, "packetsLost") or 0)
    then = int(_number(before, "packetsLost") or 0) if before is not None else 0
    return max(0, now - then)


def _optional_sum(
    after: Mapping[tuple[str, object], Any],
    before: Mapping[tuple[str, object], Any],
    stats_type: str,
    name: str,
    kind: str | None = None,
) -> int | None:
    """The growth of a counter aiortc does not report (None) but a patched aiortc might."""
    streams: Iterable[tuple[tuple[str, object], Any]] = (
        (k, s)
        for k, s in after.items()
        if s.type == stats_type and (kind is None or getattr(s, "kind", None) == kind)
    )
    total: int | None = None
    for key, s in streams:
        if _number(s, name) is not None:
            total = (total or 0) + _delta(s, before.get(key), name)
    return total
