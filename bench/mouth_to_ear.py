"""Mouth-to-ear latency through examples/echo_bot.py, against a plain aiortc echo, on loopback.

    python bench/mouth_to_ear.py [--bursts 30] [--period 1.0] [--json] [--pipecat]

A remote aiortc peer sends silence with a 1 kHz tone burst (100 ms) every `--period` seconds and
listens to what comes back. Each onset is at a known sample position, a different number of
samples into its 20 ms frame each time. The listener finds each onset in the decoded audio it
receives (the first sample above 30 % of the burst's amplitude after at least 200 ms below it).

Latency of one burst = (time the decoded frame holding the detected onset was handed to the
listener + the onset's offset in that frame) - (time the sender's `recv()` handed the frame
holding the onset to aiortc + the onset's offset in that frame): both ends in this process, one
clock (time.monotonic), each frame dated by its first sample at both ends. So it includes both
Opus encodings and decodings, both jitter buffers (aiortc holds 4 frames, about 80 ms, before
decoding) and everything the echo does in between.

Rows, one after the other in the same run, measured the same way:
- API echo: examples/echo_bot.py's `main` in this process (agent.join, participant.audio() at
  48 kHz, meeting.audio_out.play_pcm), the peer (tests/support/peers.py's RemotePeer) calling it
  through the dev backend, which this script starts;
- plain aiortc: two RTCPeerConnections in this process connected directly (descriptions handed
  over in memory, no signalling server), the far end sending each received frame straight back
  through its own track: the minimal aiortc echo, the baseline;
- pipecat echo (`--pipecat`): examples/pipecat_echo.py's `main` run as the API echo, if that file
  exists and pipecat is importable; otherwise the row says why it was skipped. That example sends
  each utterance back once Silero VAD marks its end, so its bursts are speech (espeak-ng, "hello
  there"), further apart, over a quiet 300 Hz floor (-44 dBFS) that lets the listener find where
  the echo's playback starts (its pre-roll, before the speech, carries the floor; the agent's
  silence is zero). Its onset-to-onset figures include the utterance and the VAD's delays. The
  end of the speech is its last sample above 5 % of its peak (END_SHARE); a Pipecat observer
  (passed as `main(observers=...)`) sees the pipeline's frames, on the pipeline's clock mapped
  onto time.monotonic, and per utterance gives:
  - the VAD's own stop delay: from the first push (by the input transport) of the last input
    audio frame whose peak is above END_SHARE of the speech's peak, before a
    VADUserStoppedSpeakingFrame, to that stop frame's first push; p50/p95, and how much of it is
    stop_secs (read from the stop frames, or `--vad-stop-secs`);
  - the echo excluding it: (start of the echo's playback heard at the remote - end of the speech
    sent) - the VAD's own stop delay for that utterance; p50/p95, and its p50 less plain
    aiortc's p50 (the round trip through aiortc alone), against the target (<= 60 ms); and,
    apart, its p50 with the end of speech in the pipeline dated by its sample (its frame's push
    + its offset in the frame), as every other end here is dated, rather than by its frame;
  - a split: end of the speech sent -> its frame pushed into the pipeline (the incoming leg,
    aiortc's jitter buffer included), and the stop frame -> the echo's playback heard.
  Without the observer only (start of playback - end of speech sent) - stop_secs is reported,
  which counts the incoming leg and the VAD's analysis windows in.

The agent's patches to aiortc (agent.patches, installed by agent.join) are in place for every row:
they are the same aiortc the agent runs on; the difference between the rows is what the API and
the example add. ICE is restricted to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import inspect
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.cli.loop import run_async  # noqa: E402
from agent.devserver.process import DevServerProcess  # noqa: E402
from agent.patches import install as install_patches  # noqa: E402
from agent.peer.ice import restrict_host_addresses  # noqa: E402
from tests.support.peers import ApiError, PeerTransportError, RemotePeer  # noqa: E402

SAMPLE_RATE = 48_000
FRAME = 960  # 20 ms
TIME_BASE = Fraction(1, SAMPLE_RATE)
TONE_HZ = 1000.0
AMPLITUDE = 0.3  # of full scale
BURST_S = 0.1
THRESHOLD = 0.3  # an onset: the first sample above this share of the burst's peak...
QUIET_S = 0.2  # ...after at least this long below it
ONSET_STEP = 197  # samples: each onset sits this much further into its frame than the last
LEAD_S = 0.5  # from scheduling the bursts to the first onset
WARMUP_S = 2.0  # connected and hearing the echo's output before the first burst
TAIL_S = 1.0  # listening after the last burst
CONNECT_TIMEOUT_S = 30.0
END_TIMEOUT_S = 15.0
TARGET_DIFF_MS = 20.0  # API echo p50 - plain aiortc p50
PIPECAT_EXAMPLE = ROOT / "examples" / "pipecat_echo.py"
PIPECAT_TARGET_MS = 60.0  # pipecat echo, excluding the VAD's stop delay
PIPECAT_SPEECH = "hello there"
PIPECAT_GAP_S = 1.5  # between the end of one burst's echo and the next burst
PIPECAT_PRE_ROLL_S = 0.5  # at most this much audio before the speech comes back with it
FLOOR_HZ = 300.0
FLOOR_AMPLITUDE = 200  # -44 dBFS: below any VAD's speech, above the zeros of the agent's silence
END_SHARE = 0.05  # the end of a burst: its last sample above this share of its peak


# --- what the remote peer sends and hears ----------------------------------------------------


def tone_pcm(seconds: float = BURST_S) -> np.ndarray[Any, np.dtype[np.int16]]:
    """A 1 kHz sine from phase 0 at AMPLITUDE."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (np.sin(2 * np.pi * TONE_HZ * t) * AMPLITUDE * 32767).astype(np.int16)


