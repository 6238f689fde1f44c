"""Quality figures (agent.peer.quality): the G.107 E-model against the standard's own values, the
freeze counter on synthetic frame times, and a snapshot of a real aiortc call on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import random
import time
from types import SimpleNamespace
from typing import Any

import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from hypothesis import given
from hypothesis import strategies as st

from agent.peer.quality import (
    FREEZE_WINDOW_FRAMES,
    NO_CONCEALMENT_BPL,
    OPUS_BPL,
    EModelParams,
    FrameReading,
    FreezeCounter,
    audio_mos,
    burst_r_for,
    emodel_r,
    emodel_terms,
    ie_eff,
    mos_from_r,
    quality_between,
)

# --- E-model ---------------------------------------------------------------------------------


def test_every_default_gives_r_93_2() -> None:
    """G.107: "the default values ... result in a very high quality with a rating factor of
    R = 93.2"; its parts Ro = 94.77, Is = 1.41, Id = 0.15 (Ie,eff = 0, A = 0)."""
    terms = emodel_terms()
    assert terms.r == pytest.approx(93.2, abs=0.01)
    assert terms.ro == pytest.approx(94.77, abs=0.005)
    assert terms.is_ == pytest.approx(1.41, abs=0.005)
    assert terms.id == pytest.approx(0.15, abs=0.005)
    assert (terms.idte, terms.idd, terms.ie_eff, terms.a) == (0.0, 0.0, 0.0, 0.0)
    assert emodel_r() == terms.r
    assert mos_from_r(terms.r) == pytest.approx(4.41, abs=0.005)


@pytest.mark.parametrize(
    ("r", "mos"),
    [
        # G.107 Annex B: the lower R limit of each user-satisfaction category and its MOS
        (90, 4.34),
        (80, 4.03),
        (70, 3.60),
        (60, 3.10),
        (50, 2.58),
        # the ends of the scale, and the default connection
        (0, 1.0),
        (100, 4.5),
        (93.2, 4.41),
    ],
)
def test_mos_from_r_matches_g107_annex_b(r: float, mos: float) -> None:
    # to its two decimals, but for R = 80: the formula gives 4.024, the table 4.03
    assert mos_from_r(r) == pytest.approx(mos, abs=0.0061 if r == 80 else 0.005)


def test_mos_is_clamped_and_never_falls_as_r_rises() -> None:
    assert mos_from_r(-20) == 1.0
    assert mos_from_r(130) == 4.5
    # the cubic alone dips to 0.99 between R = 0 and 6.5
    assert 1.0 + 0.035 * 3 + 3 * (3 - 60) * (100 - 3) * 7e-6 < 1.0
    assert mos_from_r(3) == 1.0
    values = [mos_from_r(r / 10) for r in range(-100, 1100)]
    assert values == sorted(values)


def _idd_closed_form(x: float) -> float:
    """G.107's Idd for X = log2(Ta / 100 ms), written out independently of the module."""
    return 25 * ((1 + x**6) ** (1 / 6) - 3 * (1 + (x / 3) ** 6) ** (1 / 6) + 2)


@pytest.mark.parametrize(
    ("ta", "idd"),
    [(0, 0.0), (100, 0.0), (200, _idd_closed_form(1)), (400, _idd_closed_form(2))],
)
def test_absolute_delay_impairment_idd(ta: float, idd: float) -> None:
    assert emodel_terms(ta).idd == pytest.approx(idd, abs=1e-9)


def test_idd_values() -> None:
    # X = 1 and X = 2 by hand: 25 (2^(1/6) - 3 (1 + 3^-6)^(1/6) + 2) and 25 (65^(1/6) - ...)
    assert emodel_terms(200).idd == pytest.approx(3.044, abs=0.001)
    assert emodel_terms(400).idd == pytest.approx(24.07, abs=0.01)


