"""The Pipecat transport (agent.integrations.pipecat) against the dev backend, with real aiortc
remote peers: examples/pipecat_echo.py sends a spoken utterance back once Silero VAD marks its end;
an interruption clears the audio queued in the meeting; participants' joins and leaves are the
transport's events, by user id; the meeting's end ends the pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
from pipecat.frames.frames import (
    InterruptionFrame,
    OutputAudioRawFrame,
    UserAudioRawFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.workers.runner import WorkerRunner

import agent
from agent.integrations.pipecat import ConnvoParams, ConnvoTransport
from agent.media.pcm import AUDIO_TIME_BASE, SAMPLE_RATE, SAMPLES_PER_FRAME, tone_pcm
from agent.media.sources import Pacer
from tests.agent.conftest import Meeting, loopback_only, meeting
from tests.examples.test_examples import (
    SPEECH_RMS,
    bot_listed,
    end_meeting,
    example,
    options,
    rms,
)
from tests.support.waiting import poll_until

# the agent's tests' fixtures: ICE on 127.0.0.1 only (autouse), a meeting on the dev backend
__all__ = ["loopback_only", "meeting"]

TIMEOUT = 30
QUIET_RMS = 100
UTTERANCE = "hello there, this is a test"


@contextlib.asynccontextmanager
async def cancelled_at_exit(bot: asyncio.Task[Any]) -> AsyncIterator[asyncio.Task[Any]]:
    """A bot task still running when the test fails is cancelled and awaited."""
    try:
        yield bot
    finally:
        if not bot.done():
            bot.cancel()
            await asyncio.wait({bot})


def espeak(text: str, path: Path) -> bytes:
    """`text` spoken by espeak-ng, as 48 kHz mono s16."""
    exe = shutil.which("espeak-ng")
    assert exe is not None, "espeak-ng is required (apt-get install espeak-ng)"
    subprocess.run([exe, "-v", "en-us", "-w", str(path), text], check=True)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    pcm = bytearray()
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                pcm += bytes(out.planes[0])[: out.samples * 2]
    for out in resampler.resample(None):
        pcm += bytes(out.planes[0])[: out.samples * 2]
    return bytes(pcm)


class SpeechTrack(AudioStreamTrack):
    """Half a second of silence, the utterance, then silence for ever; 20 ms frames in real time.
    `spoken` is set once the last frame of the utterance is sent."""

    def __init__(self, pcm: bytes, lead_s: float = 0.5) -> None:
        super().__init__()
        frame_bytes = SAMPLES_PER_FRAME * 2
        lead = bytes(int(lead_s * SAMPLE_RATE) * 2)
        speech = (lead + pcm).ljust(-(-len(lead + pcm) // frame_bytes) * frame_bytes, b"\0")
        self._chunks = [speech[i : i + frame_bytes] for i in range(0, len(speech), frame_bytes)]
        self._silence = bytes(frame_bytes)
        self._pacer = Pacer(SAMPLES_PER_FRAME, SAMPLE_RATE)
        self.spoken = asyncio.Event()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pts = await self._pacer.next_pts()
        index = pts // SAMPLES_PER_FRAME
        if index >= len(self._chunks):
            self.spoken.set()
        frame = av.AudioFrame(format="s16", layout="mono", samples=SAMPLES_PER_FRAME)
        frame.planes[0].update(self._chunks[index] if index < len(self._chunks) else self._silence)
        frame.pts = pts
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = AUDIO_TIME_BASE
        return frame


class EchoListener:
    """What the remote peer hears after it stopped speaking: `heard` once half a second of it is
    more than silence (the agent sends silence unless it plays something)."""

    def __init__(self, track: SpeechTrack) -> None:
        self.track = track
        self.heard = asyncio.Event()
        self.loud_frames = 0

    def __call__(self, frame: Any) -> None:
        if self.track.spoken.is_set() and rms(frame) > SPEECH_RMS:
            self.loud_frames += 1
            if self.loud_frames >= 25:
                self.heard.set()


class PipelineWatch(BaseObserver):
    """The VAD's speaking frames and the user audio that the pipeline carries."""

    def __init__(self) -> None:
        super().__init__()
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.audio_from: set[tuple[str, int, int]] = set()  # (user id, sample rate, channels)

    async def on_push_frame(self, data: FramePushed) -> None:
        frame = data.frame
        if isinstance(frame, UserAudioRawFrame):
            self.audio_from.add((frame.user_id, frame.sample_rate, frame.num_channels))
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self.started.set()
        elif isinstance(frame, VADUserStoppedSpeakingFrame) and self.started.is_set():
            self.stopped.set()


