"""How many remote streams (audio + video) one core records at once without dropping frames.

Measured end to end over real WebRTC on loopback: the dev backend (a child process), the recorder
as `connvo-agent run --role recorder` (a child process pinned to ONE core), and N remote aiortc
peers (bench/peers_worker.py in one child process, pinned to the other core(s), as is the dev
backend and this script) that call the recorder and each send audio (a pre-encoded tone) and video
(aiortc's VideoStreamTrack: 640x480 at 30 fps, VP8). For each rung N of a ladder, in a fresh
meeting: once every peer is connected (+1 s), hold `--hold` seconds, SIGTERM the recorder (it must
exit 0), stop the peers, then read the recorder's manifest and decode every file with PyAV.

Per stream (one remote participant = one audio file + one video file), with span = the file's
wall-clock span in the manifest (endedAt - startedAt: first frame received -> track ended):
- video ratio = decoded video frames / (expected fps x span); expected fps = aiortc's nominal rate
  (90 kHz / RTP timestamp step = 30), checked against what the peers actually send;
- in-stream ratio = decoded video frames / (expected fps x span of the decoded timestamps), i.e.
  frames missing between the first and last one written (losses, not a backlog);
- audio ratio = decoded audio seconds / span.
Ratios slightly above 1 are normal: startedAt is when the recorder consumed its first frame, so a
first frame that waited (the recorder busy connecting the other peers) shortens the span.
A rung passes when every peer connected, the recorder exited 0, every participant has exactly one
complete audio and one complete video file, every video ratio >= 0.95 and every audio ratio is
within 0.95..1.05. The ladder stops at the first rung that does not pass.

The peers are measured too, so that their limit is not reported as the recorder's: the peers'
process CPU over the hold, and each video track's frames actually produced for its sender over the
hold (counted by a subclass of aiortc's VideoStreamTrack patched into tests/support/peers.py in the
peers' process; peers_worker.py itself is unchanged) against 30 fps. A rung whose peers fell short
(< 95 % of 30 fps on some track, or CPU >= 90 % of their cores while the rung failed) is reported
as "peers saturated": it says nothing about the recorder, and the figure is then a lower bound.
Also reported: the recorder's CPU over the hold (utime + stime from /proc, % of one core) and how
busy its core was in total (other processes on the machine share it: the pinning keeps only this
benchmark's other processes off it).

Caveat: aiortc's test video is a static green frame, about the cheapest content to encode; real
camera video costs the recorder (decode + VP8 re-encode) more per stream.

    python bench/recorder_capacity.py [--ladder 1 2 4 8 ...] [--hold 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import runpy
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import av
from aiortc.mediastreams import VIDEO_CLOCK_RATE, VIDEO_PTIME

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
sys.path.insert(0, str(ROOT))

from agent.devserver.process import DevServerProcess  # noqa: E402

DEFAULT_LADDER = [1, 2, 4, 6, 8, 10, 12, 16, 20, 24, 32]
VIDEO_STEP = int(VIDEO_PTIME * VIDEO_CLOCK_RATE)  # RTP timestamp step of aiortc's test video
EXPECTED_FPS = VIDEO_CLOCK_RATE / VIDEO_STEP  # 30
MIN_VIDEO_RATIO = 0.95
AUDIO_TOLERANCE = 0.05
MIN_SENDER_PACE = 0.95
PEERS_CPU_SATURATED = 0.90  # fraction of the peers' cores
SETTLE_S = 1.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
RECORDER_USER = "recorder"


# --- processes and /proc ---------------------------------------------------------------------


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of `pid` (threads created later inherit the creating thread's mask)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(tid, cpus)


def unpinned_threads(pid: int, cpus: set[int]) -> int:
    count = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                count += os.sched_getaffinity(int(tid)) != cpus
    return count


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def core_ticks(core: int) -> tuple[int, int]:
    """(busy, total) clock ticks of one core since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                values = [int(v) for v in line.split()[1:]]
                idle = values[3] + values[4]  # idle + iowait
                return sum(values) - idle, sum(values)
    raise RuntimeError(f"cpu{core} not in /proc/stat")


