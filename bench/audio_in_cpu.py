"""CPU per participant of the API's audio-in path at 16 kHz, against the transcriber's path today.

    python bench/audio_in_cpu.py [--participants 8] [--seconds 20] [--rounds 10]
                                 [--variants api transcriber] [--json] [--shared-cpus]

N remote aiortc peers (bench/peers_worker.py, in a child process: their CPU is not counted) each
send a tone (pre-encoded Opus, 440 Hz) to one agent running in this process, over the dev backend
(another process) on loopback. The agent's CPU time (time.process_time: every thread of this
process, so also aiortc's decoder threads and the worker threads the transcriber resamples in) is
measured in windows with and without an audio reader, alternating `--rounds` times, `--seconds`
of each per variant:

- api: `agent.join(...)` (the Meeting reads and decodes every remote track whatever the bot does);
  the reader is `participant.audio(sample_rate=16_000)` per participant, counting the bytes of
  `frame.pcm`. Idle: the same Meeting, no `audio()` stream open.
- transcriber: the transcriber's path before it moved onto the API (agent/roles/transcriber.py
  at commit f2ec237, copied here): a Participant whose track consumer has the shape of
  Transcriber._transcribe, a task reading the track with agent.media.sinks.frames and stamping
  each frame, batches of at least 10 frames handed to a worker thread, where StreamTranscriber.push
  resampled them to 16 kHz mono with its av.AudioResampler. The VAD and the recogniser are left
  out (the PCM is counted where the VAD took it): the same work as the API's reader, no more.
  Idle: the same consumer reading and discarding every frame.

Figures: CPU-ms per participant-second = ((CPU in the reader windows / their wall time) - (CPU in
the idle windows / their wall time)) * 1000 / N, over all windows and per round (the median and
range printed), and the ratio api / transcriber of the medians (adjacent windows cancel slow drifts,
the median the rounds a periodic task of the agent or a neighbour's job fell in). Each variant's
idle baseline is its own; neither sends media (the Meeting joins with `audio_out=False`).

On a machine with two or more CPUs the agent (this process) runs on the first CPU alone, and the
dev backend and the peers on the others (as bench/signal_latency.py does); --shared-cpus lets
everything share every CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
from aiortc.mediastreams import MediaStreamTrack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cpu_split import CpuSplit, spawning_world  # noqa: E402  (bench/cpu_split.py)

import agent  # noqa: E402
from agent.cli.loop import run_async  # noqa: E402
from agent.convex import ConvexClient, TokenSource  # noqa: E402
from agent.devserver.process import DevServerProcess  # noqa: E402
from agent.media.sinks import frames  # noqa: E402
from agent.patches import install as install_patches  # noqa: E402
from agent.peer.ice import restrict_host_addresses  # noqa: E402
from agent.peer.participant import Participant, ParticipantSettings  # noqa: E402
from agent.peer.session import PeerSession  # noqa: E402
from agent.signaling.api import ConnvoApi  # noqa: E402

RATE = 16_000
GAP_S = 1.0  # the transcriber's: a pause longer than this ends the utterance
CONNECT_TIMEOUT_S = 60.0
SETTLE_S = 3.0  # every connection up and media flowing before the first window
READER_SETTLE_S = 1.0  # from starting or stopping the readers to the window
BYTES_PER_S = RATE * 2  # 16 kHz mono s16


@dataclass
class Window:
    cpu_s: float
    wall_s: float
    audio_bytes: int  # 16 kHz PCM the readers got in the window

    @property
    def cpu_share(self) -> float:
        return self.cpu_s / self.wall_s


@dataclass
class Variant:
    name: str
    participants: int
    idle: list[Window] = field(default_factory=list)
    reading: list[Window] = field(default_factory=list)

    def per_round_ms(self) -> list[float]:
        """CPU-ms per participant-second, one figure per round."""
        return [
            (r.cpu_share - i.cpu_share) * 1000 / self.participants
            for i, r in zip(self.idle, self.reading, strict=True)
        ]

    def summary(self) -> dict[str, Any]:
        rounds = self.per_round_ms()
        idle_cpu = sum(w.cpu_s for w in self.idle) / sum(w.wall_s for w in self.idle)
        read_cpu = sum(w.cpu_s for w in self.reading) / sum(w.wall_s for w in self.reading)
        read_wall = sum(w.wall_s for w in self.reading)
        return {
            "variant": self.name,
            "participants": self.participants,
            "idle_cpu_pct": round(100 * idle_cpu, 1),
            "reading_cpu_pct": round(100 * read_cpu, 1),
            "cpu_ms_per_participant_s": round((read_cpu - idle_cpu) * 1000 / self.participants, 3),
            "median_of_rounds": round(statistics.median(rounds), 3),
            "per_round": [round(v, 3) for v in rounds],
            "audio_read_share": round(
                sum(w.audio_bytes for w in self.reading)
                / (BYTES_PER_S * self.participants * read_wall),
                3,
            ),
            "windows": {
                "idle": [asdict(w) for w in self.idle],
                "reading": [asdict(w) for w in self.reading],
            },
        }


async def window(seconds: float, audio_bytes: Callable[[], int]) -> Window:
    cpu, wall, count = time.process_time(), time.monotonic(), audio_bytes()
    await asyncio.sleep(seconds)
    return Window(time.process_time() - cpu, time.monotonic() - wall, audio_bytes() - count)


# --- the remote peers -------------------------------------------------------------------------


class Peers:
    """bench/peers_worker.py: N light peers (a pre-encoded tone each, nothing decoded) that call
    the agent and stay until closed."""

    def __init__(self, server: DevServerProcess, meeting_id: str, names: list[str]) -> None:
        self.spec = {
            "url": server.url,
            "meeting": meeting_id,
            "target": server.user_id("bot"),
            "peers": [{"token": server.token(n), "user_id": server.user_id(n)} for n in names],
            "light": True,
            "video": False,
            "poll_interval": 0.05,
            "idle_poll_interval": 1.0,
        }
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, split: CpuSplit | None) -> None:
        with spawning_world(split):
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(ROOT / "bench" / "peers_worker.py"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        await self._send(json.dumps(self.spec))
        await self._line()  # ready

    async def call(self) -> int:
        """Every peer offers to the agent; how many connected."""
        await self._send("go")
        connected = 0
        while not (line := await self._line()).get("done"):
            connected += line["offer_to_connected_s"] is not None
        return connected

    async def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            async with asyncio.timeout(20):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    async def _send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def _line(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        if not raw:
            raise RuntimeError("bench/peers_worker.py exited")
        line: dict[str, Any] = json.loads(raw)
        return line


async def alternate(
    variant: Variant,
    seconds: float,
    rounds: int,
    start_readers: Callable[[], None],
    stop_readers: Callable[[], Coroutine[Any, Any, None]],
    audio_bytes: Callable[[], int],
) -> None:
    """Idle and reading windows, `rounds` of each, `seconds` of each in all."""
    await asyncio.sleep(SETTLE_S)
    each = seconds / rounds
    for _ in range(rounds):
        variant.idle.append(await window(each, audio_bytes))
        start_readers()
        await asyncio.sleep(READER_SETTLE_S)
        variant.reading.append(await window(each, audio_bytes))
        await stop_readers()
        await asyncio.sleep(READER_SETTLE_S)


# --- api: agent.join, participant.audio(sample_rate=16_000) -----------------------------------


async def api_variant(
    server: DevServerProcess,
    workdir: Path,
    names: list[str],
    seconds: float,
    rounds: int,
    split: CpuSplit | None,
) -> Variant:
    meeting_id = server.meeting("bot", names)
    variant = Variant("api", len(names))
    peers = Peers(server, meeting_id, names)
    counts: dict[str, int] = {}
    readers: set[asyncio.Task[None]] = set()

    async def read(p: agent.RemoteParticipant) -> None:
        async for frame in p.audio(sample_rate=RATE):
            counts[p.user_id] = counts.get(p.user_id, 0) + len(frame.pcm)

    async def drain_events(meeting: agent.Meeting) -> None:
        async for _ in meeting.events():  # a bot reads its events
            pass

    try:
        async with agent.join(
            server.url,
            server.token("bot"),
            meeting_id,
            state_dir=workdir / "state-api",
            ice_host_addresses=["127.0.0.1"],
            audio_out=False,  # a listener, as the transcriber is: no encoder per connection
        ) as meeting:
            events = asyncio.create_task(drain_events(meeting))
            await peers.start(split)
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                connected = await peers.call()
                while audio_tracks(meeting) < len(names):  # noqa: ASYNC110 (no such event)
                    await asyncio.sleep(0.1)
            print(f"# api: {connected}/{len(names)} peers connected", file=sys.stderr)

            def start() -> None:
                for p in meeting.participants.values():
                    readers.add(asyncio.create_task(read(p)))

            async def stop() -> None:
                for task in readers:
                    task.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
                readers.clear()

            await alternate(variant, seconds, rounds, start, stop, lambda: sum(counts.values()))
            events.cancel()
    finally:
        await peers.close()
    return variant


def audio_tracks(meeting: agent.Meeting) -> int:
    return sum("audio" in p.tracks for p in meeting.participants.values())


# --- transcriber: Transcriber._transcribe's shape, without VAD and recognition ----------------
# A copy of the transcriber's path before it moved onto the API (agent/roles/transcriber.py at
# commit f2ec237): the working tree's StreamTranscriber takes 16 kHz frames from track.audio().


class ResamplingPush:
    """StreamTranscriber.push as of f2ec237 without the VAD and the recogniser: its lock and
    timing, the gap bookkeeping, the av.AudioResampler to 16 kHz mono and the PCM copy; the PCM
    is counted where the VAD took it."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        self._anchor: float | None = None
        self._samples = 0
        self._lock = threading.Lock()
        self.audio_seconds = 0.0
        self.busy_seconds = 0.0
        self.bytes = 0

    def push(self, frames: list[tuple[Any, float]]) -> list[Any]:
        with self._lock:
            started = time.perf_counter()
            for frame, arrival in frames:
                duration = frame.samples / frame.sample_rate
                self.audio_seconds += duration
                if self._anchor is None:
                    self._anchor = arrival - duration
                gap = arrival - duration - (self._anchor + self._samples / RATE)
                if gap > GAP_S:
                    self._samples += round(gap * RATE)  # (and the VAD flushed and skipped)
                for resampled in self._resampler.resample(frame):
                    pcm = bytes(resampled.planes[0])[: resampled.samples * 2]
                    self._samples += resampled.samples
                    self.bytes += len(pcm)  # (the VAD's push)
            self.busy_seconds += time.perf_counter() - started
            return []


