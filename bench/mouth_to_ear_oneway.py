"""One-way mouth-to-ear latency, agent -> plain aiortc and aiortc -> agent, per network profile.

    scripts/isolated .venv/bin/python bench/mouth_to_ear_oneway.py [--network good]
        [--network mobile] [--seconds 30] [--seed 2112] [--json]

Per profile (`--network`, repeatable; good and mobile by default) one call across an ImpairedLink
(docs/network.md), both directions at once, marked as agent.media.marks marks audio (a chirp at
known times; docs/latency.md):

- side A, the agent: sends MarkedPreencodedAudio("tone").track(), Opus encoded once and sent by the
  agent's PacketPump, as the load tester's participants and the bots' tone are; reads what it
  receives with a MarkDetector;
- side B, plain aiortc: sends silence (48 kHz, paced as aiortc's AudioStreamTrack paces, whose
  own 8 kHz frames have no room for a 4.5 kHz sweep) through a MarkedAudioTrack, encoded by
  aiortc's sender; reads with a MarkDetector.

Both sides run in this process (each on an event loop of its own, in a thread inside its side's
namespace): one machine, one clock (time.time()). Each receiver's JitterBufferWatch gives aiortc's
jitter buffer's own delay (first packet of a frame in -> frame out), the floor of the figure on a
perfect link: on `good`, its p50 is the baseline; the target is a mouth-to-ear p50 within 10 ms of
it. The detectors' CPU time (thread time around each frame fed) gives their cost per stream; and
after the calls, one detector alone is fed 60 s of decoded-looking frames (48 kHz stereo s16,
noise) at the default MarkSchedule and at this bench's, its thread time per frame.

The agent's patches to aiortc (agent.patches) are installed in this process, so both receivers
here have the agent's audio jitter buffer (`audio_jitter_buffer`), which on a link without loss
delays as aiortc's own does; bench/network_quality.py measures plain aiortc receivers, in
processes of their own, beside the agent's.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.cli.loop import run_async  # noqa: E402
from agent.media.marks import (  # noqa: E402
    JitterBufferWatch,
    MarkDetector,
    MarkedAudioTrack,
    MarkedPreencodedAudio,
    MarkSchedule,
    clock_source,
)
from agent.network import PROFILE_NAMES, ImpairedLink, parse_profile  # noqa: E402
from agent.patches import install as install_patches  # noqa: E402

# a mark a second, 90 ms into it (a chirp across two packets); up to 900 ms to arrive
SCHEDULE = MarkSchedule(period_s=1.0, offset_s=0.09, max_latency_s=0.9)
TARGET_MS = 10.0  # mouth-to-ear p50 - the jitter buffer's p50, on good
CONNECT_TIMEOUT_S = 20.0


@dataclass
class Direction:
    profile: str
    direction: str
    heard: int = 0
    missed: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    jitter_buffer_p50_ms: float | None = None
    jitter_buffer_p95_ms: float | None = None
    jitter_buffer_min_ms: float | None = None
    jitter_buffer_max_ms: float | None = None
    over_jitter_buffer_p50_ms: float | None = None  # p50 - the jitter buffer's p50
    latencies_ms: list[float] = field(default_factory=list)
    detector_us_per_frame: float | None = None
    frames_searched_share: float | None = None
    link_loss: float | None = None  # the share of packets the link lost in this direction


class TimedDetector:
    """A MarkDetector fed every frame of a track, its thread CPU time counted."""

    def __init__(self) -> None:
        self.detector = MarkDetector(SCHEDULE, keep=1000)
        self.cpu_ns = 0
        self.hearing = concurrent.futures.Future[None]()

    async def consume(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if not isinstance(frame, av.AudioFrame):
                    continue
                at = time.time()
                started = time.thread_time_ns()
                self.detector.feed(frame, at)
                self.cpu_ns += time.thread_time_ns() - started
                if not self.hearing.done():
                    self.hearing.set_result(None)


class Side:
    """One end of the call on its own event loop: what it sends, what it hears."""

    def __init__(self, name: str, make_track: Any) -> None:
        self.name = name
        self.make_track = make_track
        self.heard = TimedDetector()
        self.watch: JitterBufferWatch | None = None
        self.description: concurrent.futures.Future[RTCSessionDescription] = (
            concurrent.futures.Future()
        )

    async def run(
        self,
        remote: concurrent.futures.Future[RTCSessionDescription],
        done: concurrent.futures.Future[None],
        offerer: bool,
    ) -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        reading: list[asyncio.Task[None]] = []
        track, cleanup = self.make_track()

        @pc.on("track")
        def _track(incoming: MediaStreamTrack) -> None:
            receiver = next(t.receiver for t in pc.getTransceivers() if t.kind == "audio")
            self.watch = JitterBufferWatch(receiver)
            reading.append(asyncio.create_task(self.heard.consume(incoming)))

        try:
            pc.addTrack(track)
            if offerer:
                await pc.setLocalDescription(await pc.createOffer())
                self.description.set_result(pc.localDescription)
                await pc.setRemoteDescription(await asyncio.wrap_future(remote))
            else:
                await pc.setRemoteDescription(await asyncio.wrap_future(remote))
                await pc.setLocalDescription(await pc.createAnswer())
                self.description.set_result(pc.localDescription)
            await asyncio.wrap_future(done)
        finally:
            await pc.close()
            for task in reading:
                task.cancel()
            await asyncio.gather(*reading, return_exceptions=True)
            cleanup()


def agent_track() -> tuple[MediaStreamTrack, Any]:
    audio = MarkedPreencodedAudio("tone", SCHEDULE)
    return audio.track(), audio.stop


def aiortc_track() -> tuple[MediaStreamTrack, Any]:
    track = MarkedAudioTrack(None, SCHEDULE)  # silence
    return track, track.stop


def figures(profile: str, direction: str, side: Side, lost: float | None) -> Direction:
    detector = side.heard.detector
    summary = detector.summary()
    row = Direction(profile, direction, heard=summary.heard, missed=summary.missed)
    row.p50_ms, row.p95_ms = summary.p50_ms, summary.p95_ms
    row.min_ms, row.max_ms = summary.min_ms, summary.max_ms
    row.latencies_ms = [round(s.latency_ms, 1) for s in detector.samples]
    if side.watch is not None:
        row.jitter_buffer_p50_ms = side.watch.histogram.percentile(0.5)
        row.jitter_buffer_p95_ms = side.watch.histogram.percentile(0.95)
        if side.watch.histogram.count:
            row.jitter_buffer_min_ms = side.watch.histogram.min_ms
            row.jitter_buffer_max_ms = side.watch.histogram.max_ms
    if row.p50_ms is not None and row.jitter_buffer_p50_ms is not None:
        row.over_jitter_buffer_p50_ms = row.p50_ms - row.jitter_buffer_p50_ms
    if detector.frames:
        row.detector_us_per_frame = side.heard.cpu_ns / detector.frames / 1000
        row.frames_searched_share = detector.searched / max(1, detector.batches)
    row.link_loss = lost
    return row


async def run_profile(profile: str, seconds: float, seed: int) -> list[Direction]:
    agent = Side("agent", agent_track)
    plain = Side("plain aiortc", aiortc_track)
    done = concurrent.futures.Future[None]()
    async with ImpairedLink(profile, seed=seed) as link, asyncio.TaskGroup() as tasks:
        runs = [
            tasks.create_task(link.a.run(lambda: agent.run(plain.description, done, True))),
            tasks.create_task(link.b.run(lambda: plain.run(agent.description, done, False))),
        ]
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await asyncio.wrap_future(agent.heard.hearing)
                await asyncio.wrap_future(plain.heard.hearing)
            await asyncio.sleep(seconds)  # the measurement: marks as they come, for this long
            stats = await link.stats()
        finally:
            done.set_result(None)
        await asyncio.gather(*runs)
    lost = {
        lane: (s.lost + s.capped) / s.taken if s.taken else None
        for lane, s in (("a_to_b", stats.a_to_b), ("b_to_a", stats.b_to_a))
    }
    return [
        figures(profile, "agent -> aiortc", plain, lost["a_to_b"]),
        figures(profile, "aiortc -> agent", agent, lost["b_to_a"]),
    ]


def detector_cost(schedule: MarkSchedule, seconds: float = 60.0) -> tuple[float, float]:
    """(us of thread time per 20 ms frame, share of batches correlated) of one detector fed
    `seconds` of frames back to back, dated as if in real time."""
    rng = np.random.default_rng(7)
    frames = []
    for i in range(round(seconds / 0.02)):
        pcm = rng.normal(0, 3000, (1, 1920)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48_000, i * 960, Fraction(1, 48_000)
        frames.append(frame)
    detector = MarkDetector(schedule)
    t0 = 1_000_000.0
    started = time.thread_time_ns()
    for i, frame in enumerate(frames):
        detector.feed(frame, t0 + 0.02 * i)
    spent = time.thread_time_ns() - started
    return spent / len(frames) / 1000, detector.searched / max(1, detector.batches)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def print_rows(rows: list[Direction], seconds: float) -> None:
    header = (
        f"{'profile':<8} {'direction':<16} {'marks heard/due':>15} {'p50':>7} {'p95':>7} "
        f"{'min':>7} {'max':>7} {'jitter buf p50':>14} {'p50 - jb':>9} {'link loss':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        loss = "-" if r.link_loss is None else f"{100 * r.link_loss:.1f} %"
        print(
            f"{r.profile:<8} {r.direction:<16} {f'{r.heard}/{r.heard + r.missed}':>15} "
            f"{ms(r.p50_ms):>7} {ms(r.p95_ms):>7} {ms(r.min_ms):>7} {ms(r.max_ms):>7} "
            f"{ms(r.jitter_buffer_p50_ms):>14} {ms(r.over_jitter_buffer_p50_ms):>9} {loss:>9}"
        )
    print(
        f"(a mark every {SCHEDULE.period_s:g} s for {seconds:g} s per profile; jitter buf: "
        "aiortc's jitter buffer's own delay at that receiver)"
    )
    for r in rows:
        if r.profile != "good":
            continue
        if r.over_jitter_buffer_p50_ms is None:
            print(f"good, {r.direction}: nothing to compare")
            continue
        verdict = "met" if abs(r.over_jitter_buffer_p50_ms) <= TARGET_MS else "NOT met"
        print(
            f"good, {r.direction}: p50 {r.over_jitter_buffer_p50_ms:+.1f} ms over the jitter "
            f"buffer's p50 (target within {TARGET_MS:.0f} ms: {verdict})"
        )
    costs = [r.detector_us_per_frame for r in rows if r.detector_us_per_frame is not None]
    shares = [r.frames_searched_share for r in rows if r.frames_searched_share is not None]
    if costs:
        mean = sum(costs) / len(costs)
        print(
            f"detector CPU: {mean:.0f} us per 20 ms frame on average ({min(costs):.0f}..."
            f"{max(costs):.0f}), {mean * 50 / 1e4:.2f} % of a core per stream, "
            f"{100 * sum(shares) / len(shares):.0f} % of frames correlated"
        )
    print(f"clock: one machine, time.time(); {clock_source()}")


def print_costs(costs: dict[str, tuple[float, float]]) -> None:
    for name, (us, share) in costs.items():
        print(
            f"detector alone, {name}: {us:.0f} us per frame ({us * 50 / 1e4:.2f} % of a core per "
            f"stream), {100 * share:.0f} % of batches correlated"
        )


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--network",
        action="append",
        choices=PROFILE_NAMES,
        help="a network profile (repeatable; default: good and mobile)",
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="measured per profile")
    parser.add_argument("--seed", type=int, default=2112, help="the links' random draws")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    profiles = args.network or ["good", "mobile"]
    for name in profiles:
        parse_profile(name)
    install_patches()
    rows: list[Direction] = []
    for name in profiles:
        started = time.monotonic()
        rows += await run_profile(name, args.seconds, args.seed)
        print(f"# {name}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    costs = {
        f"{name} schedule ({sched.period_s:g} s period, {sched.max_latency_s:g} s max latency)": (
            detector_cost(sched)
        )
        for name, sched in (("default", MarkSchedule()), ("this bench's", SCHEDULE))
    }
    if args.json:
        print(
            json.dumps(
                {
                    "rows": [asdict(r) for r in rows],
                    "detector_alone_us_per_frame_and_share": costs,
                    "target_ms": TARGET_MS,
                    "clock": clock_source(),
                },
                indent=2,
            )
        )
    else:
        print_rows(rows, args.seconds)
        print_costs(costs)
    return 0


if __name__ == "__main__":
    sys.exit(run_async(main()))