async def stop_process(proc: asyncio.subprocess.Process, sig: int, grace_s: float) -> int:
    """Send `sig`, wait up to `grace_s`, then SIGKILL; returns the exit status."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            async with asyncio.timeout(grace_s):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def open_log(path: Path) -> IO[bytes]:
    return open(path, "wb")  # closed by the caller's finally


def tail(path: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    return ""


# --- the peers' process: peers_worker.py with its video tracks counted ----------------------------


def peers_child(stats_path: str) -> None:
    """Run bench/peers_worker.py; on SIGUSR1 write each video track's produced frames and lag."""
    from aiortc.mediastreams import VideoStreamTrack

    import tests.support.peers as peers_module

    tracks: list[Any] = []

    class CountedVideoTrack(VideoStreamTrack):
        """aiortc's test video, counting the frames its sender pulled and how late the last was."""

        def __init__(self) -> None:
            super().__init__()
            self.produced = 0
            self.lag = 0.0
            tracks.append(self)

        async def recv(self) -> Any:
            frame = await super().recv()
            self.produced += 1
            self.lag = time.time() - (self._start + self._timestamp / VIDEO_CLOCK_RATE)
            return frame

    def dump(signum: int, frame: Any) -> None:
        data = {"t": time.monotonic(), "tracks": [[t.produced, t.lag] for t in tracks]}
        tmp = stats_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, stats_path)

    vars(peers_module)["VideoStreamTrack"] = CountedVideoTrack  # RemotePeer looks it up here
    signal.signal(signal.SIGUSR1, dump)
    runpy.run_path(str(ROOT / "bench" / "peers_worker.py"), run_name="__main__")


async def sender_stats(proc: asyncio.subprocess.Process, path: Path) -> dict[str, Any]:
    """Ask the peers' process for its counters (SIGUSR1) and read them back."""
    before = time.monotonic()
    proc.send_signal(signal.SIGUSR1)
    async with asyncio.timeout(10):
        while True:
            with contextlib.suppress(OSError, ValueError):
                data: dict[str, Any] = read_json(path)
                if data["t"] >= before:
                    return data
            await asyncio.sleep(0.02)


# --- the recording -------------------------------------------------------------------------------


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def decode_file(path: Path) -> dict[str, Any]:
    """Decode every frame: audio -> seconds of samples; video -> frames and timestamps' span."""
    with av.open(str(path)) as container:
        if container.streams.audio:
            audio = container.streams.audio[0]
            samples = frames = 0
            for frame in container.decode(audio):
                samples += frame.samples
                frames += 1
            return {"frames": frames, "seconds": samples / audio.codec_context.sample_rate}
        pts = [
            float(f.pts * f.time_base)
            for f in container.decode(container.streams.video[0])
            if f.pts is not None and f.time_base is not None
        ]
    steps = [b - a for a, b in itertools.pairwise(pts)]
    span = pts[-1] - pts[0] + 1 / EXPECTED_FPS if pts else 0.0
    return {
        "frames": len(pts),
        "seconds": span,
        "median_step_ms": round(statistics.median(steps) * 1000, 2) if steps else None,
        "max_gap_ms": round(max(steps) * 1000, 1) if steps else None,
    }


def analyse(root: Path, users: dict[str, str]) -> dict[str, Any]:
    """Per remote participant of the manifest: the video/audio ratios (see the docstring)."""
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        return {"problems": ["no manifest"], "streams": []}
    manifest = json.loads(manifest_path.read_text())
    problems: list[str] = []
    if manifest.get("endedAt") is None:
        problems.append("manifest has no endedAt")
    by_user = {p["userId"]: p["sessions"] for p in manifest.get("participants", [])}
    streams = []
    for user_id, name in users.items():
        sessions = by_user.get(user_id, [])
        files = [f for s in sessions for f in s["files"]]
        row: dict[str, Any] = {"peer": name, "sessions": len(sessions), "files": len(files)}
        for kind in ("audio", "video"):
            of_kind = [f for f in files if f["kind"] == kind]
            if len(of_kind) != 1:
                problems.append(f"{name}: {len(of_kind)} {kind} files")
                continue
            entry = of_kind[0]
            if not entry.get("complete") or entry.get("error"):
                problems.append(f"{name}: {kind} incomplete ({entry.get('error')})")
            if entry.get("endedAt") is None:
                continue
            span = _epoch(entry["endedAt"]) - entry["startedAtMs"] / 1000
            try:
                decoded = decode_file(root / entry["path"])
            except (OSError, av.FFmpegError) as exc:
                problems.append(f"{name}: {kind} does not decode: {exc}")
                continue
            row[f"{kind}_span_s"] = round(span, 2)
            row[f"{kind}_manifest_frames"] = entry["frames"]
            row[f"{kind}_manifest_s"] = entry["durationS"]
            row[f"{kind}_decoded_frames"] = decoded["frames"]
            row[f"{kind}_decoded_s"] = round(decoded["seconds"], 3)
            if kind == "video":
                row["video_ratio"] = round(decoded["frames"] / (EXPECTED_FPS * span), 3)
                row["video_in_stream_ratio"] = (
                    round(decoded["frames"] / (EXPECTED_FPS * decoded["seconds"]), 3)
                    if decoded["seconds"]
                    else 0.0
                )
                row["video_median_step_ms"] = decoded["median_step_ms"]
                row["video_max_gap_ms"] = decoded["max_gap_ms"]
                row["video_size"] = f"{entry.get('width')}x{entry.get('height')}"
            else:
                row["audio_ratio"] = round(decoded["seconds"] / span, 3)
        streams.append(row)
    if by_user and not any(s["files"] for sessions in by_user.values() for s in sessions):
        # Sessions but not one file: the recorder's tracks never yielded a frame.
        problems.append("sessions recorded but no file at all")
    return {"problems": problems, "streams": streams}


