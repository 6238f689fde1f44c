"""Fixtures for the recorder and transcriber: a meeting on a real dev backend, synthesised speech,
and agents of those roles running in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import subprocess
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from agent.config import AgentSettings
from agent.convex import ConvexClient, RetryPolicy, TokenSource
from agent.peer.ice import restrict_host_addresses
from agent.peer.participant import ParticipantSettings
from agent.roles.bot import participant_settings as role_participant_settings
from agent.signaling.api import ConnvoApi
from tests.agent import conftest as agent_conftest
from tests.agent.conftest import Meeting

meeting = agent_conftest.meeting  # the same fixture as tests/agent

SPEECH_RATE = 22_050  # espeak-ng's output rate


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses(None)


@dataclass
class Speech:
    """A WAV file: `lead` s of silence, then each sentence followed by `pause` s of silence."""

    path: Path
    duration: float  # seconds
    sentences: list[tuple[float, float]]  # (start, end) of each sentence in the file, seconds


def _espeak(text: str, path: Path, voice: str = "en-us") -> np.ndarray:
    exe = shutil.which("espeak-ng")
    assert exe is not None, "espeak-ng is required (apt-get install espeak-ng)"
    subprocess.run([exe, "-v", voice, "-s", "140", "-w", str(path), text], check=True)
    with wave.open(str(path)) as w:
        assert w.getframerate() == SPEECH_RATE and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


def synthesise(
    directory: Path,
    sentences: list[str],
    lead: float = 1.0,
    pause: float = 1.5,
    voice: str = "en-us",
) -> Speech:
    parts = [np.zeros(int(lead * SPEECH_RATE), dtype=np.int16)]
    spans = []
    t = lead
    for i, text in enumerate(sentences):
        audio = _espeak(text, directory / f"part{i}.wav", voice)
        # trim espeak's own leading/trailing silence so the spans are exact
        loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > 300)
        audio = audio[loud[0] : loud[-1] + 1]
        spans.append((t, t + len(audio) / SPEECH_RATE))
        t += len(audio) / SPEECH_RATE + pause
        parts += [audio, np.zeros(int(pause * SPEECH_RATE), dtype=np.int16)]
    samples = np.concatenate(parts)
    path = directory / "speech.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SPEECH_RATE)
        w.writeframes(samples.tobytes())
    return Speech(path, len(samples) / SPEECH_RATE, spans)


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    return synthesise(
        tmp_path_factory.mktemp("speech"),
        ["hello world, this is the first sentence.", "and now the weather report for today."],
    )


@pytest.fixture(scope="session")
def korean_speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    # "we will start the meeting today", "the weather is really nice"
    return synthesise(
        tmp_path_factory.mktemp("korean"),
        ["오늘 회의를 시작하겠습니다.", "날씨가 정말 좋습니다."],
        voice="ko",
    )


@pytest.fixture(scope="session")
def short_speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    return synthesise(
        tmp_path_factory.mktemp("short"), ["good morning everyone."], lead=0.5, pause=1.0
    )


def participant_settings(
    meeting: Meeting,
    state_dir: Path,
    role: Literal["recorder", "transcriber"] = "recorder",
) -> ParticipantSettings:
    """What `connvo-agent run --role ROLE` would use, from the same settings mapping."""
    settings = AgentSettings(
        url=meeting.server.url,
        token=meeting.tokens["bot"],
        meeting=meeting.id,
        role=role,
        state_dir=state_dir,
        poll_idle_interval=0.2,
        discovery_interval=2.0,
    )
    return role_participant_settings(settings)


@pytest.fixture
async def clients() -> AsyncIterator[Any]:
    made: list[ConvexClient] = []

    def make(meeting: Meeting, name: str = "bot", attempts: int = 6) -> ConnvoApi:
        client = ConvexClient(
            meeting.server.url,
            TokenSource(value=meeting.tokens[name]),
            retry=RetryPolicy(max_attempts=attempts),
        )
        made.append(client)
        return ConnvoApi(client)

    yield make
    for client in made:
        await client.aclose()


async def start(agent: Any) -> tuple[asyncio.Task[None], asyncio.Event]:
    """Run a Recorder or Transcriber until the returned event is set; returns once joined."""
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    joined = asyncio.create_task(agent.participant.joined.wait())
    await asyncio.wait({task, joined}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert agent.participant.joined.is_set(), "agent did not join within 15 s"
    return task, stop


async def finish(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()
    async with asyncio.timeout(20):
        await task


async def track_ended(track: Any) -> None:
    """Wait until a MediaPlayer track has played its file to the end.

    `track` is a sender's track, read when the test gets there: aiortc's sender lets go of its
    track (None) once the track has ended, so None means it already has.
    """
    if track is None or track.readyState == "ended":
        return
    ended = asyncio.Event()
    track.on("ended", ended.set)
    if track.readyState != "ended":
        await ended.wait()


def transcripts(db: Path, meeting_id: str) -> list[dict[str, Any]]:
    """The chunks the dev backend stored for a meeting (read-only, straight from its SQLite db)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        con.row_factory = sqlite3.Row
        rows = con.execute(
            "SELECT * FROM transcripts WHERE meeting_id = ? ORDER BY sequence", (meeting_id,)
        ).fetchall()
    return [dict(r) for r in rows]
