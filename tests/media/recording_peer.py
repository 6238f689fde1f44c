"""A plain aiortc sender for the recorder's network tests and bench, run by ImpairedLink.spawn in
one side's namespace: a tests.support.peers.RemotePeer that calls the recorder and sends audio
and video carrying sync marks, both paced by one clock.

Both tracks are timed from one origin `t0` (time.time() when the first frame of either is
asked for): audio frame k is captured at t0 + k * 20 ms, video frame j at t0 + j / FPS, and their
timestamps (pts) say so. Every MARK_PERIOD_S, at t0 + MARK_FIRST_S + n * MARK_PERIOD_S, both carry
a mark for MARK_S: a loud 1 kHz beep in the audio (a quiet 440 Hz tone otherwise) and a white
picture in the video (black otherwise). A recording in sync has each beep start where its flash
starts. After `seconds` the tracks end.

stdin and stdout, one JSON object per line:
  in  {"url", "token", "meeting_id", "user_id", "offer_to", "seconds"} (first line)
  out {"connected": epoch s} once the connection is up
  out {"sent": {"t0": epoch s, "audio": [first, end], "video": [first, end]}} (epoch s of the
      first frame's capture and the last frame's end) once both tracks have ended
  end of stdin: the peer leaves and the process exits
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

RATE = 48_000
SAMPLES = 960  # 20 ms
FPS = 30
VIDEO_CLOCK = 90_000
WIDTH, HEIGHT = 320, 240
MARK_FIRST_S = 1.0
MARK_PERIOD_S = 2.0
MARK_S = 0.1
BEEP_LEVEL = 16_000
TONE_LEVEL = 1_000


def marked(t: float) -> bool:
    """Whether the instant `t` s after t0 lies in a mark."""
    if t < MARK_FIRST_S:
        return False
    return (t - MARK_FIRST_S) % MARK_PERIOD_S < MARK_S - 1e-9


class SharedClock:
    """t0 for both tracks, and when each track's first and last frames were captured."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.t0: float | None = None
        self.spans: dict[str, list[float]] = {}
        self.ended: dict[str, asyncio.Event] = {"audio": asyncio.Event(), "video": asyncio.Event()}

    def origin(self) -> float:
        if self.t0 is None:
            self.t0 = time.time()
        return self.t0

    async def pace(self, kind: str, index: int, interval: float) -> float | None:
        """Wait for frame `index`'s capture time; its time after t0, or None once over."""
        t = index * interval
        if t + interval > self.seconds + 1e-9:
            self.ended[kind].set()
            return None
        due = self.origin() + t
        await asyncio.sleep(max(0.0, due - time.time()))
        span = self.spans.setdefault(kind, [due, due])
        span[1] = due + interval
        return t


class MarkedAudio(MediaStreamTrack):
    kind = "audio"

    def __init__(self, clock: SharedClock) -> None:
        super().__init__()
        self.clock = clock
        self.index: int | None = None
        n = np.arange(SAMPLES) / RATE
        self.tone = (np.sin(2 * math.pi * 440 * n) * TONE_LEVEL).astype(np.int16)
        self.beep = (np.sin(2 * math.pi * 1000 * n) * BEEP_LEVEL).astype(np.int16)

    async def recv(self) -> AudioFrame:
        interval = SAMPLES / RATE
        if self.index is None:  # start at the frame due now, on the shared clock
            self.index = math.ceil((time.time() - self.clock.origin()) / interval)
        t = await self.clock.pace("audio", self.index, interval)
        if t is None:
            self.stop()
            raise MediaStreamError
        samples = self.beep if marked(t) else self.tone
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self.index * SAMPLES
        frame.time_base = fractions.Fraction(1, RATE)
        self.index += 1
        return frame


