"""Mouth-to-ear marks (agent.media.marks): live and pre-encoded marks over real aiortc calls are
heard at a latency the receiver's jitter buffer explains; marks lost on an impaired link are
missed, never mis-dated; speech and tones between marks are never taken for one."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fractions
import shutil
import statistics
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs import get_decoder, get_encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from agent.media.marks import (
    JitterBufferWatch,
    LatencySample,
    MarkDetector,
    MarkedAudioTrack,
    MarkedPreencodedAudio,
    MarkSchedule,
)
from agent.media.sources import silence_track, tone_track
from agent.network import ImpairedLink, Impairment
from agent.peer.ice import restrict_host_addresses
from tests.support.waiting import poll_until

# a mark every 0.4 s, 90 ms into it (not on a 20 ms frame boundary: the chirp spans two packets)
SCHEDULE = MarkSchedule(period_s=0.4, offset_s=0.09, max_latency_s=0.35)
# aiortc's jitter buffer holds up to 320 ms once a packet is lost: room for it
LOSSY = MarkSchedule(period_s=0.4, offset_s=0.09, max_latency_s=0.36)
# what the figure adds to the jitter buffer's delay on loopback: Opus's 6.5 ms look-ahead, the
# encoder's and decoder's thread hops, the receiving track's queue
OVERHEAD_MS = (5.0, 25.0)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2)


@contextlib.asynccontextmanager
async def loopback_call(
    track: MediaStreamTrack, schedule: MarkSchedule
) -> AsyncIterator[tuple[MarkDetector, JitterBufferWatch]]:
    """`track` sent over a loopback connection; the receiving end's detector and jitter buffer."""
    restrict_host_addresses(["127.0.0.1"])
    sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    detector = MarkDetector(schedule)
    watches: list[JitterBufferWatch] = []
    reading: list[asyncio.Task[None]] = []
    sender.addTrack(track)

    @receiver.on("track")
    def _heard(remote: MediaStreamTrack) -> None:
        watches.append(JitterBufferWatch(receiver.getTransceivers()[0].receiver))
        reading.append(asyncio.create_task(detector.consume(remote)))

    try:
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        assert watches and watches[0].installed
        yield detector, watches[0]
    finally:
        await sender.close()
        await receiver.close()
        for task in reading:
            task.cancel()
        await asyncio.gather(*reading, return_exceptions=True)
        restrict_host_addresses(None)


async def heard(detector: MarkDetector, count: int) -> None:
    async def enough() -> bool:
        return detector.heard >= count

    await poll_until(enough)


def assert_explained_by_jitter_buffer(
    samples: list[LatencySample], watch: JitterBufferWatch
) -> None:
    """Each latency: the jitter buffer's delay for a frame it released in the frame time
    before the mark was heard (the one holding the mark's first sample is one of them), plus
    what encoding and decoding add."""
    for sample in samples:
        released = [d for at, d in watch.recent if sample.heard_at - 0.025 <= at <= sample.heard_at]
        extra = [sample.latency_ms - d for d in released]
        assert any(OVERHEAD_MS[0] <= e <= OVERHEAD_MS[1] for e in extra), (sample, released)


async def test_live_marks_measure_the_one_way_latency_on_loopback() -> None:
    track = MarkedAudioTrack(tone_track(), SCHEDULE)
    async with loopback_call(track, SCHEDULE) as (detector, watch), asyncio.timeout(15):
        await heard(detector, 6)
    samples = list(detector.samples)
    sent = dict(track.sent)
    for sample in samples:
        # the receiver dated each mark by the schedule alone; it left exactly then
        assert abs(sent[sample.mark] - sample.sent_at) < 0.0011, sample
        assert 0 < sample.latency_ms < 200 and sample.score > 0.95, sample
    assert detector.missed <= track.skipped  # a mark sent is heard
    assert_explained_by_jitter_buffer(samples, watch)
    summary = detector.summary()
    jitter_buffer = watch.histogram.percentile(0.5)
    assert summary.p50_ms is not None and jitter_buffer is not None
    # aiortc's jitter buffer holds four frames: about 80 ms
    assert 60 < jitter_buffer < 110, jitter_buffer
    assert OVERHEAD_MS[0] <= summary.p50_ms - jitter_buffer <= OVERHEAD_MS[1], summary


async def test_preencoded_marks_leave_on_the_schedule_and_are_heard() -> None:
    audio = MarkedPreencodedAudio("tone", SCHEDULE)
    try:
        track = audio.track()
        async with loopback_call(track, SCHEDULE) as (detector, watch), asyncio.timeout(15):
            await heard(detector, 6)
            assert audio.pump.streams == 1  # sent by the pump, as the agent sends pre-encoded
    finally:
        audio.stop()
    samples = list(detector.samples)
    assert detector.missed == 0
    assert [s.mark for s in samples] == list(range(samples[0].mark, samples[0].mark + len(samples)))
    # the loop is encoded at 32 kbit/s, where the up sweep keeps less of its top
    assert all(0 < s.latency_ms < 200 and s.score > 0.85 for s in samples), samples
    assert_explained_by_jitter_buffer(samples, watch)


