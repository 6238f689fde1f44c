"""The recorder on impaired links: duration error and audio/video offset after a long recording.

    scripts/isolated .venv/bin/python bench/recorder_network.py [--minutes 10] \
        [--network good --network mobile ... | --profiles good,mobile,bad] [--json FILE]

For each profile, one after the other in one run (the same machine, the same build): a plain
aiortc sender (tests/media/recording_peer.py, in side B of an ImpairedLink) sends `--minutes` of
audio and 320x240@30 video carrying a sync mark every 2 s (a 1 kHz beep and a white picture,
captured at the same instant), and `connvo-agent run --role recorder` (in side A, its recording
given each track's receiver) records it, then gets SIGTERM. Both reach one dev backend through the
namespaces' forwarders; the media crosses the impaired link.

Figures per profile, from the files decoded with PyAV (the marks placed on the clock by each file's
`startedAtMs`):
  audio/video duration error %   how far apart the first and last marks are in the file, against
                                 the schedule (gaps squeezed out would show here)
  A/V offset ms                  beep onset less flash onset, median over the last five marks
                                 (positive: audio later); and the manifest's own avOffsetMs
  audio placed ms                where the marks' beeps are placed less when they were captured
  manifest durationErrorPct      the file's duration against the clock span of its arrivals
  sizes, silence                 the files' sizes (kB) and the audio written as silence (s)
  playable                       both files complete in the manifest and decoded to the end
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.devserver.process import DevServerProcess  # noqa: E402
from agent.network import PROFILE_NAMES  # noqa: E402
from tests.media.recording_peer import measure, record_over_link  # noqa: E402


def commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True)
    return result.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


async def one(
    backend: DevServerProcess, profile: str, seconds: float, work: Path
) -> dict[str, Any]:
    started = time.monotonic()
    run = await record_over_link(backend, profile, work / profile, seconds)
    figures = measure(run)
    files, session = run.files(), run.session()
    placed = figures.placed_ms(figures.beeps)
    return {
        "profile": profile,
        "seconds": seconds,
        "audio_error_pct": figures.audio_error_pct,
        "video_error_pct": figures.video_error_pct,
        "av_offset_ms": figures.av_offset_ms,
        "manifest_av_offset_ms": session["avOffsetMs"],
        "audio_placed_ms": statistics.median(placed) if placed else None,
        "manifest_audio_error_pct": files["audio"]["durationErrorPct"],
        "manifest_video_error_pct": files["video"]["durationErrorPct"],
        "audio_s": figures.audio_s,
        "video_s": figures.video_s,
        "silence_s": files["audio"].get("silenceS"),
        "audio_kb": (run.root / files["audio"]["path"]).stat().st_size / 1000,
        "video_kb": (run.root / files["video"]["path"]).stat().st_size / 1000,
        "marks": [len(figures.beeps), len(figures.flashes)],
        "playable": run.exit_code == 0
        and all(f["complete"] for f in files.values())
        and figures.audio_s > 0
        and figures.video_s > 0,
        "wall_s": time.monotonic() - started,
    }


def cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--network",
        action="append",
        metavar="PROFILE",
        help="a network profile, as the other benches take it (repeatable)",
    )
    parser.add_argument(
        "--profiles", default="good,mobile,bad", help="the profiles, comma-separated"
    )
    parser.add_argument("--json", type=Path, default=None, help="Write the figures here too.")
    args = parser.parse_args()
    profiles = args.network or [p.strip() for p in args.profiles.split(",") if p.strip()]
    unknown = [p for p in profiles if p not in PROFILE_NAMES]
    if unknown or args.minutes <= 0:
        print(f"recorder_network: bad --network or --minutes: {unknown or args.minutes}")
        return 2
    seconds = args.minutes * 60
    rows = []
    with tempfile.TemporaryDirectory() as tmp, DevServerProcess() as backend:
        for profile in profiles:
            rows.append(await one(backend, profile, seconds, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    header = (
        "| profile | audio duration error % | video duration error % | A/V offset ms (marks) "
        "| avOffsetMs (manifest) | audio placed ms | audio silence s | audio kB | video kB "
        "| playable after SIGTERM |"
    )
    print()
    print(f"{args.minutes:g} minutes per profile; {datetime.now(UTC):%Y-%m-%d}; commit {commit()}")
    print(header)
    print("|---" * 10 + "|")
    for r in rows:
        print(
            f"| {r['profile']} | {cell(r['audio_error_pct'], 3)} | {cell(r['video_error_pct'], 3)} "
            f"| {cell(r['av_offset_ms'], 0)} | {cell(r['manifest_av_offset_ms'], 1)} "
            f"| {cell(r['audio_placed_ms'], 0)} | {cell(r['silence_s'], 1)} "
            f"| {cell(r['audio_kb'], 0)} | {cell(r['video_kb'], 0)} "
            f"| {'yes' if r['playable'] else 'NO'} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