class MarkedVideo(MediaStreamTrack):
    kind = "video"

    def __init__(self, clock: SharedClock) -> None:
        super().__init__()
        self.clock = clock
        self.index: int | None = None
        self.black = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
        self.white = np.full((HEIGHT, WIDTH, 3), 255, dtype=np.uint8)

    async def recv(self) -> VideoFrame:
        interval = 1 / FPS
        if self.index is None:
            self.index = math.ceil((time.time() - self.clock.origin()) / interval)
        t = await self.clock.pace("video", self.index, interval)
        if t is None:
            self.stop()
            raise MediaStreamError
        picture = self.white if marked(t) else self.black
        frame = VideoFrame.from_ndarray(picture, format="rgb24")
        frame.pts = self.index * (VIDEO_CLOCK // FPS)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.index += 1
        return frame


# --- the run, for tests and the bench (in the caller's process) --------------------------------


@dataclass
class RecordedRun:
    """One recording across an ImpairedLink: what the sender sent and what the recorder wrote."""

    profile: str
    root: Path  # OUT/<meeting>
    sent: dict[str, Any]  # the sender's {"t0", "audio": [first, end], "video": [...]}, epoch s
    manifest: dict[str, Any]
    stopped_at: float  # epoch s of the SIGTERM or SIGKILL
    exit_code: int | None
    stderr: Path

    def files(self) -> dict[str, dict[str, Any]]:
        """The sender's files in the manifest, by kind (the last of each kind)."""
        found: dict[str, dict[str, Any]] = {}
        for participant in self.manifest["participants"]:
            for session in participant["sessions"]:
                for f in session["files"]:
                    found[f["kind"]] = f
        return found

    def session(self) -> dict[str, Any]:
        sessions = [s for p in self.manifest["participants"] for s in p["sessions"]]
        assert len(sessions) == 1, self.manifest
        return sessions[0]


def _prepare(work: Path, token: str) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    token_file = work / "token"
    token_file.write_text(token)
    return token_file


async def record_over_link(
    backend: Any,
    profile: str,
    work: Path,
    seconds: float,
    *,
    kill_after: float | None = None,
    seed: int = 21,
    connect_timeout: float = 30.0,
) -> RecordedRun:
    """The recorder (`connvo-agent run --role recorder`, a process in side A) records the
    marked sender (this module, a process in side B) across an ImpairedLink under `profile`;
    both reach `backend` (a DevServerProcess) through TcpForwarders. The sender sends `seconds`
    of media; then the recorder gets SIGTERM. With `kill_after`: SIGKILL once its audio file has
    this many seconds (by the manifest), while the sender is still sending."""
    import signal
    import uuid

    from agent.network import ImpairedLink
    from agent.network.forward import TcpForwarder
    from agent.network.link import ADDRESSES
    from tests.support.waiting import poll_until

    host, port = backend.url.removeprefix("http://").split(":")
    recorder, sender = f"rec-{uuid.uuid4().hex[:8]}", f"snd-{uuid.uuid4().hex[:8]}"
    meeting_id = backend.meeting(recorder, [sender])
    token_file = _prepare(work, backend.token(recorder))
    out = work / "out"
    root = out / meeting_id
    stderr = work / "recorder.log"
    recorder_command = (sys.executable, "-m", "agent")
    sent: dict[str, Any] = {}
    async with (
        ImpairedLink(profile, seed=seed) as link,
        TcpForwarder(link.a, (host, int(port))),
        TcpForwarder(link.b, (host, int(port))),
    ):
        with stderr.open("wb") as log:
            recording = await link.a.spawn(
                *recorder_command,
                "run",
                *("--url", backend.url, "--token-file", str(token_file)),
                *("--meeting", meeting_id, "--role", "recorder", "--out", str(out)),
                *("--state-dir", str(work / "state"), "--ice-host", ADDRESSES["a"]),
                *("--log-level", "debug"),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
                cwd=ROOT,
            )
        peer = await link.b.python(
            __file__, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert peer.stdin is not None and peer.stdout is not None
        config = {
            "url": backend.url,
            "token": backend.token(sender),
            "meeting_id": meeting_id,
            "user_id": backend.user_id(sender),
            "offer_to": backend.user_id(recorder),
            "seconds": seconds,
        }
        peer.stdin.write(json.dumps(config).encode() + b"\n")
        await peer.stdin.drain()

        async def said(key: str) -> Any:
            assert peer.stdout is not None
            while line := await peer.stdout.readline():
                message = json.loads(line)
                if key in message:
                    return message[key]
            raise AssertionError(f"the sender exited (code {await peer.wait()}) before {key}")

        def manifest() -> dict[str, Any]:
            path = root / "manifest.json"
            return json.loads(path.read_text()) if path.exists() else {"participants": []}

        async def audio_recorded(least: float) -> bool:
            files = [
                f
                for p in manifest()["participants"]
                for s in p["sessions"]
                for f in s["files"]
                if f["kind"] == "audio"
            ]
            return bool(files) and files[-1]["durationS"] >= least

        try:
            async with asyncio.timeout(connect_timeout):
                await said("connected")
            if kill_after is None:
                async with asyncio.timeout(seconds + 30):
                    sent = await said("sent")
                    # the end of the media reached the file (its place is in the manifest)
                    await poll_until(lambda: audio_recorded(0.9 * seconds))
                signum = signal.SIGTERM
            else:
                async with asyncio.timeout(kill_after + 30):
                    await poll_until(lambda: audio_recorded(kill_after))
                signum = signal.SIGKILL
            stopped_at = time.time()
            recording.send_signal(signum)
            async with asyncio.timeout(20):
                code = await recording.wait()
        finally:
            peer.stdin.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await peer.wait()
    return RecordedRun(profile, root, sent, manifest(), stopped_at, code, stderr)


def decode(path: Path) -> tuple[float, list[tuple[float, float]]]:
    """A file, decoded to its end: (seconds decoded, [(time, level)] per frame or 5 ms block),
    level: audio, the block's peak (0..1); video, the picture's mean brightness (0..1)."""
    levels: list[tuple[float, float]] = []
    with av.open(str(path)) as container:
        stream = container.streams[0]
        if stream.type == "audio":
            chunks = [
                f.to_ndarray().reshape(-1, len(f.layout.channels))[:, 0]
                for f in container.decode(stream)
            ]
            rate = stream.codec_context.sample_rate
            pcm = np.concatenate(chunks) if chunks else np.zeros(0)
            scale = 1.0 if pcm.dtype.kind == "f" else 32768.0
            block = rate // 200
            for i in range(0, len(pcm) - block + 1, block):
                levels.append((i / rate, float(np.abs(pcm[i : i + block]).max()) / scale))
            return len(pcm) / rate, levels
        last = 0.0
        step = 1 / FPS
        for frame in container.decode(stream):
            t = float(frame.pts * frame.time_base)
            levels.append((t, float(frame.to_ndarray(format="gray").mean()) / 255))
            last = t
        return (last + step if levels else 0.0), levels


def onsets(levels: list[tuple[float, float]], threshold: float) -> list[float]:
    """Times where the level rises past `threshold` after half a mark period below it."""
    found: list[float] = []
    below_since: float | None = 0.0
    for t, level in levels:
        if level >= threshold:
            if below_since is not None and (not found or t - below_since >= MARK_PERIOD_S / 4):
                found.append(t)
            below_since = None
        elif below_since is None:
            below_since = t
    return found


@dataclass
class Measured:
    """A recording measured from its files, on the clock the manifest gives (startedAtMs)."""

    audio_s: float  # decoded
    video_s: float
    sent_audio_s: float
    sent_video_s: float
    beeps: list[tuple[int, float]]  # (mark number, clock time of its beep's onset in the file)
    flashes: list[tuple[int, float]]
    t0: float  # the sender's origin: mark n was captured at t0 + MARK_FIRST_S + n * MARK_PERIOD_S

    def placed_ms(self, marks: list[tuple[int, float]]) -> list[float]:
        """Where each mark is placed on the clock less when it was captured (ms)."""
        return [1000 * (t - self.t0 - MARK_FIRST_S - n * MARK_PERIOD_S) for n, t in marks]

    def _span_error_pct(self, marks: list[tuple[int, float]]) -> float | None:
        """How far the first and last marks are apart in the file, against the schedule (%).
        Marks found late (their first packets lost: more than 10 ms after the median) are left
        out."""
        placed = self.placed_ms(marks)
        if not placed:
            return None
        median = float(np.median(placed))
        marks = [m for m, p in zip(marks, placed, strict=True) if p - median <= 10]
        if len(marks) < 2 or marks[-1][0] == marks[0][0]:
            return None
        scheduled = (marks[-1][0] - marks[0][0]) * MARK_PERIOD_S
        return 100 * ((marks[-1][1] - marks[0][1]) - scheduled) / scheduled

    @property
    def audio_error_pct(self) -> float | None:
        """The audio's duration error: its marks' span against the schedule's."""
        return self._span_error_pct(self.beeps)

    @property
    def video_error_pct(self) -> float | None:
        return self._span_error_pct(self.flashes)

    @property
    def offsets_ms(self) -> list[float]:
        """Per mark in both: beep onset less flash onset (ms; positive: audio later)."""
        flashes = dict(self.flashes)
        return [1000 * (t - flashes[n]) for n, t in self.beeps if n in flashes]

    @property
    def av_offset_ms(self) -> float | None:
        """The audio/video offset at the end: the median over the last five marks."""
        tail = self.offsets_ms[-5:]
        return float(np.median(tail)) if tail else None

    def summary(self) -> dict[str, Any]:
        def rounded(x: float | None, digits: int) -> float | None:
            return None if x is None else round(x, digits)

        return {
            "audio_s": round(self.audio_s, 3),
            "video_s": round(self.video_s, 3),
            "sent_s": round(self.sent_audio_s, 3),
            "audio_error_pct": rounded(self.audio_error_pct, 3),
            "video_error_pct": rounded(self.video_error_pct, 3),
            "av_offset_ms": rounded(self.av_offset_ms, 1),
            "offsets_ms": [round(x, 1) for x in self.offsets_ms],
            "marks": [len(self.beeps), len(self.flashes)],
            "audio_placed_ms": [round(x, 1) for x in self.placed_ms(self.beeps)],
            "video_placed_ms": [round(x, 1) for x in self.placed_ms(self.flashes)],
        }


def measure(run: RecordedRun) -> Measured:
    """Decode the run's files and find the marks in them."""
    files = run.files()
    t0 = float(run.sent.get("t0") or 0.0)

    def numbered(times: list[float]) -> list[tuple[int, float]]:
        return [(round((t - t0 - MARK_FIRST_S) / MARK_PERIOD_S), t) for t in times]

    audio_s, audio_levels = decode(run.root / files["audio"]["path"])
    video_s, video_levels = decode(run.root / files["video"]["path"])
    audio_start = files["audio"]["startedAtMs"] / 1000
    video_start = files["video"]["startedAtMs"] / 1000
    beeps = numbered([audio_start + t for t in onsets(audio_levels, BEEP_LEVEL / 32768 / 2)])
    flashes = numbered([video_start + t for t in onsets(video_levels, 0.5)])
    sent = run.sent
    return Measured(
        audio_s,
        video_s,
        sent["audio"][1] - sent["audio"][0] if sent else 0.0,
        sent["video"][1] - sent["video"][0] if sent else 0.0,
        beeps,
        flashes,
        t0,
    )


def say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def main() -> None:
    from tests.support.peers import RemotePeer
    from tests.support.waiting import poll_until

    class MarkedPeer(RemotePeer):
        """RemotePeer with the marked video track in place of aiortc's test pattern."""

        async def _new_pc(self) -> None:
            await super()._new_pc()
            assert self.pc is not None
            self.pc.addTrack(MarkedVideo(clock))

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    config = json.loads(await reader.readline())
    clock = SharedClock(float(config["seconds"]))
    peer = MarkedPeer(
        config["url"],
        config["token"],
        config["meeting_id"],
        config["user_id"],
        video=False,
        decode=False,
        audio_track=lambda: MarkedAudio(clock),
    )
    async with peer:
        target = config["offer_to"]

        async def target_joined() -> bool:
            active = await peer.call(
                "meetings/webrtc/signaling/getActiveSessions", meetingId=config["meeting_id"]
            )
            return any(s["userId"] == target for s in active)

        await poll_until(target_joined)
        await peer.offer(target)
        await peer.connected.wait()
        say({"connected": time.time()})
        ended = asyncio.gather(*(e.wait() for e in clock.ended.values()))
        stdin_closed = asyncio.ensure_future(reader.read())
        done, _ = await asyncio.wait({ended, stdin_closed}, return_when=asyncio.FIRST_COMPLETED)
        if ended in done:
            say({"sent": {"t0": clock.t0, **clock.spans}})
            await stdin_closed
        else:
            ended.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ended


if __name__ == "__main__":
    asyncio.run(main())
