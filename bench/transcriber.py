"""Media pipeline costs of the recorder and the transcriber, in CPU time (fair on a shared machine).

    python bench/transcriber.py [--streams 4] [--seconds 20] [--json]
        [--engine pocketsphinx|vosk|faster-whisper] [--model DIR] [--language en-US]
        [--no-recorder]

- Transcriber: N streams of synthesised speech (espeak-ng, looped to `--seconds`; English, or
  Korean when `--language` is ko-*), fed as aiortc delivers them (48 kHz stereo s16, 20 ms frames)
  through the real pipeline (resample, WebRTC VAD, utterance cutting, the engine: pocketsphinx by
  default, vosk or faster-whisper with `--model`), interleaved frame by frame as concurrent calls
  would be. Reports the real-time factor per stream (CPU seconds spent, in every thread of the
  process, / seconds of audio) and the engine's load time.
- Recorder: the CPU cost of writing one remote stream (Opus/Ogg audio + VP8/WebM video at 640x480
  30 fps, aiortc's default test-track size, and at 320x240 15 fps) with the real TrackWriter, and
  so how many such streams one core records in real time without falling behind (= dropping
  frames): 1 / (CPU seconds per second of media), rounded down.

Decoding the RTP streams (aiortc's work, the same for every role) is not included.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.media.recording import TrackWriter
from agent.media.speech import ENGINES, SpeechEngineError, create_engine
from agent.roles.transcriber import StreamTranscriber, TranscriberSettings

TEXTS = {  # language -> (espeak-ng voice, text)
    "en": (
        "en-us",
        "hello everyone, thanks for joining the meeting. today we will look at the quarterly "
        "numbers and then plan the next release.",
    ),
    "ko": (
        "ko",
        # the same, in Korean
        "여러분 안녕하세요, 회의에 참석해 주셔서 감사합니다. 오늘은 분기 실적을 살펴보고 "
        "다음 출시를 계획하겠습니다.",
    ),
}


def speech_frames(directory: Path, seconds: float, language: str = "en-US") -> list[Any]:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("bench/transcriber.py needs espeak-ng (apt-get install espeak-ng)")
    voice, text = TEXTS.get(language.split("-")[0].lower(), TEXTS["en"])
    wav = directory / "speech.wav"
    subprocess.run([exe, "-v", voice, "-s", "150", "-w", str(wav), text], check=True)
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=48_000, frame_size=960)
    with av.open(str(wav)) as c:
        pcm = np.concatenate(
            [
                f.to_ndarray().reshape(-1)
                for frame in c.decode(audio=0)
                for f in resampler.resample(frame)
            ]
        )
    pause = np.zeros(48_000 * 2, dtype=np.int16)  # 1 s of stereo silence between repeats
    loop = np.concatenate([pcm, pause])
    total = int(seconds * 48_000) * 2
    pcm = np.resize(loop, total)
    frames = []
    for i in range(0, total - 1920 + 1, 1920):
        f = av.AudioFrame.from_ndarray(
            pcm[i : i + 1920].reshape(1, -1), format="s16", layout="stereo"
        )
        f.sample_rate = 48_000
        f.pts = i // 2
        f.time_base = Fraction(1, 48_000)
        frames.append(f)
    return frames


def bench_transcriber(
    streams: int,
    seconds: float,
    directory: Path,
    engine_name: str = "pocketsphinx",
    model: Path | None = None,
    language: str = "en-US",
) -> dict[str, Any]:
    frames = speech_frames(directory, seconds, language)
    started = time.perf_counter()
    try:
        engine = create_engine(engine_name, model, language)
    except SpeechEngineError as exc:
        raise SystemExit(str(exc)) from None
    load = time.perf_counter() - started
    settings = TranscriberSettings(language=language)
    pipes = [
        StreamTranscriber(engine.recognizer(), "m", f"speaker{i}", f"s{i}", settings, interim=False)
        for i in range(streams)
    ]
    cpu = [0.0] * streams
    chunks = [0] * streams
    texts: list[str] = []  # the first stream's first utterances, to see what the engine makes
    t0 = 1_700_000_000.0
    for n in range(0, len(frames) + 10, 10):  # 200 ms batches, as the role hands them over
        batch = [(f, t0 + (n + k + 1) * 0.02) for k, f in enumerate(frames[n : n + 10])]
        for i, pipe in enumerate(pipes):
            started = time.process_time()
            out = pipe.push(batch) if batch else pipe.finish()
            cpu[i] += time.process_time() - started
            chunks[i] += len(out)
            if i == 0:
                texts += [c.text for c in out]
    audio = len(frames) * 0.02
    return {
        "engine": engine.name,
        "model": str(model) if model else None,
        "language": language,
        "load_seconds": round(load, 2),
        "streams": streams,
        "audio_seconds_per_stream": round(audio, 1),
        "rtf_per_stream": [round(c / audio, 3) for c in cpu],
        "utterances_per_stream": chunks,
        "texts": texts[:3],
        "streams_per_core": int(1 / (sum(cpu) / streams / audio)),
    }


def bench_recorder(
    width: int, height: int, fps: int, seconds: float, directory: Path
) -> dict[str, Any]:
    audio = TrackWriter(directory / f"a{width}.ogg", "audio")
    video = TrackWriter(directory / f"v{width}.webm", "video")
    tone = (np.sin(np.arange(960) * 2 * np.pi * 440 / 48_000) * 8000).astype(np.int16)
    stereo = np.repeat(tone, 2).reshape(1, -1)
    # a moving gradient with some texture, converted once per distinct frame (not timed)
    base = np.add.outer(np.arange(height), np.arange(width)).astype(np.uint8)
    pictures = [
        av.VideoFrame.from_ndarray(
            np.stack([np.roll(base, 4 * i, axis=1), base, np.roll(base, -3 * i, axis=0)], axis=-1),
            format="rgb24",
        ).reformat(format="yuv420p")
        for i in range(fps)
    ]
    cpu = 0.0
    for n in range(int(seconds * 50)):
        f = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        f.sample_rate = 48_000
        f.pts, f.time_base = n * 960, Fraction(1, 48_000)
        started = time.process_time()
        audio.write(f)
        cpu += time.process_time() - started
        if n % (50 // fps) == 0 or fps >= 50:
            k = n * fps // 50
            picture = pictures[k % fps]
            picture.pts, picture.time_base = k * (90_000 // fps), Fraction(1, 90_000)
            started = time.process_time()
            video.write(picture)
            cpu += time.process_time() - started
    started = time.process_time()
    audio.close()
    video.close()
    cpu += time.process_time() - started
    per_second = cpu / seconds
    return {
        "video": f"{width}x{height}@{fps}",
        "cpu_seconds_per_media_second": round(per_second, 4),
        "streams_per_core": int(1 / per_second),
        "video_seconds_written": round(video.duration, 2),
        "audio_seconds_written": round(audio.duration, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--engine", choices=ENGINES, default="pocketsphinx")
    parser.add_argument("--model", type=Path, help="the engine's model directory")
    parser.add_argument(
        "--language",
        default="en-US",
        help="the engine's language; ko-* also makes the speech Korean",
    )
    parser.add_argument("--no-recorder", action="store_true", help="only the transcriber")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        result: dict[str, Any] = {
            "transcriber": bench_transcriber(
                args.streams, args.seconds, directory, args.engine, args.model, args.language
            ),
            "recorder": []
            if args.no_recorder
            else [
                bench_recorder(640, 480, 30, args.seconds, directory),
                bench_recorder(320, 240, 15, args.seconds, directory),
            ],
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    t = result["transcriber"]
    print(
        f"transcriber ({t['engine']}, {t['language']}, loaded in {t['load_seconds']} s): "
        f"{t['streams']} streams x {t['audio_seconds_per_stream']} s of speech"
    )
    print(f"  first utterances: {t['texts']}")
    for i, rtf in enumerate(t["rtf_per_stream"]):
        print(
            f"  stream {i}: real-time factor {rtf:.3f}, {t['utterances_per_stream'][i]} utterances"
        )
    print(f"  => about {t['streams_per_core']} streams per core in real time")
    for r in result["recorder"]:
        print(
            f"recorder, audio + video {r['video']}: {r['cpu_seconds_per_media_second']:.3f} "
            f"CPU s per media s => {r['streams_per_core']} streams per core without "
            "falling behind"
        )


if __name__ == "__main__":
    main()