class TranscriberShaped:
    """A track consumer shaped as Transcriber._transcribe as of f2ec237 (the reader task that
    stamps each frame, the batching, the worker-thread hop), around ResamplingPush. While not
    `active`, frames are read and discarded (the idle baseline)."""

    def __init__(self) -> None:
        self.active = False
        self.streams: list[ResamplingPush] = []
        self.tracks = 0

    def audio_bytes(self) -> int:
        return sum(s.bytes for s in self.streams)

    def on_track(self, session: PeerSession, track: MediaStreamTrack) -> Coroutine[Any, Any, None]:
        if track.kind != "audio":
            return _drain(track)
        self.tracks += 1
        return self._transcribe(session.remote_session_id, track)

    async def _transcribe(self, session_id: str, track: MediaStreamTrack) -> None:
        stream = ResamplingPush()
        self.streams.append(stream)
        received: asyncio.Queue[tuple[Any, float] | None] = asyncio.Queue()

        async def receive() -> None:
            try:
                async for frame in frames(track):
                    if self.active:
                        received.put_nowait((frame, time.time()))
            finally:
                received.put_nowait(None)

        reader = asyncio.create_task(receive(), name=f"bench-receive-{session_id}")
        batch: list[tuple[Any, float]] = []
        ended = False
        try:
            while not ended:
                item = await received.get()
                while item is not None:  # all that has arrived (more when catching up)
                    batch.append(item)
                    if received.empty():
                        break
                    item = received.get_nowait()
                ended = item is None
                if len(batch) >= 10 or ended:  # at least 200 ms of audio per worker-thread call
                    full, batch = batch, []
                    await asyncio.to_thread(stream.push, full)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def _drain(track: MediaStreamTrack) -> None:
    async for _ in frames(track):
        pass


