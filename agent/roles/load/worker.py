"""One load worker: a slice of the participants on one event loop (one process, one core).

Each simulated participant is a full `Participant` (its own token, session, poller, connections).
The worker starts them at its share of the ramp rate, samples the event loop's lag and the sessions'
states once a second, waits until its participants have connected (or `connect_timeout` has passed
since its ramp ended), then holds the population until the run's end (the runner gives it once every
worker is settled: `--duration` seconds later), then lets everyone leave.

Mouth-to-ear (`LoadPlan.mouth_to_ear` > 0): senders mark their audio (agent.media.marks) and each
participant runs a `MarkDetector` on up to that many of the audio streams it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import math
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from agent.convex import ConvexClient, RetryPolicy, TokenSource, make_http_client
from agent.media import ReceivedMedia
from agent.media.marks import (
    LatencyHistogram,
    LatencySample,
    MarkDetector,
    MarkedAudioTrack,
    MarkedPreencodedAudio,
)
from agent.media.preencoded import PreencodedAudio
from agent.media.sources import tone_track
from agent.patches import install as install_patches
from agent.peer.ice import restrict_host_addresses
from agent.peer.participant import Participant, ParticipantSettings
from agent.peer.session import PeerSession, PeerState, SessionSettings
from agent.peer.session_quality import GOOD_MOS, IntervalQuality
from agent.roles.load.plan import Identity, LoadPlan
from agent.signaling.api import ConnvoApi
from agent.signaling.models import ActiveSession

SAMPLE_INTERVAL_S = 1.0
LAG_PROBE_S = 0.05
SLOW_LAG_S = 0.05  # a probe this late counts as slow: p99 < 50 ms <=> under 1 % of probes slow
SETTLE_POLL_S = 0.2  # how often a worker looks whether its participants have connected


@dataclass
class SessionResult:
    remote_user_id: str
    state: str
    time_to_connected_s: float | None
    rtt_ms: float | None
    jitter_ms: float | None
    packets_received: int
    packets_lost: int
    # the whole connection's quality per direction, "inbound" and "outbound": the fields of
    # agent.peer.session_quality.QualityTotals (audio_mos_mean, freeze_count, ...)
    quality: dict[str, dict[str, Any]] = field(default_factory=dict)
    # measured end-to-end audio latency of the audio this end received: the median over the
    # marks heard (None: not measured, or no mark heard)
    mouth_to_ear_ms: float | None = None
    # marks heard and missed on this connection (None: not measured)
    mouth_to_ear_marks: int | None = None
    mouth_to_ear_missed: int | None = None


@dataclass
class ParticipantResult:
    name: str
    meeting_id: str
    join_s: float | None  # start -> own session created and polling
    error: str | None
    sessions: list[SessionResult] = field(default_factory=list)
    signal_latency_ms: list[float] = field(default_factory=list)


@dataclass
class Sample:
    """One second of one worker: counts over its participants."""

    t: float  # seconds since the run's start
    started: int
    joined: int
    connected: int
    negotiating: int
    failed: int
    packets_per_s: float
    rtp_per_s: float  # inbound RTP packets: 50/s per audio stream when nothing is lost
    rss_mb: float
    loop_lag_p99_ms: float
    # the probes behind that p99, and how many were slow: summed over seconds and workers they
    # give the p99 of a whole window (a per-second p99 of ~20 probes is their maximum)
    loop_lag_probes: int = 0
    loop_lag_slow: int = 0
    cpu_pct: float = 0.0  # the worker process's CPU time (all its threads), in % of one core
    rtp_lost_per_s: float = 0.0  # inbound RTP packets lost
    # Quality, over the connected sessions' latest intervals (sums and counts, so that seconds
    # of several workers and shards add up exactly): audio MOS received and sent, and how many
    # connections were below GOOD_MOS (4.0)
    mos_in_sum: float = 0.0
    mos_in_n: int = 0
    mos_in_under_4: int = 0
    mos_out_sum: float = 0.0
    mos_out_n: int = 0
    mos_out_under_4: int = 0
    video_in_n: int = 0  # connections receiving video (frames counted in their latest interval)
    # video received in the intervals measured during this second
    video_frames: int = 0
    freeze_count: int = 0
    freeze_duration_s: float = 0.0
    # marks heard during this second (mouth to ear) and their latencies' sum
    mouth_to_ear_n: int = 0
    mouth_to_ear_sum_ms: float = 0.0
    time_to_connected_s: list[float] = field(default_factory=list)  # new since the last sample


@dataclass
class WorkerResult:
    worker: int
    participants: list[ParticipantResult]
    samples: list[Sample]


class _Ears:
    """One participant's mouth-to-ear detectors: for up to `limit` of the sessions it receives
    audio on (the first to connect, or with decoded media the first whose audio arrives), every
    detector of each (an ICE restart's new connection brings a new track)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.detectors: dict[PeerSession, list[MarkDetector]] = {}

    def claim(self, session: PeerSession) -> bool:
        """Whether `session` is (now) one of those measured: the first `limit` to ask are."""
        if session in self.detectors:
            return True
        if len(self.detectors) >= self.limit:
            return False
        self.detectors[session] = []
        return True

    def detector_for(self, session: PeerSession) -> MarkDetector | None:
        if not self.claim(session):
            return None
        detector = MarkDetector()
        self.detectors.setdefault(session, []).append(detector)
        return detector

    def figures(self, session: PeerSession) -> tuple[float | None, int | None, int | None]:
        """(median latency ms, marks heard, marks missed) of `session`'s received audio."""
        detectors = self.detectors.get(session)
        if not detectors:
            return None, None, None
        histogram = LatencyHistogram()
        for d in detectors:
            d.flush()
            histogram.merge(d.histogram)
        p50 = histogram.percentile(0.5)
        heard = sum(d.heard for d in detectors)
        return (None if p50 is None else round(p50, 1)), heard, sum(d.missed for d in detectors)


class _Running:
    def __init__(
        self, identity: Identity, participant: Participant, stop: asyncio.Event, ears: _Ears
    ) -> None:
        self.identity = identity
        self.participant = participant
        self.stop = stop
        self.ears = ears
        self.started_at = time.monotonic()
        self.error: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.final: list[SessionResult] = []


class LoadWorker:
    def __init__(
        self,
        plan: LoadPlan,
        identities: list[Identity],
        *,
        worker: int = 0,
        state_dir: Path,
        emit: Callable[[Sample], None] = lambda sample: None,
    ) -> None:
        self.plan = plan
        self.identities = identities
        self.worker = worker
        self.state_dir = state_dir
        self.emit = emit
        self.running: list[_Running] = []
        self.samples: list[Sample] = []
        self._lags: list[float] = []
        self._reported_ttc: set[int] = set()
        self._last_packets = 0
        self._last_rtp = 0
        self._last_lost = 0
        self._video = [0, 0, 0.0]  # frames, freezes, freeze seconds measured since the sample
        self._last_sample_at: float | None = None  # time.monotonic() of the previous sample
        self._last_cpu = time.process_time()
        self._preencoded: PreencodedAudio | None = None
        self._heard = [0, 0.0]  # marks heard since the sample, and their latencies' sum (ms)
        self._ramp_done = False
        self._frozen_at: tuple[int, int] | None = None  # (connected, failed) at the last freeze

    async def run(
        self, t0: float, settled: Callable[[], Awaitable[float]] | None = None
    ) -> WorkerResult:
        """Ramp from `t0` (a time.time() shared by workers; from now if this worker starts later),
        wait until the participants have connected, then `settled()` gives the end of the hold
        (default: `duration` seconds from then); leave at that time."""
        plan = self.plan
        install_patches()  # a worker is a process of its own: as `connvo-agent run` does
        if plan.ice_host_addresses:
            restrict_host_addresses(list(plan.ice_host_addresses))
        if plan.media == "preencoded":
            # with marks: the same pre-encoded loop, the chirps encoded in once
            marked = plan.marks
            self._preencoded = MarkedPreencodedAudio("tone") if marked else PreencodedAudio("tone")
        rate = plan.ramp / plan.procs
        http = make_http_client(max_connections=min(1000, 4 * len(self.identities) + 10))
        try:
            async with asyncio.TaskGroup() as tasks:
                lag = tasks.create_task(self._probe_lag())
                await _sleep_until(t0)
                self._sample(t0)  # the baseline: nobody started yet (memory per session)
                sampler = tasks.create_task(self._sample_loop(t0))
                # a worker process that started late (a loaded machine) ramps from when it can
                start = max(t0, time.time())
                for k, identity in enumerate(self.identities):
                    await _sleep_until(start + k / rate)
                    self._start(identity, http, tasks)
                self._ramp_done = True
                await self._wait_connected(time.time() + plan.connect_timeout)
                end = await settled() if settled is not None else time.time() + plan.duration
                await _sleep_until(end)
                await self._read_connection_stats()
                self._sample(t0)
                for r in self.running:
                    # what each connection looked like at the end of the hold, before leaving
                    r.final = [_session_result(s, r.ears) for s in _sessions(r)]
                    r.stop.set()
                await asyncio.gather(*(r.task for r in self.running if r.task))
                lag.cancel()
                sampler.cancel()
        finally:
            gc.unfreeze()  # what the hold's connections left behind is collectable again
            await http.aclose()
            if self._preencoded is not None:
                self._preencoded.stop()
        return WorkerResult(self.worker, [self._result(r) for r in self.running], self.samples)

    async def _wait_connected(self, deadline: float) -> None:
        """Until every participant has failed or has the connections its topology gives it, or
        `deadline` (a time.time()): the hold is of the population, not of its ramp."""

        def connected(r: _Running) -> bool:
            states = [s.state for s in _sessions(r)]
            wanted = self.plan.expected_sessions(r.identity)
            return states.count(PeerState.CONNECTED) >= wanted

        while time.time() < deadline:
            if all(r.error is not None or connected(r) for r in self.running):
                return
            await asyncio.sleep(SETTLE_POLL_S)

    # --- participants ------------------------------------------------------------------------

    def _start(self, identity: Identity, http: Any, tasks: asyncio.TaskGroup) -> None:
        plan = self.plan
        api = ConnvoApi(
            ConvexClient(
                plan.url,
                TokenSource(value=identity.token),
                http=http,
                retry=RetryPolicy(max_attempts=8, max_delay=5.0),
            )
        )
        decode = plan.media == "full"
        ears = _Ears(plan.mouth_to_ear if plan.marks else 0)
        measure = plan.media == "preencoded" and plan.marks and ears.limit > 0
        hub = identity.hub_user_id
        call_filter: Callable[[ActiveSession], bool] | None = None
        if hub is not None:
            call_filter = lambda remote, hub=hub: remote.userId == hub  # noqa: E731
        settings = ParticipantSettings(
            meeting_id=identity.meeting_id,
            state_dir=self.state_dir / identity.name,
            # mesh: newcomers call whoever is there; star: spokes call the hub, the hub answers
            call_everyone=not identity.hub,
            call_filter=call_filter,
            session=SessionSettings(
                session_timeout=plan.connect_timeout,
                media_timeout=math.inf if plan.media == "none" else 10.0,
                # preencoded: received RTP is counted (getStats), not decoded, but on the
                # sessions this participant measures mouth to ear on (chosen per session)
                decode_media=decode,
                decode_media_for=ears.claim if measure else None,
                quality_observer=self._quality_measured,
            ),
        )
        stop = asyncio.Event()
        participant = Participant(
            api,
            settings,
            local_tracks=self._local_tracks,
            on_track=functools.partial(self._on_track, ears) if decode or measure else None,
        )
        running = _Running(identity, participant, stop, ears)
        running.task = tasks.create_task(self._run_one(running))
        self.running.append(running)

    async def _run_one(self, running: _Running) -> None:
        try:
            await running.participant.run(running.stop)
        except Exception as exc:  # one participant's failure is a figure, not the run's end
            running.error = f"{type(exc).__name__}: {exc}"[:300]

    def _local_tracks(self) -> list[MediaStreamTrack]:
        if self.plan.media == "preencoded" and self._preencoded is not None:
            return [self._preencoded.track()]
        if self.plan.media == "full":
            # its own encoder, like a real participant's
            return [MarkedAudioTrack(tone_track()) if self.plan.marks else tone_track()]
        return []

    def _on_track(
        self, ears: _Ears, session: PeerSession, track: MediaStreamTrack
    ) -> Coroutine[Any, Any, None] | None:
        detector = ears.detector_for(session) if track.kind == "audio" else None
        if detector is not None:
            return self._measure(detector, track)
        if self.plan.media == "full":
            return ReceivedMedia().consume(track)  # decodes every frame, like a real participant
        if session in ears.detectors:
            return _drain(track)  # decoded for its audio's marks: the rest is read too
        return None  # a counting session's track: nothing to read

    async def _measure(self, detector: MarkDetector, track: MediaStreamTrack) -> None:
        """Read `track` to its end through `detector` (every frame decoded)."""
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if isinstance(frame, av.AudioFrame):
                    self._count_heard(detector.feed(frame))
        self._count_heard(detector.flush())

    def _count_heard(self, samples: list[LatencySample]) -> None:
        for sample in samples:
            self._heard[0] += 1
            self._heard[1] += sample.latency_ms

    # --- sampling ----------------------------------------------------------------------------

    async def _read_connection_stats(self) -> None:
        """Measure every connected session now, for the last sample and the results: a session's
        watchdog reads its figures once a second and its quality every few seconds, so one that
        connected just before the end has none yet."""
        for r in self.running:
            for s in _sessions(r):
                with contextlib.suppress(Exception):  # closing under us: its last figures stand
                    await s.measure_quality()

    def _quality_measured(self, session: PeerSession, interval: IntervalQuality) -> None:
        inbound = interval.inbound
        if inbound.video_frames is not None:
            self._video[0] += inbound.video_frames
            self._video[1] += inbound.freeze_count or 0
            self._video[2] += inbound.freeze_duration_s or 0.0

    async def _probe_lag(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_PROBE_S)
            self._lags.append(max(0.0, time.monotonic() - before - LAG_PROBE_S))

    async def _sample_loop(self, t0: float) -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL_S)
            self._sample(t0)

    def _sample(self, t0: float) -> None:
        sessions = [s for r in self.running for s in _sessions(r)]
        states = [s.state for s in sessions]
        packets = sum(s.stats.packets_received for s in sessions)
        rtp = sum(s.stats.rtp_received for s in sessions)
        lost = sum(s.stats.packets_lost for s in sessions)
        quality = _QualityNow()
        for s in sessions:
            if s.state is PeerState.CONNECTED:
                quality.add(s.latest_quality)
        mos_in, mos_out = quality.mos["inbound"], quality.mos["outbound"]
        frames, freezes, freeze_s = self._video
        self._video = [0, 0, 0.0]
        heard, heard_ms = self._heard
        self._heard = [0, 0.0]
        new_ttc = []
        for s in sessions:
            if s.time_to_connected is not None and id(s) not in self._reported_ttc:
                self._reported_ttc.add(id(s))
                new_ttc.append(s.time_to_connected)
        lags, self._lags = self._lags, []
        # a busy loop wakes the sampler late: rates over the real interval, not the nominal one
        now = time.monotonic()
        elapsed = SAMPLE_INTERVAL_S if self._last_sample_at is None else now - self._last_sample_at
        self._last_sample_at = now
        cpu = time.process_time()
        cpu_pct, self._last_cpu = 100 * (cpu - self._last_cpu) / elapsed, cpu
        sample = Sample(
            t=round(time.time() - t0, 3),
            started=len(self.running),
            joined=sum(1 for r in self.running if r.participant.joined.is_set()),
            connected=states.count(PeerState.CONNECTED),
            negotiating=sum(1 for s in states if s in (PeerState.NEW, PeerState.NEGOTIATING)),
            failed=sum(1 for r in self.running if r.error)
            + sum(1 for s in states if s is PeerState.FAILED),
            packets_per_s=max(0, packets - self._last_packets) / elapsed,
            rtp_per_s=max(0, rtp - self._last_rtp) / elapsed,
            rss_mb=_rss_mb(),
            loop_lag_p99_ms=1000 * percentile(lags, 0.99) if lags else 0.0,
            loop_lag_probes=len(lags),
            loop_lag_slow=sum(1 for lag in lags if lag >= SLOW_LAG_S),
            cpu_pct=round(cpu_pct, 1),
            rtp_lost_per_s=max(0, lost - self._last_lost) / elapsed,
            mos_in_sum=round(mos_in.total, 3),
            mos_in_n=mos_in.n,
            mos_in_under_4=mos_in.under_4,
            mos_out_sum=round(mos_out.total, 3),
            mos_out_n=mos_out.n,
            mos_out_under_4=mos_out.under_4,
            video_in_n=quality.video,
            video_frames=int(frames),
            freeze_count=int(freezes),
            freeze_duration_s=round(freeze_s, 3),
            mouth_to_ear_n=int(heard),
            mouth_to_ear_sum_ms=round(heard_ms, 3),
            time_to_connected_s=new_ttc,
        )
        self._last_packets = packets
        self._last_rtp = rtp
        self._last_lost = lost
        self.samples.append(sample)
        self.emit(sample)
        self._freeze_settled_heap(sample)

    def _freeze_settled_heap(self, sample: Sample) -> None:
        """Once the ramp is over and no session is negotiating, freeze the heap (once per change).

        A full collection scans every tracked object: with ~3,000 per participant it paused the
        loop ~100 ms every ~20 s at 40 participants, which is lag the run would then report. The
        hold's connections live until the end, so after one collection they are moved out of the
        collector's sight (`gc.freeze`); young garbage is still collected as usual.
        """
        settled = (sample.connected, sample.failed)
        if not self._ramp_done or sample.negotiating or settled == self._frozen_at:
            return
        gc.collect()
        gc.freeze()
        self._frozen_at = settled

    def _result(self, running: _Running) -> ParticipantResult:
        p = running.participant
        join = p.joined_at - running.started_at if p.joined_at is not None else None
        latencies: list[float] = []
        if p.poller is not None:
            latencies = [*p.poller.stats.active_latencies, *p.poller.stats.idle_latencies]
        return ParticipantResult(
            name=running.identity.name,
            meeting_id=running.identity.meeting_id,
            join_s=join,
            error=running.error,
            sessions=running.final,
            signal_latency_ms=[round(1000 * x, 2) for x in latencies],
        )