@pytest.mark.parametrize("ta", [50, 100, 150, 177.3, 200, 250, 300])
def test_delay_curve_matches_the_published_fit(ta: float) -> None:
    """Cole and Rosenbluth ("Voice over IP performance monitoring", ACM SIGCOMM CCR 31(2), 2001)
    fitted G.107's delay impairment with every default, T = Ta and Tr = 2 Ta, by
    Id = 0.024 d + 0.11 (d - 177.3) H(d - 177.3) (above the zero-delay Id). Up to 300 ms the full
    model stays within 1.0 of their fit, farthest (0.9) at the fit's knee, 177.3 ms, where the
    model's smooth Idd has already risen; beyond 300 ms the fit's straight line leaves the Idd
    curve (at 400 ms: 34.1 against 31.0)."""
    fit = 0.024 * ta + 0.11 * max(0.0, ta - 177.3)
    assert emodel_terms(ta).id - emodel_terms(0).id == pytest.approx(fit, abs=1.0)


def test_delay_curve_values() -> None:
    """R along the default delay curve (computed by this model; no exact published table)."""
    expected = {0: 93.21, 100: 90.66, 150: 89.54, 200: 85.80, 300: 72.67, 400: 62.25}
    for ta, r in expected.items():
        assert emodel_r(ta) == pytest.approx(r, abs=0.01), ta


@pytest.mark.parametrize(
    ("bpl", "loss", "expected"),
    [
        # G.711 (Ie = 0) without concealment, Bpl = 4.3 (G.113 Appendix I), random loss
        (4.3, 1, 17.92),
        (4.3, 2, 30.16),
        (4.3, 5, 51.08),
        # G.711 with its Appendix I concealment, Bpl = 25.1
        (25.1, 1, 3.64),
        (25.1, 2, 7.01),
        (25.1, 5, 15.78),
    ],
)
def test_effective_equipment_impairment(bpl: float, loss: float, expected: float) -> None:
    assert ie_eff(0, loss, bpl) == pytest.approx(expected, abs=0.005)
    assert emodel_terms(0, loss, bpl=bpl).ie_eff == pytest.approx(expected, abs=0.005)


def test_bursty_loss_impairs_more() -> None:
    assert ie_eff(0, 5, 4.3, burst_r=2) == pytest.approx(95 * 5 / (2.5 + 4.3))
    assert ie_eff(10, 0, 4.3) == 10  # no loss: the codec's own impairment
    assert ie_eff(0, 100, 4.3, burst_r=1) == pytest.approx(95 * 100 / 104.3)


def test_burst_ratio_of_a_gilbert_loss_model() -> None:
    assert burst_r_for(3, 1 / 0.97) == pytest.approx(1.0)  # random loss
    assert burst_r_for(10, 3) == pytest.approx(2.7)  # the `bad` profile
    with pytest.raises(ValueError):
        burst_r_for(10, 0.5)


def test_bad_inputs_are_refused() -> None:
    for call in (
        lambda: emodel_r(-1),
        lambda: emodel_r(0, -0.1),
        lambda: emodel_r(0, 101),
        lambda: emodel_r(0, 1, burst_r=0),
        lambda: audio_mos(0, 0, -1),
    ):
        with pytest.raises(ValueError):
            call()


def test_audio_mos_on_a_perfect_path_and_under_loss() -> None:
    # 10 ms of processing on a perfect path: about the default connection's 4.41
    assert audio_mos(0, 0) == pytest.approx(4.40, abs=0.01)
    # effective delay = delay + 2 jitter + processing
    assert audio_mos(100, 0, 20) == mos_from_r(emodel_r(150))
    assert audio_mos(80, 3, 30, processing_delay_ms=0) == mos_from_r(emodel_r(140, 3, bpl=OPUS_BPL))
    # a concealing receiver hears 3 % loss as good, one without concealment as poor
    assert audio_mos(80, 3, 30) > 4.0
    assert audio_mos(80, 3, 30, bpl=NO_CONCEALMENT_BPL) < 3.0