async def test_the_echo_example_sends_an_utterance_back_once_the_vad_marks_its_end(
    meeting: Meeting, tmp_path: Path
) -> None:
    speech = await asyncio.to_thread(espeak, UTTERANCE, tmp_path / "speech.wav")
    track = SpeechTrack(speech)
    listener = EchoListener(track)
    watch = PipelineWatch()
    main = example("pipecat_echo").main(observers=[watch], **options(meeting, tmp_path))
    async with cancelled_at_exit(asyncio.create_task(main)) as bot:
        async with meeting.peer(
            "alice", video=False, audio_track=lambda: track, on_audio=listener
        ) as alice:
            async with asyncio.timeout(TIMEOUT):
                await bot_listed(meeting, alice)
                await alice.offer(meeting.users["bot"])
                await alice.connected.wait()
                await watch.started.wait()
                await watch.stopped.wait()
                await listener.heard.wait()
        await end_meeting(meeting, bot)
    # alice's audio entered the pipeline as hers, at the VAD's 16 kHz, mono
    assert watch.audio_from == {(meeting.users["alice"], 16_000, 1)}


class Recorder:
    """The transport's events, as (name, args), with an asyncio event per name."""

    def __init__(self, transport: ConnvoTransport, names: list[str]) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._events: dict[str, asyncio.Event] = {name: asyncio.Event() for name in names}
        for name in names:
            transport.add_event_handler(name, self._handler(name))

    def _handler(self, name: str) -> Callable[..., Any]:
        async def handle(transport: ConnvoTransport, *args: Any) -> None:
            self.calls.append((name, args))
            self._events[name].set()

        return handle

    async def wait(self, name: str, *args: Any) -> None:
        while (name, args) not in self.calls:
            self._events[name].clear()
            await self._events[name].wait()

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for called, args in self.calls if called == name]


class Heard:
    """Counts the audio frames a peer receives; `wait()` returns once `frames` arrived."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self.received = 0
        self._enough = asyncio.Event()

    def __call__(self, frame: Any) -> None:
        self.received += 1
        if self.received >= self.frames:
            self._enough.set()

    async def wait(self) -> None:
        await self._enough.wait()


def run_pipeline(transport: ConnvoTransport) -> tuple[PipelineWorker, asyncio.Task[None]]:
    """transport.input() -> transport.output(), run until it ends."""
    worker = PipelineWorker(
        Pipeline([transport.input(), transport.output()]),
        params=PipelineParams(audio_in_sample_rate=16_000, audio_out_sample_rate=24_000),
        enable_rtvi=False,
        idle_timeout_secs=None,
    )

    async def run() -> None:
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        await runner.run()

    return worker, asyncio.create_task(run())


async def test_participants_joining_and_leaving_are_events_with_their_user_id(
    meeting: Meeting, tmp_path: Path
) -> None:
    # discovery notices promptly that a participant left
    transport = ConnvoTransport(discovery_interval=0.5, **options(meeting, tmp_path))
    events = Recorder(
        transport,
        [
            "on_connected",
            "on_first_participant_joined",
            "on_participant_joined",
            "on_client_connected",
            "on_audio_track_subscribed",
            "on_participant_left",
            "on_meeting_ended",
            "on_disconnected",
        ],
    )
    _, bot = run_pipeline(transport)
    alice_id, bob_id = meeting.users["alice"], meeting.users["bob"]
    async with cancelled_at_exit(bot):
        async with asyncio.timeout(TIMEOUT):
            async with meeting.peer("alice", video=False) as alice:
                await bot_listed(meeting, alice)
                await alice.offer(meeting.users["bot"])
                await events.wait("on_participant_joined", alice_id)
                await events.wait("on_audio_track_subscribed", alice_id)
                bob_heard = Heard(frames=50)
                async with meeting.peer("bob", video=False, on_audio=bob_heard) as bob:
                    await bob.offer(meeting.users["bot"])
                    await events.wait("on_participant_joined", bob_id)
                    # a second with the bot: the agent's discovery has seen bob's session, and
                    # so notices when it goes
                    await bob_heard.wait()
                    assert sorted(transport.get_participants()) == sorted([alice_id, bob_id])
                await events.wait("on_participant_left", bob_id, "remote left")
            await events.wait("on_participant_left", alice_id, "remote left")
        assert transport.get_participants() == []
        await end_meeting(meeting, bot)
    assert events.named("on_connected") == [()]
    assert events.named("on_first_participant_joined") == [(alice_id,)]  # not bob: alice was in
    assert events.named("on_participant_joined") == [(alice_id,), (bob_id,)]
    assert events.named("on_client_connected") == [({"id": alice_id},), ({"id": bob_id},)]
    assert transport.get_client_id({"id": alice_id}) == alice_id
    assert events.named("on_meeting_ended") == [("meeting concluded",)]
    assert events.named("on_disconnected") == [()]


async def test_an_interruption_clears_the_audio_queued_in_the_meeting(
    meeting: Meeting, tmp_path: Path
) -> None:
    # five seconds may wait in the meeting: only clearing it stops the tone at once
    transport = ConnvoTransport(
        params=ConnvoParams(audio_out_queue_size_ms=5_000), **options(meeting, tmp_path)
    )
    events = Recorder(transport, ["on_participant_joined"])
    worker, bot = run_pipeline(transport)
    loud = asyncio.Event()
    quiet = asyncio.Event()
    quiet_run = 0
    interrupted = False

    def hear(frame: Any) -> None:
        nonlocal quiet_run
        level = rms(frame)
        if level > SPEECH_RMS:
            loud.set()
        quiet_run = quiet_run + 1 if level < QUIET_RMS else 0
        if interrupted and quiet_run >= 15:  # 300 ms of silence
            quiet.set()

    tone = np.tile(tone_pcm(), 10)  # ten seconds at 48 kHz
    async with cancelled_at_exit(bot):
        async with meeting.peer("alice", video=False, on_audio=hear) as alice:
            async with asyncio.timeout(TIMEOUT):
                await bot_listed(meeting, alice)
                await alice.offer(meeting.users["bot"])
                await events.wait("on_participant_joined", meeting.users["alice"])
                await worker.queue_frame(
                    OutputAudioRawFrame(tone.tobytes(), sample_rate=SAMPLE_RATE, num_channels=1)
                )
                await loud.wait()
                assert transport.meeting.audio_out.queued_seconds > 1.0
                interrupted = True
                await worker.queue_frame(InterruptionFrame())
            async with asyncio.timeout(2.0):  # the tone had seconds left in the meeting
                await quiet.wait()
        assert transport.meeting.audio_out.cleared_seconds > 1.0
        await end_meeting(meeting, bot)


@pytest.mark.parametrize("bad", [{"audio_in_channels": 3}, {"audio_out_queue_size_ms": 0}])
def test_bad_params_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ConnvoParams(**bad)


async def test_a_meeting_or_join_arguments_not_both(tmp_path: Path) -> None:
    ready = agent.join("http://127.0.0.1:9", "token", "meeting", state_dir=tmp_path)
    assert ConnvoTransport(meeting=ready).meeting is ready
    with pytest.raises(ValueError, match="not both"):
        ConnvoTransport(meeting=ready, url="http://127.0.0.1:9")
    await ready.leave()  # closes its backend client


def transport_tasks(transport: ConnvoTransport) -> list[asyncio.Task[Any]]:
    """The tasks the transport made (each is named after it)."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(f"{transport}::")]