def speech_pcm(text: str, directory: Path) -> np.ndarray[Any, np.dtype[np.int16]] | None:
    """`text` spoken by espeak-ng as 48 kHz mono, without its leading and trailing silence;
    None without espeak-ng."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    wav = directory / "speech.wav"
    subprocess.run([exe, "-v", "en-us", "-w", str(wav), text], check=True)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    with av.open(str(wav)) as container:
        decoded = [f for frame in container.decode(audio=0) for f in resampler.resample(frame)]
    decoded += resampler.resample(None)
    pcm = np.concatenate([f.to_ndarray().reshape(-1)[: f.samples] for f in decoded])
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 0.01 * np.max(np.abs(pcm)))
    return pcm[loud[0] : loud[-1] + 1].astype(np.int16)


class BurstTrack(MediaStreamTrack):
    """48 kHz mono, 20 ms frames paced in real time as aiortc's AudioStreamTrack paces them:
    silence (or a quiet floor), and a burst at each scheduled onset. Records when each burst's
    onset (its first sample above THRESHOLD of its peak, as the listener finds it) and its end
    (its last sample above END_SHARE of its peak) were handed to aiortc."""

    kind = "audio"

    def __init__(
        self, burst: np.ndarray[Any, np.dtype[np.int16]] | None = None, floor: int = 0
    ) -> None:
        super().__init__()
        self.burst = tone_pcm() if burst is None else burst
        magnitude = np.abs(self.burst.astype(np.int32))
        peak = float(np.max(magnitude))
        self.threshold = THRESHOLD * peak
        self._first = int(np.flatnonzero(magnitude > self.threshold)[0])
        self._last = int(np.flatnonzero(magnitude > END_SHARE * peak)[-1])
        self.floor = floor
        self.onsets: list[int] = []  # sample positions of the bursts' first samples
        self.sent: dict[int, float] = {}  # burst -> monotonic time of its onset at the sender
        self.ended: dict[int, float] = {}  # burst -> the same for its end
        self._started_at: float | None = None
        self._pts = 0

    @property
    def seconds(self) -> float:
        return len(self.burst) / SAMPLE_RATE

    def schedule(self, count: int, period_s: float) -> None:
        """`count` bursts, `period_s` apart, the first LEAD_S from now."""
        first = self._pts + round(LEAD_S * SAMPLE_RATE)
        step = round(period_s * SAMPLE_RATE)
        self.onsets = [first + i * step + (i * ONSET_STEP) % FRAME for i in range(count)]

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._started_at is None:
            self._started_at = time.monotonic()
        else:
            self._pts += FRAME
            wait = self._started_at + self._pts / SAMPLE_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        pts, length = self._pts, len(self.burst)
        pcm = np.zeros(FRAME, dtype=np.int32)
        if self.floor:
            t = np.arange(pts, pts + FRAME) / SAMPLE_RATE
            pcm += (np.sin(2 * np.pi * FLOOR_HZ * t) * self.floor).astype(np.int32)
        now = time.monotonic()
        for onset in self.onsets:
            lo, hi = max(onset, pts), min(onset + length, pts + FRAME)
            if lo < hi:
                pcm[lo - pts : hi - pts] += self.burst[lo - onset : hi - onset]
            for sample, times in (
                (onset + self._first, self.sent),
                (onset + self._last, self.ended),
            ):
                if pts <= sample < pts + FRAME:
                    times[onset] = now + (sample - pts) / SAMPLE_RATE
        frame = av.AudioFrame.from_ndarray(
            np.clip(pcm, -32768, 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = pts
        frame.time_base = TIME_BASE
        return frame


class OnsetDetector:
    """Called with every decoded frame received: the monotonic times of the onsets in them (the
    first sample above `threshold` after QUIET_S below it) and, given a `floor` threshold, of the
    starts (the first sample above it after QUIET_S at or below it)."""

    def __init__(self, threshold: float, floor: float | None = None) -> None:
        self.onsets: list[float] = []
        self.starts: list[float] = []
        self.frames = 0
        self.hearing = asyncio.Event()  # set by the first frame
        self._levels = [(threshold, self.onsets)] + ([(floor, self.starts)] if floor else [])
        self._quiet = [0] * len(self._levels)  # samples below each level since the last above

    def __call__(self, frame: av.AudioFrame) -> None:
        now = time.monotonic()
        self.frames += 1
        self.hearing.set()
        channels = len(frame.layout.channels)
        data = frame.to_ndarray()
        x = data[0] if frame.format.is_planar else data.reshape(-1)[::channels]
        magnitude = np.abs(x[: frame.samples].astype(np.int32))
        rate = frame.sample_rate or SAMPLE_RATE
        for k, (level, found) in enumerate(self._levels):
            loud = np.flatnonzero(magnitude > level)
            if loud.size == 0:
                self._quiet[k] += len(magnitude)
                continue
            if self._quiet[k] + int(loud[0]) >= QUIET_S * rate:
                found.append(now + int(loud[0]) / rate)
            self._quiet[k] = len(magnitude) - 1 - int(loud[-1])


@dataclass
class Row:
    name: str
    sent: int = 0
    detected: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    first5_p50_ms: float | None = None  # the first and last five bursts: does the delay drift?
    last5_p50_ms: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    skipped: str | None = None
    # the pipecat row
    vad_stop_secs: float | None = None
    vad_stop_source: str | None = None
    playback_starts_found: int = 0  # echoes whose playback start the listener found
    vad_stops: int | None = None  # VADUserStoppedSpeakingFrames the observer saw
    utterances_measured: int = 0  # echoes matched to their end of speech in the pipeline
    # the VAD's own stop delay, in the pipeline: the end of speech's frame pushed -> stop frame
    vad_stop_delay_p50_ms: float | None = None
    vad_stop_delay_p95_ms: float | None = None
    vad_stop_delay_beyond_stop_secs_p50_ms: float | None = None  # that p50 - stop_secs
    vad_stop_delays_ms: list[float] = field(default_factory=list)
    # (start of the echo's playback heard - end of speech sent) - that utterance's VAD stop delay
    excluding_vad_p50_ms: float | None = None
    excluding_vad_p95_ms: float | None = None
    excluding_vad_ms: list[float] = field(default_factory=list)
    # ... its p50 less the plain aiortc echo's p50 (the round trip through aiortc alone)
    excluding_vad_minus_plain_p50_ms: float | None = None
    # the same p50s with the end of speech in the pipeline dated by its sample (its frame's push
    # + its offset in the frame), as every other end is dated: the VAD's delay is then that much
    # shorter, the rest that much longer
    excluding_vad_by_sample_p50_ms: float | None = None
    excluding_vad_by_sample_minus_plain_p50_ms: float | None = None
    pipecat_target_met: bool | None = None
    # the split, p50: end of speech sent -> its frame pushed into the pipeline; stop frame ->
    # the echo's playback heard
    end_sent_to_pipeline_p50_ms: float | None = None
    vad_stop_to_heard_p50_ms: float | None = None
    # without the observer: (start of playback - end of speech sent) - stop_secs, which counts
    # the incoming leg and the VAD's analysis in
    playback_after_end_minus_stop_p50_ms: float | None = None
    playback_after_end_minus_stop_p95_ms: float | None = None
    notes: list[str] = field(default_factory=list)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def matched(
    track: BurstTrack, found: list[float], period_s: float, after: dict[int, float] | None = None
) -> list[tuple[int, float]]:
    """(burst, the first time in `found` after its onset was sent, or after `after[burst]`, and
    before the next burst was sent), per burst."""
    sent = sorted(track.sent.items(), key=lambda kv: kv[1])
    out = []
    for i, (onset, at) in enumerate(sent):
        until = sent[i + 1][1] if i + 1 < len(sent) else at + period_s
        since = at if after is None else after.get(onset, until)
        heard = next((d for d in found if since <= d < until), None)
        if heard is not None:
            out.append((onset, heard))
    return out


def summarise(name: str, track: BurstTrack, detector: OnsetDetector, period_s: float) -> Row:
    pairs = matched(track, detector.onsets, period_s)
    ms = [1000 * (heard - track.sent[onset]) for onset, heard in pairs]
    return Row(
        name=name,
        sent=len(track.sent),
        detected=len(ms),
        p50_ms=pct(ms, 0.5),
        p95_ms=pct(ms, 0.95),
        min_ms=min(ms, default=None),
        max_ms=max(ms, default=None),
        first5_p50_ms=pct(ms[:5], 0.5),
        last5_p50_ms=pct(ms[-5:], 0.5),
        latencies_ms=[round(v, 1) for v in ms],
    )


async def play_bursts(track: BurstTrack, count: int, period_s: float) -> None:
    await asyncio.sleep(WARMUP_S)
    track.schedule(count, period_s)
    await asyncio.sleep(LEAD_S + count * period_s + TAIL_S)


# --- plain aiortc: two connections in this process, the far one echoing ----------------------


class EchoTrack(MediaStreamTrack):
    """Sends back each frame its source track receives, as it arrives."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self._source = source

    async def recv(self) -> av.AudioFrame:
        frame: av.AudioFrame = await self._source.recv()
        return frame