# --- one rung ---------------------------------------------------------------------------------


async def readline(stream: asyncio.StreamReader, limit_s: float) -> dict[str, Any]:
    async with asyncio.timeout(limit_s):
        line = await stream.readline()
    if not line:
        raise RuntimeError("the peers' process ended early")
    data: dict[str, Any] = json.loads(line)
    return data


async def run_rung(
    server: DevServerProcess,
    n: int,
    hold: float,
    workdir: Path,
    recorder_core: int,
    peer_cpus: set[int],
    recorder_args: list[str],
) -> dict[str, Any]:
    rung = workdir / f"n{n}"
    out, state = rung / "out", rung / "state"
    rung.mkdir(parents=True)
    names = [f"peer{i:03d}" for i in range(n)]
    meeting = server.meeting(RECORDER_USER, names, title=f"recorder capacity {n}")
    users = {server.user_id(name): name for name in names}
    token_file = rung / "token"
    token_file.write_text(server.token(RECORDER_USER))
    token_file.chmod(0o600)
    stats_path = rung / "senders.json"
    row: dict[str, Any] = {"n": n, "connected": 0, "ok": False, "status": "FAIL", "reasons": []}
    reasons: list[str] = row["reasons"]

    peers_err = open_log(rung / "peers.stderr")
    recorder_log = open_log(rung / "recorder.log")
    peers: asyncio.subprocess.Process | None = None
    recorder: asyncio.subprocess.Process | None = None
    try:
        peers = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), "--peers-child", str(stats_path),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=peers_err,
            cwd=ROOT,
        )  # fmt: skip
        pin(peers.pid, peer_cpus)
        assert peers.stdin is not None and peers.stdout is not None
        spec = {
            "url": server.url,
            "meeting": meeting,
            "target": server.user_id(RECORDER_USER),
            "peers": [{"token": server.token(nm), "user_id": uid} for uid, nm in users.items()],
            "audio": True,
            "video": True,
            # a pre-encoded tone (no Opus encoder per peer) and nothing decoded: keeps the peers'
            # core for their VP8 encoders
            "light": True,
            "idle_poll_interval": 1.0,
        }
        peers.stdin.write((json.dumps(spec) + "\n").encode())
        await peers.stdin.drain()
        await readline(peers.stdout, 30 + n)  # {"ready": true}: every peer has its session

        recorder = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "run", "--role", "recorder",
            "--url", server.url, "--token-file", str(token_file), "--meeting", meeting,
            "--out", str(out), "--state-dir", str(state), "--ice-host", "127.0.0.1",
            "--log-level", "warning", *recorder_args,
            stdin=asyncio.subprocess.DEVNULL, stdout=recorder_log, stderr=recorder_log,
            cwd=ROOT,
        )  # fmt: skip
        pin(recorder.pid, {recorder_core})
        # The recorder writes its (empty) manifest before it joins; offers wait at the backend.
        async with asyncio.timeout(30):
            while not any(out.glob("*/manifest.json")):
                if recorder.returncode is not None:
                    raise RuntimeError(f"recorder exited {recorder.returncode} at start")
                await asyncio.sleep(0.05)

        started = time.monotonic()
        peers.stdin.write(b"go\n")
        await peers.stdin.drain()
        connect_times = []
        while True:
            line = await readline(peers.stdout, 90 + n)  # peers_worker gives up after 60 s
            if line.get("done"):
                break
            if line.get("offer_to_connected_s") is not None:
                connect_times.append(line["offer_to_connected_s"])
        row["connected"] = len(connect_times)
        row["all_connected_after_s"] = round(time.monotonic() - started, 2)
        if len(connect_times) < n:
            reasons.append(f"{n - len(connect_times)} peers not connected")
        await asyncio.sleep(SETTLE_S)

        # The hold.
        pin(recorder.pid, {recorder_core})
        row["recorder_threads_off_core"] = unpinned_threads(recorder.pid, {recorder_core})
        senders0 = await sender_stats(peers, stats_path)
        t0 = time.monotonic()
        rec0, peers0 = cpu_seconds(recorder.pid), cpu_seconds(peers.pid)
        core0 = core_ticks(recorder_core)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(hold):
                await recorder.wait()
            raise RuntimeError(f"recorder exited {recorder.returncode} during the hold")
        rec1, peers1 = cpu_seconds(recorder.pid), cpu_seconds(peers.pid)
        core1 = core_ticks(recorder_core)
        elapsed = time.monotonic() - t0
        senders1 = await sender_stats(peers, stats_path)
        row["hold_s"] = round(elapsed, 2)
        row["recorder_cpu_pct"] = round((rec1 - rec0) / elapsed * 100, 1)
        row["recorder_cpu_pct_per_stream"] = round((rec1 - rec0) / elapsed * 100 / n, 1)
        row["core_busy_pct"] = round((core1[0] - core0[0]) / max(1, core1[1] - core0[1]) * 100, 1)
        row["peers_cpu_pct"] = round((peers1 - peers0) / elapsed * 100, 1)
        window = senders1["t"] - senders0["t"]
        produced = [
            (b[0] - a[0]) / (EXPECTED_FPS * window)
            for a, b in zip(senders0["tracks"], senders1["tracks"], strict=False)
        ]
        row["sender_tracks"] = len(senders1["tracks"])
        row["sender_min_pace"] = round(min(produced), 3) if produced else None
        row["sent_fps_mean"] = (
            round(statistics.fmean(produced) * EXPECTED_FPS, 2) if produced else None
        )
        row["sender_max_lag_s"] = (
            round(max(t[1] for t in senders1["tracks"]), 3) if senders1["tracks"] else None
        )

        # The end: the recorder first (it finalises its files), while the peers still send.
        row["recorder_exit"] = await stop_process(recorder, signal.SIGTERM, 30)
        if row["recorder_exit"] != 0:
            reasons.append(f"recorder exited {row['recorder_exit']}: {tail(rung / 'recorder.log')}")
        peers.stdin.close()  # EOF: the peers leave
        try:
            async with asyncio.timeout(30):
                await peers.wait()
        except TimeoutError:
            await stop_process(peers, signal.SIGTERM, 5)
    except (RuntimeError, TimeoutError, OSError, ValueError) as exc:
        reasons.append(f"{type(exc).__name__}: {exc}".strip(": "))
        if recorder is not None:
            reasons.append(f"recorder log: {tail(rung / 'recorder.log')}")
    finally:
        for proc in (recorder, peers):
            if proc is not None:
                await stop_process(proc, signal.SIGKILL, 10)
        peers_err.close()
        recorder_log.close()

    # Reading and decoding the files, after every process of the rung has ended.
    roots = [p.parent for p in out.glob("*/manifest.json")]
    result = analyse(roots[0] if roots else out / meeting, users)
    reasons.extend(result["problems"])
    streams = result["streams"]
    row["streams"] = streams
    video = [s["video_ratio"] for s in streams if "video_ratio" in s]
    in_stream = [s["video_in_stream_ratio"] for s in streams if "video_in_stream_ratio" in s]
    audio = [s["audio_ratio"] for s in streams if "audio_ratio" in s]
    row["video_ratio_min"] = min(video) if video else None
    row["video_in_stream_ratio_min"] = min(in_stream) if in_stream else None
    row["audio_ratio_min"] = min(audio) if audio else None
    row["audio_ratio_max"] = max(audio) if audio else None
    if video and min(video) < MIN_VIDEO_RATIO:
        reasons.append(f"video ratio {min(video)} < {MIN_VIDEO_RATIO}")
    if audio and (min(audio) < 1 - AUDIO_TOLERANCE or max(audio) > 1 + AUDIO_TOLERANCE):
        reasons.append(f"audio ratio {min(audio)}..{max(audio)} outside 1 +- {AUDIO_TOLERANCE}")
    if len(video) < n or len(audio) < n:
        reasons.append(f"{len(video)} video and {len(audio)} audio recordings for {n} peers")

    pace = row.get("sender_min_pace")
    peers_cpu = row.get("peers_cpu_pct")
    peers_short = pace is not None and pace < MIN_SENDER_PACE
    peers_busy = peers_cpu is not None and peers_cpu >= PEERS_CPU_SATURATED * 100 * len(peer_cpus)
    if not reasons and not peers_short:
        row["ok"], row["status"] = True, "ok"
    elif peers_short or (reasons and peers_busy):
        row["status"] = "peers saturated"
        if peers_short:
            reasons.append(f"peers sent {pace:.0%} of {EXPECTED_FPS:.0f} fps on some track")
        if peers_busy:
            reasons.append(f"peers' CPU {peers_cpu} %")
    return row