async def transcriber_variant(
    server: DevServerProcess,
    workdir: Path,
    names: list[str],
    seconds: float,
    rounds: int,
    split: CpuSplit | None,
) -> Variant:
    meeting_id = server.meeting("bot", names)
    variant = Variant("transcriber", len(names))
    peers = Peers(server, meeting_id, names)
    consumer = TranscriberShaped()
    client = ConvexClient(server.url, TokenSource(value=server.token("bot")))
    # as the transcriber role's: decode_media (SessionSettings' default), no local tracks
    settings = ParticipantSettings(meeting_id=meeting_id, state_dir=workdir / "state-transcriber")
    participant = Participant(ConnvoApi(client), settings, on_track=consumer.on_track)
    stop = asyncio.Event()
    run = asyncio.create_task(participant.run(stop))
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await participant.joined.wait()
            await peers.start(split)
            connected = await peers.call()
            while consumer.tracks < len(names):  # noqa: ASYNC110 (no such event)
                await asyncio.sleep(0.1)
        print(f"# transcriber: {connected}/{len(names)} peers connected", file=sys.stderr)

        def start() -> None:
            consumer.active = True

        async def stop_reading() -> None:
            consumer.active = False

        await alternate(variant, seconds, rounds, start, stop_reading, consumer.audio_bytes)
    finally:
        await peers.close()
        stop.set()
        try:
            async with asyncio.timeout(20):
                await run
        finally:
            await client.aclose()
    return variant