async def listen(track: MediaStreamTrack, on_frame: Callable[[av.AudioFrame], None]) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            on_frame(await track.recv())


async def plain_aiortc_row(bursts: int, period_s: float) -> Row:
    track = BurstTrack()
    detector = OnsetDetector(track.threshold)
    config = RTCConfiguration(iceServers=[])
    near, far = RTCPeerConnection(config), RTCPeerConnection(config)
    tasks: set[asyncio.Task[None]] = set()
    near.addTrack(track)

    @near.on("track")
    def _heard(remote: MediaStreamTrack) -> None:
        tasks.add(asyncio.create_task(listen(remote, detector)))

    @far.on("track")
    def _echo(remote: MediaStreamTrack) -> None:
        far.addTrack(EchoTrack(remote))  # takes the offered transceiver: sendrecv

    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await near.setLocalDescription(await near.createOffer())
            await far.setRemoteDescription(near.localDescription)
            await far.setLocalDescription(await far.createAnswer())
            await near.setRemoteDescription(far.localDescription)
            await detector.hearing.wait()  # connected, and the echo flows
        await play_bursts(track, bursts, period_s)
    finally:
        await near.close()
        await far.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return summarise("plain aiortc", track, detector, period_s)


# --- an example's echo: its `main(**options)`, called by a RemotePeer through the backend ----