def _sessions(running: _Running) -> list[PeerSession]:
    manager = running.participant.manager
    return list(manager.sessions.values()) if manager is not None else []


@dataclass
class _MosSum:
    total: float = 0.0
    n: int = 0  # connections with a MOS
    under_4: int = 0  # of which below GOOD_MOS


class _QualityNow:
    """The connected sessions' latest quality, summed for one sample."""

    def __init__(self) -> None:
        self.mos = {"inbound": _MosSum(), "outbound": _MosSum()}
        self.video = 0

    def add(self, latest: IntervalQuality | None) -> None:
        if latest is None:
            return
        for snapshot in (latest.inbound, latest.outbound):
            if snapshot.audio_mos is not None:
                sums = self.mos[snapshot.direction]
                sums.total += snapshot.audio_mos
                sums.n += 1
                sums.under_4 += snapshot.audio_mos < GOOD_MOS
        if latest.inbound.video_frames:
            self.video += 1


def _session_result(s: PeerSession, ears: _Ears) -> SessionResult:
    quality = s.quality
    mouth_to_ear, marks, missed = ears.figures(s)
    return SessionResult(
        remote_user_id=s.remote_user_id,
        state=s.state.value,
        time_to_connected_s=s.time_to_connected,
        rtt_ms=None if s.stats.rtt is None else round(1000 * s.stats.rtt, 2),
        jitter_ms=None if s.stats.jitter is None else round(1000 * s.stats.jitter, 2),
        packets_received=s.stats.packets_received,
        packets_lost=s.stats.packets_lost,
        quality={
            "inbound": _rounded(quality.inbound_total.as_dict()),
            "outbound": _rounded(quality.outbound_total.as_dict()),
        },
        mouth_to_ear_ms=mouth_to_ear,
        mouth_to_ear_marks=marks,
        mouth_to_ear_missed=missed,
    )


async def _drain(track: MediaStreamTrack) -> None:
    """Read a track to its end, keeping nothing (aiortc queues what nobody reads)."""
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


def _rounded(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}


def _rss_mb() -> float:
    """Resident memory of this process (Linux), in MiB."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _sleep_until(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def result_to_dict(result: WorkerResult) -> dict[str, Any]:
    return asdict(result)
