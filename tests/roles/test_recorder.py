"""The recorder against real aiortc peers over the dev backend: files decode with PyAV to the
duration that was played, the manifest describes them, and failures stay local to a recording."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import av
import pytest

from agent.media.recording import TrackWriter
from agent.roles.recorder import Recorder
from tests.roles.conftest import (
    Speech,
    finish,
    participant_settings,
    start,
    track_ended,
)


def decoded_seconds(path: Path) -> float:
    """Duration by decoding every frame (audio: samples; video: last pts + one frame)."""
    with av.open(str(path)) as container:
        stream = container.streams[0]
        if stream.type == "audio":
            rate = stream.codec_context.sample_rate
            return sum(f.samples for f in container.decode(stream)) / rate
        pts = [float(f.pts * f.time_base) for f in container.decode(stream)]
        assert len(pts) > 1, path
        return (pts[-1] - pts[0]) * len(pts) / (len(pts) - 1)


def session_files(manifest: dict[str, Any], user_id: str) -> list[list[dict[str, Any]]]:
    for p in manifest["participants"]:
        if p["userId"] == user_id:
            return [s["files"] for s in p["sessions"]]
    return []


async def test_records_speech_renegotiation_rejoin_and_shutdown(
    meeting: Any, clients: Any, tmp_path: Path, speech: Speech, short_speech: Speech
) -> None:
    out = tmp_path / "out"
    recorder = Recorder(clients(meeting), participant_settings(meeting, tmp_path / "state"), out)
    task, stop = await start(recorder)
    bot = meeting.users["bot"]
    root = out / meeting.id

    async with asyncio.timeout(60):
        # alice: speech and video, played to the end, then she leaves ...
        alice = meeting.peer("alice", audio_file=str(speech.path))
        # bob: audio only at first, then adds video by renegotiation
        bob = meeting.peer("bob", audio_file=str(short_speech.path), video=False)
        async with alice, bob:
            await alice.offer(bot)
            await bob.offer(bot)
            await asyncio.gather(alice.connected.wait(), bob.connected.wait())
            await track_ended(bob.pc.getSenders()[0].track)
            await bob.add_video()
            await track_ended(alice.pc.getSenders()[0].track)
        # ... and comes back in a new session, which records a second segment
        alice2 = meeting.peer("alice", audio_file=str(short_speech.path), video=False)
        async with alice2:
            await alice2.offer(bot)
            await alice2.connected.wait()
            await track_ended(alice2.pc.getSenders()[0].track)
            # the agent's own shutdown while alice2 is still connected
            await finish(task, stop)

    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["meetingId"] == meeting.id
    assert manifest["recorderUserId"] == bot
    assert manifest["endedAt"] is not None

    alice_sessions = session_files(manifest, meeting.users["alice"])
    assert len(alice_sessions) == 2, manifest  # two segments: left and came back
    first, second = alice_sessions
    assert sorted(f["kind"] for f in first) == ["audio", "video"]
    assert [f["kind"] for f in second] == ["audio"]
    bob_files = session_files(manifest, meeting.users["bob"])
    assert len(bob_files) == 1
    kinds = {f["kind"]: f for f in bob_files[0]}
    assert set(kinds) == {"audio", "video"}
    assert kinds["video"]["startedAtMs"] > kinds["audio"]["startedAtMs"]  # added later

    expected = {
        (0, "audio"): speech.duration,
        (1, "audio"): short_speech.duration,
        (2, "audio"): short_speech.duration,
    }
    for i, files in enumerate([first, second, bob_files[0]]):
        for f in files:
            path = root / f["path"]
            assert f["complete"] and "error" not in f, f
            assert f["codec"] in ("opus", "vpx"), f
            assert path.suffix == (".ogg" if f["kind"] == "audio" else ".webm")
            assert meeting.users["alice"] in f["path"] or meeting.users["bob"] in f["path"]
            seconds = decoded_seconds(path)
            assert seconds == pytest.approx(f["durationS"], rel=0.05), f
            if (i, f["kind"]) in expected:
                assert seconds == pytest.approx(expected[(i, f["kind"])], rel=0.05), f
            else:
                assert f["frames"] > 10 and seconds > 0.5, f


async def test_unwritable_output_fails_one_recording_only(
    meeting: Any,
    clients: Any,
    tmp_path: Path,
    short_speech: Speech,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "out"
    # alice's recordings cannot be created: her directory's name is taken by a file
    blocked = out / meeting.id / meeting.users["alice"]
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a directory")
    recorder = Recorder(clients(meeting), participant_settings(meeting, tmp_path / "state"), out)
    task, stop = await start(recorder)
    bot = meeting.users["bot"]
    caplog.set_level(logging.ERROR, logger="agent.media.recording")
    async with asyncio.timeout(60):
        alice = meeting.peer("alice", audio_file=str(short_speech.path), video=False)
        bob = meeting.peer("bob", audio_file=str(short_speech.path), video=False)
        async with alice, bob:
            await alice.offer(bot)
            await bob.offer(bot)
            await asyncio.gather(alice.connected.wait(), bob.connected.wait())
            await track_ended(alice.pc.getSenders()[0].track)
            await track_ended(bob.pc.getSenders()[0].track)
            assert recorder.participant.manager.sessions[alice.session_id].connected.is_set()
        await finish(task, stop)

    manifest = json.loads((out / meeting.id / "manifest.json").read_text())
    [[alice_file]] = session_files(manifest, meeting.users["alice"])
    assert "cannot create" in alice_file["error"] and not alice_file["complete"]
    errors = [r for r in caplog.records if "recording failed" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    [[bob_file]] = session_files(manifest, meeting.users["bob"])
    assert bob_file["complete"]
    seconds = decoded_seconds(out / meeting.id / bob_file["path"])
    assert seconds == pytest.approx(short_speech.duration, rel=0.05)


def test_full_disk_is_one_clear_error() -> None:
    import numpy as np

    from agent.media.recording import RecordingError

    writer = TrackWriter(Path("/dev/full"), "audio")
    with pytest.raises(RecordingError, match=r"/dev/full: No space left on device"):
        for _ in range(200):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1920), dtype=np.int16), format="s16", layout="stereo"
            )
            frame.sample_rate = 48_000
            writer.write(frame)
        writer.close()