async def test_cancelling_the_pipeline_leaves_the_meeting_and_ends_the_transports_tasks(
    meeting: Meeting, tmp_path: Path
) -> None:
    transport = ConnvoTransport(**options(meeting, tmp_path))
    events = Recorder(transport, ["on_participant_joined", "on_disconnected"])
    worker, bot = run_pipeline(transport)
    async with cancelled_at_exit(bot):
        async with meeting.peer("alice", video=False) as alice:
            async with asyncio.timeout(TIMEOUT):
                await bot_listed(meeting, alice)
                await alice.offer(meeting.users["bot"])
                await events.wait("on_participant_joined", meeting.users["alice"])
                assert len(transport_tasks(transport)) == 2  # the meeting's, alice's audio
                await worker.cancel(reason="test")
                await bot
                assert transport_tasks(transport) == []
                assert events.named("on_disconnected") == [()]

                async def bot_gone() -> bool:
                    active = await alice.call(
                        "meetings/webrtc/signaling/getActiveSessions", meetingId=meeting.id
                    )
                    return all(a["userId"] != meeting.users["bot"] for a in active)

                await poll_until(bot_gone)


async def test_a_refused_join_is_a_pipeline_error_and_ends_the_pipeline(
    meeting: Meeting, tmp_path: Path
) -> None:
    transport = ConnvoTransport(**{**options(meeting, tmp_path), "meeting_id": "no-such-meeting"})
    worker, bot = run_pipeline(transport)
    errors: list[str] = []

    async def on_error(worker: PipelineWorker, frame: Any) -> None:
        errors.append(frame.error)

    worker.add_event_handler("on_pipeline_error", on_error)
    async with cancelled_at_exit(bot):
        async with asyncio.timeout(TIMEOUT):
            await bot  # ended by the transport
    assert len(errors) == 1 and "could not join the meeting" in errors[0]
    assert transport_tasks(transport) == []