# --- output ---------------------------------------------------------------------------------


def print_table(summaries: list[dict[str, Any]], ratio: float | None, seconds: float) -> None:
    header = (
        f"{'path':<12} {'N':>3} {'idle CPU':>9} {'reading CPU':>12} {'CPU-ms/participant-s':>21} "
        f"{'median of rounds':>17} {'rounds min..max':>16} {'audio read':>11}"
    )
    print(header)
    print("-" * len(header))
    for s in summaries:
        rounds = s["per_round"]
        spread = f"{min(rounds):.2f}..{max(rounds):.2f}" if rounds else "-"
        print(
            f"{s['variant']:<12} {s['participants']:>3} {s['idle_cpu_pct']:>8.1f}% "
            f"{s['reading_cpu_pct']:>11.1f}% {s['cpu_ms_per_participant_s']:>21.2f} "
            f"{s['median_of_rounds']:>17.2f} {spread:>16} {100 * s['audio_read_share']:>10.0f}%"
        )
    print(
        f"(CPU: % of one core, this process, {seconds:g} s of each kind of window per path; "
        "CPU-ms/participant-s: all reading windows less all idle windows; audio read: 16 kHz "
        "PCM the readers got / 32 kB/s per participant)"
    )
    if ratio is not None:
        print(f"api / transcriber (medians of rounds): {ratio:.2f}")


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=8)
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="of idle and of reading windows, per path"
    )
    parser.add_argument(
        "--rounds", type=int, default=10, help="idle/reading alternations the seconds are split in"
    )
    parser.add_argument(
        "--variants", nargs="+", choices=["api", "transcriber"], default=["api", "transcriber"]
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--shared-cpus",
        action="store_true",
        help="let the agent share every CPU with the backend and the peers",
    )
    args = parser.parse_args(argv)
    install_patches()  # the agent runs in this process
    restrict_host_addresses(["127.0.0.1"])
    split = None if args.shared_cpus else CpuSplit.of_this_machine()
    if split is not None:
        os.sched_setaffinity(0, split.agent)  # before any thread of the agent starts
        print(
            f"# agent on CPU {sorted(split.agent)}, backend and peers on {sorted(split.world)}",
            file=sys.stderr,
        )
    names = [f"p{i:03d}" for i in range(args.participants)]
    summaries = []
    with tempfile.TemporaryDirectory(prefix="bench-audio-in-") as tmp:
        workdir = Path(tmp)
        with spawning_world(split):
            server = DevServerProcess(workdir / "devserver.sqlite").start()
        try:
            for name in args.variants:
                run = api_variant if name == "api" else transcriber_variant
                started = time.monotonic()
                variant = await run(server, workdir, names, args.seconds, args.rounds, split)
                summaries.append(variant.summary())
                print(f"# {name}: {time.monotonic() - started:.0f} s", file=sys.stderr)
        finally:
            server.stop()
    by_name = {s["variant"]: s["median_of_rounds"] for s in summaries}
    ratio = None
    if "api" in by_name and by_name.get("transcriber"):
        ratio = by_name["api"] / by_name["transcriber"]
    if args.json:
        print(json.dumps({"variants": summaries, "api_over_transcriber": ratio}, indent=2))
    else:
        print_table(summaries, ratio, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(run_async(main()))