# --- the ladder -------------------------------------------------------------------------------


def fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def rung_line(row: dict[str, Any]) -> str:
    return (
        f"N={row['n']:<3} connected {row['connected']}/{row['n']}  "
        f"video ratio min {fmt(row.get('video_ratio_min'), '.3f')} "
        f"(in-stream {fmt(row.get('video_in_stream_ratio_min'), '.3f')})  "
        f"audio ratio {fmt(row.get('audio_ratio_min'), '.3f')}.."
        f"{fmt(row.get('audio_ratio_max'), '.3f')}  "
        f"recorder CPU {fmt(row.get('recorder_cpu_pct'))} % "
        f"({fmt(row.get('recorder_cpu_pct_per_stream'))} %/stream, core busy "
        f"{fmt(row.get('core_busy_pct'))} %)  peers CPU {fmt(row.get('peers_cpu_pct'))} %, "
        f"sent {fmt(row.get('sent_fps_mean'))} fps  -> {row['status']}"
        + (f" ({'; '.join(row['reasons'])})" if row["reasons"] else "")
    )


async def run_ladder(args: argparse.Namespace) -> list[dict[str, Any]]:
    available = sorted(os.sched_getaffinity(0))
    recorder_core = available[0]
    peer_cpus = set(available[1:]) or {recorder_core}
    if len(available) < 2:
        print("warning: one core only: the peers share the recorder's core", file=sys.stderr)
    # This script and the dev backend (started below, inheriting this) keep off the recorder's core.
    os.sched_setaffinity(0, peer_cpus)
    print(
        f"recorder on core {recorder_core}; peers, dev backend and this script on "
        f"{sorted(peer_cpus)}; hold {args.hold:.0f} s; expected video {EXPECTED_FPS:.0f} fps",
        file=sys.stderr,
    )
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            tmp = str(tempfile.mkdtemp(prefix="recorder-capacity-", dir=args.keep))
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="recorder-capacity-"))
        server = stack.enter_context(DevServerProcess(Path(tmp) / "devserver.sqlite"))
        if server.pid is not None:
            pin(server.pid, peer_cpus)
        for n in args.ladder:
            row = await run_rung(
                server, n, args.hold, Path(tmp), recorder_core, peer_cpus, args.recorder_arg
            )
            rows.append(row)
            print(rung_line(row), file=sys.stderr, flush=True)
            if not row["ok"]:
                break
    return rows


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--peers-child":
        peers_child(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ladder", type=int, nargs="+", default=DEFAULT_LADDER)
    parser.add_argument("--hold", type=float, default=20.0, help="seconds, once all connected")
    parser.add_argument("--json", type=Path, default=None, help="write the rows to this file")
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep recordings and logs under this directory"
    )
    parser.add_argument(
        "--recorder-arg",
        action="append",
        default=[],
        help="extra argument for `connvo-agent run` (repeatable), e.g. --recorder-arg=--foo",
    )
    args = parser.parse_args()
    rows = asyncio.run(run_ladder(args))

    passed = [r["n"] for r in rows if r["ok"]]
    k = max(passed, default=0)
    print(
        f"\n{'N':>4} {'conn':>5} {'video':>6} {'in-str':>6} {'audio':>11} {'rec CPU%':>8} "
        f"{'core%':>6} {'peers%':>6} {'sent fps':>8}  status",
        file=sys.stderr,
    )
    for r in rows:
        audio = f"{fmt(r.get('audio_ratio_min'), '.3f')}..{fmt(r.get('audio_ratio_max'), '.3f')}"
        print(
            f"{r['n']:>4} {r['connected']:>5} {fmt(r.get('video_ratio_min'), '.3f'):>6} "
            f"{fmt(r.get('video_in_stream_ratio_min'), '.3f'):>6} {audio:>11} "
            f"{fmt(r.get('recorder_cpu_pct')):>8} {fmt(r.get('core_busy_pct')):>6} "
            f"{fmt(r.get('peers_cpu_pct')):>6} {fmt(r.get('sent_fps_mean')):>8}  {r['status']}",
            file=sys.stderr,
        )
    last = rows[-1] if rows else None
    bound = ""
    if last is not None and last["status"] == "peers saturated":
        bound = f" (at least: the peers saturated at N={last['n']}, not the recorder)"
    elif last is not None and last["ok"]:
        bound = " (at least: every rung of the ladder passed)"
    print(f"streams one core records without dropping frames: {k}{bound}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps({"figure": k, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