def load_example(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def until(condition: Callable[[], Awaitable[bool]], bot: asyncio.Task[None]) -> None:
    """Poll `condition`; fail at once if the bot has stopped."""
    while not await condition():
        if bot.done():
            bot.result()  # its exception
            raise RuntimeError("the example returned before the peer could call it")
        await asyncio.sleep(0.05)


async def example_row(
    name: str,
    main: Callable[..., Awaitable[None]],
    server: DevServerProcess,
    workdir: Path,
    bursts: int,
    period_s: float,
    track: BurstTrack | None = None,
    detector: OnsetDetector | None = None,
    **extra: Any,
) -> Row:
    """`main(**options, **extra)` in a meeting of its own, called by a RemotePeer that plays
    `track` and listens with `detector` (the tone bursts by default)."""
    meeting_id = server.meeting("bot", ["alice"])
    bot_user = server.user_id("bot")
    options = {
        "url": server.url,
        "token": server.token("bot"),
        "meeting_id": meeting_id,
        "state_dir": workdir / f"state-{meeting_id}",
        "ice_host_addresses": ["127.0.0.1"],
        "meeting_check_interval": 0.3,  # notice the end promptly
    }
    track = track or BurstTrack()
    detector = detector or OnsetDetector(track.threshold)
    bot = asyncio.create_task(main(**options, **extra), name=name)
    peer = RemotePeer(
        server.url,
        server.token("alice"),
        meeting_id,
        server.user_id("alice"),
        video=False,
        audio_track=lambda: track,
        on_audio=detector,
    )

    async def bot_listed() -> bool:
        try:
            active = await peer.call(
                "meetings/webrtc/signaling/getActiveSessions", meetingId=meeting_id
            )
        except (ApiError, PeerTransportError):
            return False
        return any(a["userId"] == bot_user for a in active)

    async def hearing() -> bool:
        return peer.connected.is_set() and detector.frames > 0

    try:
        async with peer:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await until(bot_listed, bot)
                await peer.offer(bot_user)
                await until(hearing, bot)
            await play_bursts(track, bursts, period_s)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(server.end_meeting, meeting_id, "bot")
        try:
            async with asyncio.timeout(END_TIMEOUT_S):
                await bot
        except TimeoutError:
            print(f"# {name}: the example did not return once the meeting ended", file=sys.stderr)
        finally:
            bot.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bot
    return summarise(name, track, detector, period_s)


async def api_echo_row(server: DevServerProcess, workdir: Path, bursts: int, period: float) -> Row:
    echo_bot = load_example(ROOT / "examples" / "echo_bot.py")
    return await example_row("API echo", echo_bot.main, server, workdir, bursts, period)


# --- the pipecat row: examples/pipecat_echo.py (`async def main(**options)`, as echo_bot's) ---


def pipecat_unavailable() -> str | None:
    """Why the pipecat row cannot run here, or None."""
    if not PIPECAT_EXAMPLE.exists():
        return f"{PIPECAT_EXAMPLE.relative_to(ROOT)} does not exist"
    if importlib.util.find_spec("pipecat") is None:
        return "pipecat is not importable (not installed in this environment)"
    return None


def vad_watch(speech_level: float) -> Any:
    """A Pipecat observer of the pipeline's frames, on this process's monotonic clock: each
    VADUserStoppedSpeakingFrame (its stop_secs, when it was pushed), and, before each, when the
    last input audio frame with a sample above `speech_level` was pushed into the pipeline (the
    frame carrying the end of the speech)."""
    from pipecat.frames.frames import (  # type: ignore[import-not-found]
        InputAudioRawFrame,
        VADUserStoppedSpeakingFrame,
    )
    from pipecat.observers.base_observer import (  # type: ignore[import-not-found]
        BaseObserver,
        FramePushed,
    )

    class VadWatch(BaseObserver):  # type: ignore[misc]
        def __init__(self) -> None:
            # a frame's first push only: an input audio frame's is the input transport's, into
            # the pipeline; a stop frame's is the VAD's
            super().__init__(observe_every_push=False)
            self.stop_secs: float | None = None
            self.stops: list[int] = []  # pipeline clock (ns) of each VAD stop frame
            # (the end of speech's frame pushed, pipeline clock ns; the offset of its last
            # sample above speech_level in that frame, s; the stop frame pushed, pipeline clock
            # ns), per stop frame with a frame above speech_level since the previous one
            self.ends: list[tuple[int, float, int]] = []
            self._loud: tuple[int, float] | None = None  # the last such frame since the last stop
            self._seen: set[int] = set()
            self._offset_ns: int | None = None  # monotonic ns - pipeline clock ns (its minimum)

        async def on_push_frame(self, data: FramePushed) -> None:
            # observers run behind the pipeline: the pipeline's own clock dates the frame, and
            # the smallest (now - that) seen maps it onto time.monotonic
            offset = time.monotonic_ns() - data.timestamp
            if self._offset_ns is None or offset < self._offset_ns:
                self._offset_ns = offset
            frame = data.frame
            if isinstance(frame, InputAudioRawFrame):
                channels = max(1, frame.num_channels)
                pcm = np.abs(np.frombuffer(frame.audio, dtype=np.int16).astype(np.int32))
                loud = np.flatnonzero(pcm > speech_level)
                if loud.size:
                    self._loud = (data.timestamp, int(loud[-1]) // channels / frame.sample_rate)
                return
            if not isinstance(frame, VADUserStoppedSpeakingFrame):
                return
            sibling = getattr(frame, "broadcast_sibling_id", None)
            if frame.id in self._seen or sibling in self._seen:
                return  # the other copy of a broadcast
            self._seen.add(frame.id)
            self.stop_secs = float(frame.stop_secs)
            self.stops.append(data.timestamp)
            if self._loud is not None:
                self.ends.append((*self._loud, data.timestamp))
                self._loud = None

        def monotonic(self, stamp: int) -> float:
            return (stamp + (self._offset_ns or 0)) / 1e9

    return VadWatch()


async def pipecat_row(
    server: DevServerProcess, workdir: Path, bursts: int, given_stop_secs: float | None
) -> Row:
    reason = pipecat_unavailable()
    if reason is not None:
        return Row(name="pipecat echo", skipped=reason)
    speech = speech_pcm(PIPECAT_SPEECH, workdir)
    if speech is None:
        return Row(
            name="pipecat echo", skipped="espeak-ng is not installed (its bursts are speech)"
        )
    module = load_example(PIPECAT_EXAMPLE)
    extra: dict[str, Any] = {}
    track = BurstTrack(speech, floor=FLOOR_AMPLITUDE)
    watch = None
    if "observers" in inspect.signature(module.main).parameters:
        watch = vad_watch(END_SHARE * float(np.max(np.abs(speech.astype(np.int32)))))
        extra["observers"] = [watch]
    detector = OnsetDetector(track.threshold, floor=THRESHOLD * FLOOR_AMPLITUDE)
    expected_stop = given_stop_secs if given_stop_secs is not None else 1.0
    period = 2 * track.seconds + expected_stop + PIPECAT_PRE_ROLL_S + PIPECAT_GAP_S
    row = await example_row(
        "pipecat echo", module.main, server, workdir, bursts, period, track, detector, **extra
    )
    row.notes.append(f'bursts: "{PIPECAT_SPEECH}" ({track.seconds:.2f} s) every {period:.1f} s')
    stop_secs, source = given_stop_secs, "--vad-stop-secs"
    if watch is not None:
        row.vad_stops = len(watch.stops)
        if watch.stop_secs is not None and stop_secs is None:
            stop_secs, source = watch.stop_secs, "the VAD's stop frames"
    if stop_secs is None:
        source = "unknown: no VAD stop frame seen, pass --vad-stop-secs"
    row.vad_stop_secs, row.vad_stop_source = stop_secs, source
    starts = matched(track, detector.starts, period, after=track.ended)
    row.playback_starts_found = len(starts)
    if stop_secs is not None:
        crude = [1000 * (heard - track.ended[b] - stop_secs) for b, heard in starts]
        row.playback_after_end_minus_stop_p50_ms = pct(crude, 0.5)
        row.playback_after_end_minus_stop_p95_ms = pct(crude, 0.95)
    if watch is None:
        return row
    ends = [(watch.monotonic(lo), at, watch.monotonic(st)) for lo, at, st in watch.ends]
    delay, excluding, by_sample, incoming, after_stop = [], [], [], [], []
    for b, heard in starts:
        sent_end = track.ended[b]
        # the first stop after this utterance's end was sent, before its echo was heard
        end = next((e for e in ends if sent_end <= e[0] and e[2] <= heard), None)
        if end is None:
            continue
        loud, offset, stop = end
        delay.append(1000 * (stop - loud))
        excluding.append(1000 * ((heard - sent_end) - (stop - loud)))
        # the end of speech dated by its sample in its frame, as the other ends are dated
        by_sample.append(1000 * ((heard - sent_end) - (stop - loud - offset)))
        incoming.append(1000 * (loud - sent_end))
        after_stop.append(1000 * (heard - stop))
    row.utterances_measured = len(delay)
    row.vad_stop_delays_ms = [round(v, 1) for v in delay]
    row.vad_stop_delay_p50_ms = pct(delay, 0.5)
    row.vad_stop_delay_p95_ms = pct(delay, 0.95)
    if row.vad_stop_delay_p50_ms is not None and stop_secs is not None:
        row.vad_stop_delay_beyond_stop_secs_p50_ms = row.vad_stop_delay_p50_ms - 1000 * stop_secs
    row.excluding_vad_ms = [round(v, 1) for v in excluding]
    row.excluding_vad_p50_ms = pct(excluding, 0.5)
    row.excluding_vad_p95_ms = pct(excluding, 0.95)
    row.excluding_vad_by_sample_p50_ms = pct(by_sample, 0.5)
    row.end_sent_to_pipeline_p50_ms = pct(incoming, 0.5)
    row.vad_stop_to_heard_p50_ms = pct(after_stop, 0.5)
    return row


# --- output ---------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def print_rows(rows: list[Row], diff: float | None) -> None:
    header = (
        f"{'echo':<14} {'bursts heard/sent':>17} {'p50':>7} {'p95':>7} {'min':>7} {'max':>7} "
        f"{'first 5':>8} {'last 5':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        if r.skipped is not None:
            print(f"{r.name:<14} skipped: {r.skipped}")
            continue
        print(
            f"{r.name:<14} {f'{r.detected}/{r.sent}':>17} {ms(r.p50_ms):>7} {ms(r.p95_ms):>7} "
            f"{ms(r.min_ms):>7} {ms(r.max_ms):>7} {ms(r.first5_p50_ms):>8} "
            f"{ms(r.last5_p50_ms):>7}"
        )
    print("(first 5 / last 5: p50 of the first and of the last five bursts heard)")
    if diff is None:
        print("API echo - plain aiortc, p50: - (a row heard no burst)")
    else:
        verdict = "met" if diff <= TARGET_DIFF_MS else "NOT met"
        print(
            f"API echo - plain aiortc, p50: {diff:+.0f} ms "
            f"(target <= {TARGET_DIFF_MS:.0f} ms: {verdict})"
        )
    for r in rows:
        if r.name != "pipecat echo" or r.skipped is not None:
            continue
        print("pipecat echo: onset to onset includes the utterance and the VAD's delays")
        for note in r.notes:
            print(f"pipecat echo: {note}")
        stop = "-" if r.vad_stop_secs is None else f"{1000 * r.vad_stop_secs:.0f} ms"
        print(
            f"pipecat echo: VAD stop_secs = {stop} ({r.vad_stop_source}); echo playback starts "
            f"heard: {r.playback_starts_found}, VAD stop frames: "
            f"{'-' if r.vad_stops is None else r.vad_stops}, utterances measured: "
            f"{r.utterances_measured}"
        )
        if r.vad_stops is None:
            print(
                "pipecat echo: no observer (main takes no observers=), so only "
                "(start of the echo's playback - end of the speech sent) - stop_secs: "
                f"p50 {ms(r.playback_after_end_minus_stop_p50_ms)}, "
                f"p95 {ms(r.playback_after_end_minus_stop_p95_ms)} (counts the incoming leg "
                "and the VAD's analysis in)"
            )
            continue
        print(
            "pipecat echo, the VAD's own stop delay (end of speech's frame into the pipeline -> "
            f"VAD stop frame): p50 {ms(r.vad_stop_delay_p50_ms)}, "
            f"p95 {ms(r.vad_stop_delay_p95_ms)}; of which stop_secs {stop}, beyond it (p50) "
            f"{ms(r.vad_stop_delay_beyond_stop_secs_p50_ms)}"
        )
        print(
            "pipecat echo, excluding the VAD's stop delay ((echo heard - end of speech sent) - "
            f"that delay): p50 {ms(r.excluding_vad_p50_ms)}, p95 {ms(r.excluding_vad_p95_ms)}"
        )
        over = r.excluding_vad_minus_plain_p50_ms
        if over is None:
            print("pipecat echo excluding the VAD - plain aiortc, p50: - (nothing to compare)")
        else:
            verdict = "met" if over <= PIPECAT_TARGET_MS else "NOT met"
            print(
                f"pipecat echo excluding the VAD - plain aiortc, p50: {over:+.0f} ms "
                f"(target <= {PIPECAT_TARGET_MS:.0f} ms: {verdict})"
            )
        print(
            "pipecat echo, the same with the end of speech in the pipeline dated by its sample "
            f"(as the other ends are), p50: {ms(r.excluding_vad_by_sample_p50_ms)}, less plain "
            f"aiortc's p50: {ms(r.excluding_vad_by_sample_minus_plain_p50_ms)}"
        )
        print(
            "pipecat echo, split, p50: end of speech sent -> its frame into the pipeline "
            f"{ms(r.end_sent_to_pipeline_p50_ms)}; VAD stop frame -> echo heard "
            f"{ms(r.vad_stop_to_heard_p50_ms)}"
        )


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bursts", type=int, default=30)
    parser.add_argument("--period", type=float, default=1.0, help="seconds between bursts")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--pipecat",
        action="store_true",
        help="add the examples/pipecat_echo.py row (skipped, with the reason, if unavailable)",
    )
    parser.add_argument(
        "--vad-stop-secs",
        type=float,
        help="the pipecat example's VAD stop_secs (by default read from the VAD's stop frames)",
    )
    args = parser.parse_args(argv)
    install_patches()  # as agent.join does: the same aiortc for every row
    restrict_host_addresses(["127.0.0.1"])
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-m2e-") as tmp:
        workdir = Path(tmp)
        with DevServerProcess(workdir / "devserver.sqlite") as server:
            started = time.monotonic()
            rows.append(await api_echo_row(server, workdir, args.bursts, args.period))
            print(f"# API echo: {time.monotonic() - started:.0f} s", file=sys.stderr)
            started = time.monotonic()
            rows.append(await plain_aiortc_row(args.bursts, args.period))
            print(f"# plain aiortc: {time.monotonic() - started:.0f} s", file=sys.stderr)
            if args.pipecat:
                started = time.monotonic()
                rows.append(await pipecat_row(server, workdir, args.bursts, args.vad_stop_secs))
                print(f"# pipecat echo: {time.monotonic() - started:.0f} s", file=sys.stderr)
    api, plain = rows[0], rows[1]
    diff = None
    if api.p50_ms is not None and plain.p50_ms is not None:
        diff = api.p50_ms - plain.p50_ms
    for r in rows[2:]:
        if r.excluding_vad_p50_ms is not None and plain.p50_ms is not None:
            r.excluding_vad_minus_plain_p50_ms = r.excluding_vad_p50_ms - plain.p50_ms
            r.pipecat_target_met = r.excluding_vad_minus_plain_p50_ms <= PIPECAT_TARGET_MS
        if r.excluding_vad_by_sample_p50_ms is not None and plain.p50_ms is not None:
            r.excluding_vad_by_sample_minus_plain_p50_ms = (
                r.excluding_vad_by_sample_p50_ms - plain.p50_ms
            )
    if args.json:
        print(
            json.dumps(
                {
                    "rows": [asdict(r) for r in rows],
                    "api_minus_plain_p50_ms": diff,
                    "target_ms": TARGET_DIFF_MS,
                    "pipecat_target_ms": PIPECAT_TARGET_MS,
                },
                indent=2,
            )
        )
    else:
        print_rows(rows, diff)
    return 0


if __name__ == "__main__":
    sys.exit(run_async(main()))
