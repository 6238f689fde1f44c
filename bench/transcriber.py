"""Media pipeline costs of the recorder and the transcriber, in CPU time (fair on a shared machine).

    python bench/transcriber.py [--streams 4] [--seconds 20] [--json]

- Transcriber: N streams of synthesised speech (espeak-ng, looped to `--seconds`), fed as aiortc
  delivers them (48 kHz stereo s16, 20 ms frames) through the real pipeline (resample, WebRTC VAD,
  utterance cutting, pocketsphinx), interleaved frame by frame as concurrent calls would be.
  Reports the real-time factor per stream (CPU seconds spent / seconds of audio).
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
from agent.media.speech import create_engine
from agent.roles.transcriber import StreamTranscriber, TranscriberSettings

TEXT = (
    "hello everyone, thanks for joining the meeting. today we will look at the quarterly "
    "numbers and then plan the next release."
)


def speech_frames(directory: Path, seconds: float) -> list[Any]:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("bench/transcriber.py needs espeak-ng (apt-get install espeak-ng)")
    wav = directory / "speech.wav"
    subprocess.run([exe, "-v", "en-us", "-s", "150", "-w", str(wav), TEXT], check=True)
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


def bench_transcriber(streams: int, seconds: float, directory: Path) -> dict[str, Any]:
    frames = speech_frames(directory, seconds)
    engine = create_engine("pocketsphinx")
    settings = TranscriberSettings()
    pipes = [
        StreamTranscriber(engine.recognizer(), "m", f"speaker{i}", f"s{i}", settings, interim=False)
        for i in range(streams)
    ]
    cpu = [0.0] * streams
    chunks = [0] * streams
    t0 = 1_700_000_000.0
    for n in range(0, len(frames), 10):  # 200 ms batches, as the role hands them over
        batch = [(f, t0 + (n + k + 1) * 0.02) for k, f in enumerate(frames[n : n + 10])]
        for i, pipe in enumerate(pipes):
            started = time.process_time()
            chunks[i] += len(pipe.push(batch))
            cpu[i] += time.process_time() - started
    for i, pipe in enumerate(pipes):
        started = time.process_time()
        chunks[i] += len(pipe.finish())
        cpu[i] += time.process_time() - started
    audio = len(frames) * 0.02
    return {
        "engine": engine.name,
        "streams": streams,
        "audio_seconds_per_stream": round(audio, 1),
        "rtf_per_stream": [round(c / audio, 3) for c in cpu],
        "utterances_per_stream": chunks,
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        result = {
            "transcriber": bench_transcriber(args.streams, args.seconds, directory),
            "recorder": [
                bench_recorder(640, 480, 30, args.seconds, directory),
                bench_recorder(320, 240, 15, args.seconds, directory),
            ],
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    t = result["transcriber"]
    print(
        f"transcriber ({t['engine']}): {t['streams']} streams x "
        f"{t['audio_seconds_per_stream']} s of speech"
    )
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