async def test_a_mark_lost_on_an_impaired_link_is_missed_not_mismeasured() -> None:
    """aiortc plays no concealment: a lost packet leaves a gap in the decoded audio. A chirp with
    a packet missing is missed; every mark heard is dated as the jitter buffer's delay says it
    should be (whichever jitter buffer is installed: aiortc's grows after a loss, the agent's
    audio_jitter_buffer patch keeps its depth)."""
    detector = MarkDetector(LOSSY)
    watches: list[JitterBufferWatch] = []
    offer: concurrent.futures.Future[RTCSessionDescription] = concurrent.futures.Future()
    answer: concurrent.futures.Future[RTCSessionDescription] = concurrent.futures.Future()
    done: concurrent.futures.Future[None] = concurrent.futures.Future()
    marked = MarkedAudioTrack(silence_track(), LOSSY)

    async def sending() -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.addTrack(marked)
            await pc.setLocalDescription(await pc.createOffer())
            offer.set_result(pc.localDescription)
            await pc.setRemoteDescription(await asyncio.wrap_future(answer))
            await asyncio.wrap_future(done)
        finally:
            await pc.close()

    async def receiving() -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        reading: list[asyncio.Task[None]] = []

        @pc.on("track")
        def _heard(remote: MediaStreamTrack) -> None:
            watches.append(JitterBufferWatch(pc.getTransceivers()[0].receiver))
            reading.append(asyncio.create_task(detector.consume(remote)))

        try:
            await pc.setRemoteDescription(await asyncio.wrap_future(offer))
            await pc.setLocalDescription(await pc.createAnswer())
            answer.set_result(pc.localDescription)
            await asyncio.wrap_future(done)
        finally:
            await pc.close()
            for task in reading:
                task.cancel()

    async with ImpairedLink("good", seed=21) as link, asyncio.TaskGroup() as tasks:
        sides = [tasks.create_task(link.a.run(sending)), tasks.create_task(link.b.run(receiving))]
        try:
            async with asyncio.timeout(20):
                await heard(detector, 2)
                clean = detector.heard
                await link.set_impairment("a_to_b", Impairment(loss=0.1))
                lost_from = detector.missed
                # until marks were lost and others heard through the loss
                await poll_until(lambda: _both(detector, clean + 2, lost_from + 2))
        finally:
            done.set_result(None)
        await asyncio.gather(*sides)
    samples = list(detector.samples)
    assert all(0 < s.latency_ms <= 360 and s.score >= 0.8 for s in samples), samples
    assert_explained_by_jitter_buffer(samples[clean:], watches[0])


async def _both(detector: MarkDetector, heard: int, missed: int) -> bool:
    return detector.heard >= heard and detector.missed >= missed


# --- offline: the detector against ordinary audio, through Opus ------------------------------


def espeak(text: str, directory: Path) -> np.ndarray[Any, np.dtype[np.int16]]:
    """`text` spoken by espeak-ng, as 48 kHz mono s16."""
    exe = shutil.which("espeak-ng")
    assert exe is not None, "espeak-ng is required (apt-get install espeak-ng)"
    wav = directory / "speech.wav"
    subprocess.run([exe, "-v", "en-us", "-w", str(wav), text], check=True)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=48_000)
    with av.open(str(wav)) as container:
        frames = [f for frame in container.decode(audio=0) for f in resampler.resample(frame)]
    frames += resampler.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1)[: f.samples] for f in frames])