def test_other_parameters_move_r() -> None:
    assert emodel_r(params=EModelParams(a=5)) == pytest.approx(emodel_r() + 5)
    assert emodel_r(params=EModelParams(telr=45), delay_ms=100) < emodel_r(100)  # worse echo
    # less delay-sensitive use (G.107 06/2015): Idd starts later
    assert emodel_terms(200, params=EModelParams(mt=200)).idd == 0.0


delays = st.floats(5, 2000)
losses = st.floats(0, 100)


@given(delays, delays, losses)
def test_more_delay_never_raises_r(d1: float, d2: float, loss: float) -> None:
    """From 5 ms on (below 4 ms G.107's talker-echo term is slightly negative, by < 0.2)."""
    low, high = sorted((d1, d2))
    assert emodel_r(high, loss) <= emodel_r(low, loss) + 1e-9


@given(st.floats(0, 2000), losses, losses, st.floats(1, 10))
def test_more_loss_never_raises_r(delay: float, l1: float, l2: float, burst: float) -> None:
    low, high = sorted((l1, l2))
    assert emodel_r(delay, high, burst_r=burst) <= emodel_r(delay, low, burst_r=burst) + 1e-9


@given(
    st.floats(0, 1000),
    st.floats(0, 1000),
    st.floats(0, 200),
    st.floats(0, 200),
    losses,
    losses,
    st.floats(1, 5),
    st.floats(1, 5),
)
def test_worse_network_never_raises_mos(
    d1: float, d2: float, j1: float, j2: float, l1: float, l2: float, b1: float, b2: float
) -> None:
    best = audio_mos(min(d1, d2), min(l1, l2), min(j1, j2), burst_r=min(b1, b2))
    worst = audio_mos(max(d1, d2), max(l1, l2), max(j1, j2), burst_r=max(b1, b2))
    assert 1.0 <= worst <= best + 1e-9 <= 4.5 + 1e-9


# --- Freezes ---------------------------------------------------------------------------------


def _feed(counter: FreezeCounter, times: list[float]) -> list[bool]:
    return [counter.add(t) for t in times]


def _steady(fps: float, seconds: float, start: float = 100.0) -> list[float]:
    return [start + i / fps for i in range(round(fps * seconds))]


def test_steady_30_fps_has_no_freeze() -> None:
    counter = FreezeCounter()
    assert not any(_feed(counter, _steady(30, 10)))
    assert (counter.frames, counter.freeze_count, counter.freeze_duration_s) == (300, 0, 0.0)
    assert counter.fps() == pytest.approx(30, abs=1)


def test_one_500_ms_gap_is_one_freeze() -> None:
    counter = FreezeCounter()
    before = _steady(30, 2)
    after = [t + before[-1] + 0.5 - 100.0 for t in _steady(30, 2)]
    ended = _feed(counter, before + after)
    assert ended.count(True) == 1 and ended.index(True) == len(before)
    assert counter.freeze_count == 1
    assert counter.freeze_duration_s == pytest.approx(0.5)
    assert counter.pause_count == 0


