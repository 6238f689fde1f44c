"""The recorder on impaired links: `connvo-agent run --role recorder` in one side of an
ImpairedLink records a plain aiortc sender in the other (tests/media/recording_peer.py: audio and
video with sync marks, both on one clock), under `mobile` and `bad`.

Checked from the files themselves, decoded with PyAV: the audio lasts as long as the sender sent
(gaps are silence, not squeezed out), the marks' beeps and flashes line up on the clock the
manifest gives (each file's startedAtMs), the manifest's own figures (durationErrorPct,
avOffsetMs) agree, and a SIGTERM or a kill -9 leaves files that decode up to near the end.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from agent.devserver.process import DevServerProcess
from agent.media.recording import MeetingRecording
from tests.media.recording_peer import RecordedRun, decode, measure, record_over_link

SECONDS = 20.0  # of media sent
DURATION_PCT = 1.0  # the audio's duration within this of what was sent
AV_OFFSET_MS = 40.0
KILL_LOSS_S = 2.0  # what a kill -9 may lose, at most


@pytest.fixture(scope="module")
def backend() -> Iterator[DevServerProcess]:
    with DevServerProcess() as server:
        yield server


def described(run: RecordedRun) -> str:
    return json.dumps({"profile": run.profile, "manifest": run.manifest, "sent": run.sent})


@pytest.mark.parametrize("profile", ["mobile", "bad"])
async def test_a_recording_lasts_as_sent_and_stays_in_sync(
    profile: str, backend: DevServerProcess, tmp_path: Path
) -> None:
    run = await record_over_link(backend, profile, tmp_path, SECONDS)
    figures = measure(run)
    files, session = run.files(), run.session()
    report = f"{described(run)} measured {json.dumps(figures.summary())}"
    print(profile, json.dumps(figures.summary()))

    assert run.exit_code == 0, run.stderr.read_text()[-3000:]
    assert set(files) == {"audio", "video"}, report
    for f in files.values():
        assert f["complete"] and "error" not in f, report
    # Gaps are silence, never squeezed out: the marks are as far apart in the files as they
    # were sent, and the audio file covers what was sent but for its edges (aiortc's jitter
    # buffer keeps its last packets when the stream stops: up to 16 of them)
    # (a beep or flash whose first packets were lost is found late or not at all)
    assert len(figures.beeps) >= SECONDS / 4 and len(figures.flashes) >= SECONDS / 4, report
    assert figures.audio_error_pct is not None, report
    assert abs(figures.audio_error_pct) <= DURATION_PCT, report
    assert figures.video_error_pct is not None, report
    assert abs(figures.video_error_pct) <= DURATION_PCT, report
    assert SECONDS - 1.0 <= figures.audio_s <= SECONDS + 0.1, report
    assert files["audio"]["durationS"] == pytest.approx(figures.audio_s, abs=0.1), report
    # The manifest's own figures: media duration against the clock, and the tracks' offset.
    assert abs(files["audio"]["durationErrorPct"]) <= DURATION_PCT, report
    offset = session["avOffsetMs"]
    assert offset is not None and abs(offset) <= AV_OFFSET_MS, report
    # In sync: each beep starts where its flash starts, on the manifest's clock.
    assert figures.av_offset_ms is not None and abs(figures.av_offset_ms) <= AV_OFFSET_MS, report


async def test_kill_9_leaves_files_that_decode_up_to_near_the_kill(
    backend: DevServerProcess, tmp_path: Path
) -> None:
    run = await record_over_link(backend, "bad", tmp_path, SECONDS, kill_after=8.0)
    assert run.exit_code == -9
    files = run.files()
    report = described(run)
    assert set(files) == {"audio", "video"}, report
    for f in files.values():
        assert not f["complete"], report  # the manifest was written while recording
        seconds, levels = decode(run.root / f["path"])
        recorded_until = f["startedAtMs"] / 1000 + seconds
        print(f["kind"], "lost to the kill:", round(run.stopped_at - recorded_until, 3), "s")
        assert run.stopped_at - KILL_LOSS_S <= recorded_until <= run.stopped_at + 0.5, (
            f["kind"],
            seconds,
            run.stopped_at,
            report,
        )
        assert levels, report


async def test_a_pause_is_silence_of_its_length_whatever_the_timestamps_do(tmp_path: Path) -> None:
    """No link needed: frames as aiortc hands them over (pts counted from the first frame), on
    a clock the test moves. A sender that stops for 2 s without moving its timestamps (muted,
    then resumed) and one that skips 1.5 s of timestamps while it sends nothing (DTX) both
    leave silence of the pause's length: the file lasts as long as the clock did."""
    now = [1_000.0]
    rate, step = 48_000, 960  # 20 ms frames

    async def frames() -> AsyncIterator[av.AudioFrame]:
        pts, at = 0, now[0]
        for count, pause_s, pts_skip in ((150, 2.0, 0), (150, 1.5, 72_000), (75, 0.0, 0)):
            for _ in range(count):
                frame = av.AudioFrame.from_ndarray(
                    np.full((1, step), 1000, dtype=np.int16), format="s16", layout="mono"
                )
                frame.sample_rate, frame.pts = rate, pts
                frame.time_base = Fraction(1, rate)
                now[0] = at + 0.05  # the frame's arrival: 50 ms on the way
                yield frame
                pts, at = pts + step, at + step / rate
            pts, at = pts + pts_skip, at + pause_s

    recording = MeetingRecording(tmp_path, "m", clock=lambda: now[0])
    await recording.record("u", "s", "audio", frames())
    recording.close()
    [entry] = recording.files()
    expected = 3 + 2 + 3 + 1.5 + 1.5
    seconds, _ = decode(entry.path)
    assert seconds == pytest.approx(expected, rel=0.01)
    assert entry.duration_s == pytest.approx(seconds, abs=0.03)
    assert entry.silence_s == pytest.approx(3.5, abs=0.1)
    assert entry.duration_error_pct is not None and abs(entry.duration_error_pct) < 1