def background(directory: Path, seconds: float) -> np.ndarray[Any, np.dtype[np.int16]]:
    """Speech over a 440 Hz tone, a 1 to 5 kHz glide and some noise: what talk sounds like."""
    speech = espeak("The quick brown fox jumps over the lazy dog, twice.", directory)
    n = round(seconds * 48_000)
    t = np.arange(n) / 48_000
    glide = np.sin(2 * np.pi * (1000 * t + 400 * t**2)) * 3000  # sweeps, but slowly
    rng = np.random.default_rng(3)
    mix = np.tile(speech, n // len(speech) + 1)[:n] + 4000 * np.sin(2 * np.pi * 440 * t)
    mix += glide + rng.normal(0, 300, n)
    return np.clip(mix, -32768, 32767).astype(np.int16)


class _Frames(MediaStreamTrack):
    """20 ms frames of `pcm`, unpaced (their times are the test's)."""

    kind = "audio"

    def __init__(self, pcm: np.ndarray[Any, np.dtype[np.int16]]) -> None:
        super().__init__()
        self._chunks = iter(range(0, len(pcm) - 959, 960))
        self._pcm = pcm

    async def recv(self) -> av.AudioFrame:
        start = next(self._chunks, None)
        if start is None:
            raise MediaStreamError
        frame = av.AudioFrame.from_ndarray(
            self._pcm[start : start + 960].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts, frame.time_base = 48_000, start, fractions.Fraction(1, 48_000)
        return frame


def through_opus(frames: list[av.AudioFrame]) -> Iterator[av.AudioFrame]:
    """aiortc's own Opus encoder and decoder, frame by frame (decoded frames keep the pts of the
    frames they came from: dated by it, the codec adds its look-ahead and nothing else)."""
    encoder, decoder = get_encoder(OPUS), get_decoder(OPUS)
    for frame in frames:
        payloads, timestamp = encoder.encode(frame)
        for payload in payloads:
            yield from decoder.decode(JitterFrame(payload, timestamp))


async def test_speech_and_tones_between_marks_are_never_taken_for_one(tmp_path: Path) -> None:
    seconds = 12.0
    pcm = await asyncio.to_thread(background, tmp_path, seconds)
    t0 = 1_000_000.0  # the test's clock: frame i is handed over (and heard) at t0 + i * 20 ms
    # a schedule whose windows cover nearly all the time, and a low bar: still nothing heard
    wide = MarkSchedule(period_s=0.4, offset_s=0.0, max_latency_s=0.36)
    source = _Frames(pcm)
    unmarked: list[av.AudioFrame] = []
    with contextlib.suppress(MediaStreamError):
        while True:
            unmarked.append(await source.recv())
    fooled = MarkDetector(wide, threshold=0.5)
    for frame in through_opus(unmarked):
        fooled.feed(frame, at=t0 + frame.pts / 48_000)
    assert fooled.heard == 0 and fooled.searched > 0.8 * fooled.batches, fooled.summary()

    # the same audio with marks (they replace 20 ms of it): each heard, at Opus's look-ahead
    clock = iter(t0 + i * 0.02 for i in range(len(unmarked)))
    marked_track = MarkedAudioTrack(_Frames(pcm), wide, clock=lambda: next(clock))
    marked: list[av.AudioFrame] = []
    with contextlib.suppress(MediaStreamError, StopIteration):
        while True:
            marked.append(await marked_track.recv())
    detector = MarkDetector(wide)
    for frame in through_opus(marked):
        detector.feed(frame, at=t0 + frame.pts / 48_000)
    sent = len(marked_track.sent)
    assert sent >= 28 and marked_track.skipped == 0
    assert detector.heard >= sent - 1 and detector.missed == 0, detector.summary()
    latencies = [s.latency_ms for s in detector.samples]
    # 312 samples of look-ahead
    assert all(abs(ms - 6.5) < 0.3 for ms in latencies), latencies
    assert statistics.pstdev(latencies) < 0.1


async def test_a_mark_with_its_first_frame_lost_is_missed_even_at_a_low_bar() -> None:
    """aiortc's decoded audio skips a lost frame (its pts jumps). With the frame holding an odd
    mark's onset gone, a third of its chirp is left: taken across the gap, that tail would pass
    for a mark heard a frame early. It is missed; the even marks are heard, dated exactly."""
    schedule = MarkSchedule(period_s=0.4, offset_s=0.0, max_latency_s=0.36)
    t0 = 1_000_000.0  # a multiple of the period: mark k's onset at the start of frame 20 k
    clock = iter(t0 + i * 0.02 for i in range(500))
    marked = MarkedAudioTrack(
        _Frames(np.zeros(500 * 960, np.int16)), schedule, clock=lambda: next(clock)
    )
    frames: list[av.AudioFrame] = []
    with contextlib.suppress(MediaStreamError, StopIteration):
        while True:
            frames.append(await marked.recv())
    sent = dict(marked.sent)
    # 312 samples of look-ahead: the onset is in the decoded frame of the same pts
    onsets = {round((at - t0) / 0.02) * 960: mark for mark, at in sent.items()}
    detector = MarkDetector(schedule, threshold=0.5)
    for frame in through_opus(frames):
        mark = onsets.get(frame.pts)
        if mark is not None and mark % 2:
            continue  # lost
        detector.feed(frame, at=t0 + 0.08 + frame.pts / 48_000)  # as if after 80 ms
    detector.flush()
    heard = {s.mark: s.latency_ms for s in detector.samples}
    assert set(heard) == {m for m in sent if m % 2 == 0}, (heard, sorted(sent))
    assert all(abs(ms - 86.5) < 0.3 for ms in heard.values()), heard
    assert detector.missed >= len(sent) // 2 - 1
