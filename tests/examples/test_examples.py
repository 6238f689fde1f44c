"""The examples/ bots, run as a user runs them (their `main`), against the dev backend, with a real
aiortc remote peer that speaks and listens."""

from __future__ import annotations

import asyncio
import importlib.util
import wave
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from agent.media.sources import tone_track
from tests.agent.conftest import Meeting, loopback_only, meeting
from tests.support.waiting import poll_until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT = 30
SPEECH_RMS = 1000  # the tone sent is ~5800 RMS; the agent's silence is 0

# the agent's tests' fixtures: ICE on 127.0.0.1 only (autouse), a meeting on the dev backend
__all__ = ["loopback_only", "meeting"]


def example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def options(meeting: Meeting, tmp_path: Path) -> dict[str, Any]:
    return {
        "url": meeting.server.url,
        "token": meeting.tokens["bot"],
        "meeting_id": meeting.id,
        "state_dir": tmp_path / "state",
        "ice_host_addresses": ["127.0.0.1"],
        "meeting_check_interval": 0.3,  # notice the end promptly
    }


def rms(frame: Any) -> float:
    samples = np.frombuffer(bytes(frame.planes[0]), dtype=np.int16)[: frame.samples]
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if len(samples) else 0.0


class Listener:
    """What a remote peer hears: an event set once it hears more than silence."""

    def __init__(self) -> None:
        self.heard = asyncio.Event()
        self.loud_frames = 0

    def __call__(self, frame: Any) -> None:
        if rms(frame) > SPEECH_RMS:
            self.loud_frames += 1
            self.heard.set()


async def bot_listed(meeting: Meeting, peer: Any) -> None:
    """Wait until the bot's own session is listed: it has joined and can be called."""

    async def listed() -> bool:
        active = await peer.call(
            "meetings/webrtc/signaling/getActiveSessions", meetingId=meeting.id
        )
        return any(a["userId"] == meeting.users["bot"] for a in active)

    await poll_until(listed)


async def end_meeting(meeting: Meeting, bot: asyncio.Task[Any]) -> None:
    """The host ends the meeting; the example notices and returns."""
    await asyncio.to_thread(meeting.server.end_meeting, meeting.id, "bot")
    async with asyncio.timeout(TIMEOUT):
        await bot


async def test_echo_bot_sends_each_participant_their_own_audio(
    meeting: Meeting, tmp_path: Path
) -> None:
    bot = asyncio.create_task(example("echo_bot").main(**options(meeting, tmp_path)))
    listener = Listener()
    async with meeting.peer(
        "alice", video=False, audio_track=tone_track, on_audio=listener
    ) as alice:
        async with asyncio.timeout(TIMEOUT):
            await bot_listed(meeting, alice)
            await alice.offer(meeting.users["bot"])
            await alice.connected.wait()
            await listener.heard.wait()  # the agent sends silence unless it echoes
    await end_meeting(meeting, bot)


async def test_greeter_plays_its_file_to_each_newcomer(
    meeting: Meeting, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    greeting = tmp_path / "hello.wav"
    write_tone_wav(greeting, seconds=1.0)
    bot = asyncio.create_task(example("greeter").main(greeting, **options(meeting, tmp_path)))
    for name in ("alice", "bob"):
        listener = Listener()
        async with meeting.peer(name, video=False, on_audio=listener) as peer:
            async with asyncio.timeout(TIMEOUT):
                await bot_listed(meeting, peer)
                await peer.offer(meeting.users["bot"])
                await peer.connected.wait()
                await listener.heard.wait()
    await end_meeting(meeting, bot)
    # each greeted once, by the display name the backend knows (the dev backend's: the name)
    assert capsys.readouterr().out.splitlines() == ["greeting alice", "greeting bob"]


async def test_recorder_writes_a_file_per_participant(meeting: Meeting, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    bot = asyncio.create_task(example("recorder").main(out, **options(meeting, tmp_path)))
    async with meeting.peer("alice", video=False, audio_track=tone_track) as alice:
        async with asyncio.timeout(TIMEOUT):
            await bot_listed(meeting, alice)
            await alice.offer(meeting.users["bot"])
            await alice.connected.wait()
            user = meeting.users["alice"]
            await poll_until(lambda: asyncio.to_thread(_recorded_seconds, out, user, 1.0))
    await end_meeting(meeting, bot)
    (path,) = out.glob(f"{meeting.users['alice']}-*.wav")
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16_000)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    assert len(pcm) >= 16_000  # at least the second waited for
    loud = np.sqrt(np.mean(pcm[-8_000:].astype(np.float64) ** 2))
    assert loud > SPEECH_RMS  # the tone, not silence


def _recorded_seconds(out: Path, user_id: str, seconds: float) -> bool:
    # the WAV header is written at the end; the data so far is the file's size
    return any(p.stat().st_size >= 44 + seconds * 32_000 for p in out.glob(f"{user_id}-*.wav"))


def write_tone_wav(path: Path, *, seconds: float, hz: float = 1000.0, rate: int = 24_000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (np.sin(2 * np.pi * hz * t) * 0.3 * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())