def test_jittered_frames_are_not_freezes() -> None:
    rng = random.Random(7)
    t, times = 0.0, []
    for _ in range(3000):  # 100 s at 30 fps, each interval 0 to 67 ms
        t += rng.uniform(0.0, 2 / 30)
        times.append(t)
    counter = FreezeCounter()
    assert not any(_feed(counter, times))
    # bunched pairs (two frames at once, then a double interval): not a freeze either
    counter = FreezeCounter()
    assert not any(_feed(counter, [i // 2 * 2 / 30 + (i % 2) * 0.001 for i in range(600)]))


def test_the_threshold_is_libwebrtcs() -> None:
    # 30 fps: avg + 150 ms rules (188.5 ms, the gap itself in the average)
    for gap, frozen in ((0.150, False), (0.180, False), (0.200, True)):
        counter = FreezeCounter()
        times = _steady(30, 2)
        _feed(counter, times)
        assert counter.add(times[-1] + gap) is frozen, gap
    # 5 fps: 3 x avg rules; with the gap in the average 3 intervals are not yet a freeze
    for gap, frozen in ((0.600, False), (0.700, True)):
        counter = FreezeCounter()
        times = _steady(5, 10)
        _feed(counter, times)
        assert counter.add(times[-1] + gap) is frozen, gap


def test_no_freeze_before_five_intervals() -> None:
    counter = FreezeCounter()
    assert not any(_feed(counter, [0.0, 0.033, 0.066, 0.099, 1.0]))
    assert counter.add(1.033) is False
    assert counter.add(3.0) is True  # the 6th interval may be one


def test_a_long_gap_is_a_pause_not_a_freeze() -> None:
    counter = FreezeCounter()
    times = _steady(30, 2)
    times += [t + times[-1] + 6.0 - 100.0 for t in _steady(30, 2)]
    assert not any(_feed(counter, times))
    assert (counter.pause_count, counter.freeze_count) == (1, 0)
    assert counter.pause_duration_s == pytest.approx(6.0)
    # with pauses off, the same gap is a freeze
    counter = FreezeCounter(pause_after_s=None)
    _feed(counter, times)
    assert (counter.pause_count, counter.freeze_count) == (0, 1)


def test_fps_window_and_readings() -> None:
    counter = FreezeCounter()
    assert counter.fps() == 0.0 and counter.reading() == FrameReading()
    _feed(counter, _steady(15, 3))
    last = counter.last_frame_at
    assert last is not None
    assert counter.fps() == pytest.approx(15, abs=1)
    assert counter.fps(last + 0.5) == pytest.approx(7.5, abs=1)
    assert counter.fps(last + 2.0) == 0.0
    reading = counter.reading(last + 1)
    assert (reading.at, reading.frames) == (last + 1, 45)
    # a frame stamped before the previous one counts as arriving with it
    counter.add(last - 1)
    assert counter.last_frame_at == last and counter.frames == 46


def test_memory_stays_constant() -> None:
    counter = FreezeCounter()
    _feed(counter, _steady(60, 2000))  # 120 000 frames
    assert counter.frames == 120_000
    assert len(counter._intervals) == FREEZE_WINDOW_FRAMES
    assert len(counter._recent) <= 240
    assert counter.fps() == pytest.approx(60, abs=1)


# --- Snapshots from getStats readings --------------------------------------------------------

T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


def _stats(type_: str, id_: str, at: float, **fields: Any) -> SimpleNamespace:
    return SimpleNamespace(
        type=type_, id=id_, timestamp=T0 + datetime.timedelta(seconds=at), **fields
    )


def _report(*stats: SimpleNamespace) -> dict[str, Any]:
    return {s.id: s for s in stats}


def _reading(at: float, n: int, **extra: Any) -> dict[str, Any]:
    """A connection `at` seconds in, after n steps of 50 audio and 100 video packets each way."""
    return _report(
        _stats("transport", "t", at, bytesReceived=20_000 * n, bytesSent=40_000 * n),
        _stats(
            "inbound-rtp", "in-a", at, ssrc=1, kind="audio",
            packetsReceived=49 * n, packetsLost=n, jitter=480,
            **extra.get("inbound_audio", {}),
        ),
        _stats(
            "inbound-rtp", "in-v", at, ssrc=2, kind="video",
            packetsReceived=100 * n, packetsLost=0, jitter=900,
        ),
        _stats("outbound-rtp", "out-a", at, ssrc=3, kind="audio", packetsSent=50 * n),
        _stats("outbound-rtp", "out-v", at, ssrc=4, kind="video", packetsSent=100 * n),
        _stats(
            "remote-inbound-rtp", "ri-a", at - 0.3, ssrc=3, kind="audio",
            packetsReceived=50 * n - 2 * n, packetsLost=2 * n, jitter=960,
            roundTripTime=0.1, fractionLost=10,
        ),
        _stats(
            "remote-inbound-rtp", "ri-v", at - 0.3, ssrc=4, kind="video",
            packetsReceived=100 * n, packetsLost=0, jitter=1800,
            roundTripTime=0.12, fractionLost=0,
        ),
    )  # fmt: skip


def test_inbound_snapshot_from_two_readings() -> None:
    frames = (FrameReading(at=10.0, frames=300), FrameReading(at=12.0, frames=358, freeze_count=1,
              freeze_duration_s=0.4))  # fmt: skip
    snap = quality_between(_reading(10, 5), _reading(12, 7), "inbound", frames=frames)
    assert snap.direction == "inbound"
    assert snap.interval_s == pytest.approx(2.0)
    assert snap.packets == 2 * 149
    assert snap.packets_lost == 2
    assert snap.loss_pct == pytest.approx(100 * 2 / 300)
    assert snap.audio_loss_pct == pytest.approx(2.0)
    assert snap.audio_jitter_ms == pytest.approx(10.0)  # 480 / 48 kHz
    assert snap.video_jitter_ms == pytest.approx(10.0)  # 900 / 90 kHz
    assert snap.rtt_ms == pytest.approx(110.0)  # the mean of the senders' RTTs
    assert snap.bitrate_kbps == pytest.approx(2 * 20_000 * 8 / 1000 / 2)
    assert snap.audio_mos == pytest.approx(
        audio_mos(55.0, 2.0, 10.0, bpl=NO_CONCEALMENT_BPL)  # aiortc receives: no concealment
    )
    assert (snap.video_frames, snap.fps) == (58, pytest.approx(29.0))
    assert (snap.freeze_count, snap.freeze_duration_s) == (1, pytest.approx(0.4))
    # what aiortc does not report
    assert snap.packets_late is None
    assert (snap.pli_count, snap.fir_count, snap.nack_count) == (None, None, None)
    assert set(snap.as_dict()) >= {"audio_mos", "freeze_count", "freeze_duration_s"}


def test_outbound_snapshot_is_what_the_far_end_reports() -> None:
    snap = quality_between(_reading(10, 5), _reading(12, 7), "outbound")
    assert snap.packets == 2 * 150
    assert snap.packets_lost == 4
    assert snap.audio_loss_pct == pytest.approx(4.0)
    assert snap.audio_jitter_ms == pytest.approx(20.0)
    assert snap.bitrate_kbps == pytest.approx(2 * 40_000 * 8 / 1000 / 2)
    assert snap.audio_mos == pytest.approx(audio_mos(55.0, 4.0, 20.0, bpl=OPUS_BPL))
    assert snap.video_frames is None and snap.freeze_count is None
    # no new receiver report in the interval: the last one's fraction lost (10/256)
    same = quality_between(_reading(12, 7), _reading(13, 7), "outbound")
    assert same.audio_loss_pct == pytest.approx(100 * 10 / 256)


def test_snapshot_edge_cases() -> None:
    # from the start of the connection: counters from zero, the interval given
    first = quality_between(None, _reading(4, 2), "inbound", interval_s=4.0)
    assert (first.packets, first.packets_lost) == (298, 2)
    assert first.bitrate_kbps == pytest.approx(40_000 * 8 / 1000 / 4)
    # without an interval, no rates
    assert quality_between(None, _reading(4, 2), "inbound").bitrate_kbps is None
    # nothing received in the interval: no loss figure, no MOS
    idle = quality_between(_reading(4, 2), _reading(5, 2), "inbound")
    assert (idle.loss_pct, idle.audio_mos) == (None, None)
    # a new SSRC under the same id is a new stream, and a counter that fell started over: both
    # count from zero
    restarted = _reading(5, 1)
    restarted["in-a"].ssrc = 9
    assert quality_between(_reading(4, 2), restarted, "inbound").packets == 49 + 100
    # counters aiortc lacks are used when a (patched) aiortc reports them
    late = {"inbound_audio": {"packetsDiscarded": 3, "pliCount": 0}}
    later = {"inbound_audio": {"packetsDiscarded": 8, "pliCount": 2}}
    snap = quality_between(_reading(4, 2, **late), _reading(6, 4, **later), "inbound")
    assert (snap.packets_late, snap.pli_count, snap.fir_count) == (5, 2, None)
    assert snap.audio_mos == pytest.approx(
        audio_mos(55.0, 100 * (2 + 5) / 100, 10.0, bpl=NO_CONCEALMENT_BPL)
    )


# --- A real call on loopback -----------------------------------------------------------------


async def _count_frames(
    track: MediaStreamTrack, counter: FreezeCounter | None, flowing: asyncio.Event
) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
            if counter is not None:
                counter.add(time.monotonic())
                if counter.frames >= 10:
                    flowing.set()


async def test_a_loopback_call_gives_sane_figures() -> None:
    """Two aiortc peers in this process, audio and video both ways over 127.0.0.1."""
    # no STUN server: host candidates on 127.0.0.1 only (aiortc's default asks Google's)
    caller, callee = (RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2))
    video_in = FreezeCounter()
    flowing = asyncio.Event()
    readers: list[asyncio.Task[None]] = []

    @caller.on("track")
    def _on_track(track: MediaStreamTrack) -> None:
        counter = video_in if track.kind == "video" else None
        readers.append(asyncio.create_task(_count_frames(track, counter, flowing)))

    @callee.on("track")
    def _on_callee_track(track: MediaStreamTrack) -> None:
        readers.append(asyncio.create_task(_count_frames(track, None, flowing)))

    try:
        for pc in (caller, callee):
            pc.addTrack(AudioStreamTrack())
            pc.addTrack(VideoStreamTrack())
        async with asyncio.timeout(5):
            await caller.setLocalDescription(await caller.createOffer())
            await callee.setRemoteDescription(caller.localDescription)
            await callee.setLocalDescription(await callee.createAnswer())
            await caller.setRemoteDescription(callee.localDescription)
            await flowing.wait()
        await asyncio.sleep(0.5)
        before = await caller.getStats()
        frames_before = video_in.reading(time.monotonic())
        await asyncio.sleep(3.0)
        after = await caller.getStats()
        frames_after = video_in.reading(time.monotonic())
    finally:
        await caller.close()
        await callee.close()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    inbound = quality_between(before, after, "inbound", frames=(frames_before, frames_after))
    outbound = quality_between(before, after, "outbound")
    for snap in (inbound, outbound):
        assert snap.interval_s == pytest.approx(3.0, abs=0.3)
        assert snap.packets > 180  # 50 audio packets a second, and a video frame in one or more
        assert snap.bitrate_kbps is not None and snap.bitrate_kbps > 20  # about 50 (static video)
        assert snap.loss_pct == 0.0 and snap.audio_loss_pct == 0.0
        assert snap.audio_jitter_ms is not None and 0 <= snap.audio_jitter_ms < 20
        assert snap.rtt_ms is not None and 0 <= snap.rtt_ms < 50
        assert snap.audio_mos is not None and 4.0 <= snap.audio_mos <= 4.5
        assert snap.packets_late is None and snap.pli_count is None
    assert inbound.video_frames is not None and inbound.video_frames > 60
    assert inbound.fps == pytest.approx(30, abs=4)  # VideoStreamTrack's 30 fps
    assert inbound.freeze_count == 0 and inbound.freeze_duration_s == 0.0
    assert math.isclose(video_in.fps(), 30, abs_tol=4)
