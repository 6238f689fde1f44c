"""Call quality under every network profile, side by side: the agent against plain aiortc.

    scripts/isolated .venv/bin/python bench/network_quality.py [--network good ...]
        [--seconds 60] [--seed 2121] [--json FILE]

Per profile (`--network`, repeatable; all four by default), two calls across one ImpairedLink
(docs/network.md), one after the other, each end a process of its own in its side:

- call "agent": side A is the agent (a Participant, agent.patches installed, sending
  MarkedPreencodedAudio("tone") through its packet pump, and aiortc's test video, 640x480 at 30
  frames a second, as the plain peers do: only the stacks differ), side B a plain aiortc
  peer (tests.support.peers.RemotePeer, no patches, sending marked 48 kHz silence encoded by
  aiortc's sender, and aiortc's own test video);
- call "aiortc": both sides plain aiortc peers, as side B above.

So the lane B -> A carries the same sender's media into the agent and into plain aiortc, and the
lane A -> B carries the agent's and plain aiortc's media into the same plain receiver. Each end
measures what it receives, every INTERVAL_S from when it first hears both audio and video:

  MOS               the E-model (agent.peer.quality.audio_mos) from half the RTT, the audio
                    jitter, and the audio the receiving track did not play in the interval (lost on
                    the link, or dropped by the receiver's jitter buffer), as a share of the frames
                    sent (counted from the RTP timestamps of the frames played); no concealment
                    (aiortc conceals nothing). p50 and p5 over the intervals.
  MOS (network)     the same from getStats alone (packets lost on the link): what
                    connvo-agent's own quality figures report for a connection.
  freezes/min       video freezes (agent.peer.quality.FreezeCounter: a gap over three frame
                    intervals, and over 150 ms) per minute measured; frozen: the share of the
                    time
  mouth-to-ear      p50 and p95 of the marks (agent.media.marks: a chirp a second, dated where the
                    sender hands it to aiortc and where the decoded frame comes out of the track;
                    one machine, one clock)

Both ends reach one dev backend through TcpForwarders (signalling is not impaired).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SELF = str(Path(__file__).resolve())
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.network import PROFILE_NAMES, ImpairedLink, parse_profile  # noqa: E402
from tests.network.helpers import JsonLinesProcess, backend_in_both_sides  # noqa: E402

INTERVAL_S = 5.0
CONNECT_TIMEOUT_S = 30.0
SCHEDULE_ARGS = {"period_s": 1.0, "offset_s": 0.09, "max_latency_s": 0.9}


# --- one end of a call (a process in one side) --------------------------------------------------


class Hearing:
    """What one end receives: audio frames per interval, marks, video frame arrivals."""

    def __init__(self) -> None:
        from agent.media.marks import MarkDetector, MarkSchedule
        from agent.peer.quality import FreezeCounter

        self.detector = MarkDetector(MarkSchedule(**SCHEDULE_ARGS), keep=1000)
        self.freezes = FreezeCounter()
        self.audio_frames = 0
        self.audio_due = 0.0  # frames the sender sent, from the RTP timestamps received
        self._last_pts: int | None = None
        self.heard = asyncio.Event()

    def audio(self, frame: Any) -> None:
        self.audio_frames += 1
        # aiortc gives a decoded frame its packet's RTP timestamp: the frames in between were
        # sent, whenever (or if ever) this end got them
        if self._last_pts is not None and frame.pts > self._last_pts:
            self.audio_due += (frame.pts - self._last_pts) / frame.samples
        elif self._last_pts is None:
            self.audio_due = 1.0
        self._last_pts = frame.pts if self._last_pts is None else max(frame.pts, self._last_pts)
        self.detector.feed(frame, time.time())
        self._check()

    def video(self, frame: Any) -> None:
        self.freezes.add(time.monotonic())
        self._check()

    def _check(self) -> None:
        if self.audio_frames and self.freezes.reading().frames and not self.heard.is_set():
            self.heard.set()


async def measure(pc_of: Any, hearing: Hearing, intervals: list[dict[str, Any]]) -> None:
    """Every INTERVAL_S from when both kinds are heard: one interval's figures, appended."""
    from agent.peer.quality import NO_CONCEALMENT_BPL, audio_mos, quality_between

    await hearing.heard.wait()
    previous = await pc_of().getStats()
    frames, audio, due = hearing.freezes.reading(), hearing.audio_frames, hearing.audio_due
    while True:
        await asyncio.sleep(INTERVAL_S)  # the measurement window
        report = await pc_of().getStats()
        now_frames, now_audio, now_due = (
            hearing.freezes.reading(),
            hearing.audio_frames,
            hearing.audio_due,
        )
        snap = quality_between(
            previous, report, "inbound", frames=(frames, now_frames), interval_s=INTERVAL_S
        )
        played = (now_audio - audio) / max(1.0, now_due - due)
        unplayed_pct = min(100.0, max(0.0, 100.0 * (1.0 - played)))
        mos = audio_mos(
            (snap.rtt_ms or 0.0) / 2.0,
            max(unplayed_pct, snap.audio_loss_pct or 0.0),
            snap.audio_jitter_ms or 0.0,
            bpl=NO_CONCEALMENT_BPL,
        )
        intervals.append(
            {
                "mos": mos,
                "mos_network": snap.audio_mos,
                "audio_unplayed_pct": unplayed_pct,
                "audio_loss_pct": snap.audio_loss_pct,
                "rtt_ms": snap.rtt_ms,
                "video_frames": snap.video_frames,
                "freeze_count": snap.freeze_count,
                "freeze_duration_s": snap.freeze_duration_s,
            }
        )
        previous, frames, audio, due = report, now_frames, now_audio, now_due


async def end_main(kind: str) -> None:
    """`--end agent|aiortc`: one end. stdin: the config line, then anything to report, EOF to
    leave. stdout: {"heard": true} once audio and video arrive, {"report": ...} on request."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    config = json.loads(await reader.readline())
    hearing = Hearing()
    intervals: list[dict[str, Any]] = []

    def say(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    async def converse(pc_of: Any) -> None:
        async with asyncio.TaskGroup() as tasks:
            measuring = tasks.create_task(measure(pc_of, hearing, intervals))
            await hearing.heard.wait()
            say({"heard": True})
            while await reader.readline():
                summary = hearing.detector.summary()
                say(
                    {
                        "report": {
                            "intervals": intervals,
                            "latencies_ms": [s.latency_ms for s in hearing.detector.samples],
                            "marks_heard": summary.heard,
                            "marks_missed": summary.missed,
                        }
                    }
                )
            measuring.cancel()

    if kind == "agent":
        await agent_end(config, hearing, converse)
    else:
        await aiortc_end(config, hearing, converse)


async def agent_end(config: dict[str, Any], hearing: Hearing, converse: Any) -> None:
    from aiortc.mediastreams import MediaStreamError, VideoStreamTrack

    from agent.convex import ConvexClient, RetryPolicy, TokenSource
    from agent.media.marks import MarkedPreencodedAudio, MarkSchedule
    from agent.patches import install
    from agent.peer.participant import Participant, ParticipantSettings
    from agent.peer.session import PeerState, SessionSettings
    from agent.signaling.api import ConnvoApi

    install()
    audio = MarkedPreencodedAudio("tone", MarkSchedule(**SCHEDULE_ARGS))

    async def consume(session: Any, track: Any) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                (hearing.audio if track.kind == "audio" else hearing.video)(frame)

    client = ConvexClient(
        config["url"], TokenSource(value=config["token"]), retry=RetryPolicy(max_attempts=6)
    )
    settings = ParticipantSettings(
        meeting_id=config["meeting_id"],
        state_dir=Path(config["state_dir"]),
        call_everyone=True,
        ice_servers_override=[],
        discovery_first_interval=0.2,
        discovery_interval=1.0,
        session=SessionSettings(session_timeout=30.0),
    )
    participant = Participant(
        ConnvoApi(client),
        settings,
        # the same video as the plain peers send (aiortc's test video): only the stacks differ
        local_tracks=lambda: [audio.track(), VideoStreamTrack()],
        on_track=consume,
    )

    def pc_of() -> Any:
        manager = participant.manager
        for session in manager.sessions.values() if manager else ():
            if session.state is PeerState.CONNECTED and session.pc is not None:
                return session.pc
        raise RuntimeError("no connected session")

    stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(participant.run(stop))
            await converse(pc_of)
            stop.set()
    finally:
        audio.stop()
        await client.aclose()


async def aiortc_end(config: dict[str, Any], hearing: Hearing, converse: Any) -> None:
    from agent.media.marks import MarkedAudioTrack, MarkSchedule
    from tests.support.peers import RemotePeer

    schedule = MarkSchedule(**SCHEDULE_ARGS)
    peer = RemotePeer(
        config["url"],
        config["token"],
        config["meeting_id"],
        config["user_id"],
        audio_track=lambda: MarkedAudioTrack(None, schedule),
        on_audio=hearing.audio,
        on_video=hearing.video,
    )
    async with peer:
        if config.get("offer_to"):
            await peer.offer(config["offer_to"])
        await converse(lambda: peer.pc)


# --- the run --------------------------------------------------------------------------------------


@dataclass
class Row:
    profile: str
    lane: str  # "b->a" or "a->b"
    sender: str
    receiver: str
    seconds: float = 0.0
    intervals: int = 0
    mos_p50: float | None = None
    mos_p5: float | None = None
    mos_network_p50: float | None = None
    mos_network_p5: float | None = None
    audio_unplayed_pct: float | None = None
    freezes_per_min: float | None = None
    frozen_pct: float | None = None
    fps: float | None = None
    mouth_to_ear_p50_ms: float | None = None
    mouth_to_ear_p95_ms: float | None = None
    marks_heard: int = 0
    marks_due: int = 0
    link_loss_pct: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def row_from(
    profile: str, lane: str, sender: str, receiver: str, report: dict[str, Any], loss: float | None
) -> Row:
    intervals = report["intervals"]
    row = Row(profile, lane, sender, receiver, intervals=len(intervals))
    row.seconds = len(intervals) * INTERVAL_S
    mos = [i["mos"] for i in intervals]
    network = [i["mos_network"] for i in intervals if i["mos_network"] is not None]
    row.mos_p50, row.mos_p5 = percentile(mos, 0.5), percentile(mos, 0.05)
    row.mos_network_p50, row.mos_network_p5 = percentile(network, 0.5), percentile(network, 0.05)
    if intervals:
        row.audio_unplayed_pct = statistics.fmean(i["audio_unplayed_pct"] for i in intervals)
        freezes = sum(i["freeze_count"] or 0 for i in intervals)
        frozen = sum(i["freeze_duration_s"] or 0.0 for i in intervals)
        row.freezes_per_min = freezes / (row.seconds / 60.0)
        row.frozen_pct = 100.0 * frozen / row.seconds
        row.fps = sum(i["video_frames"] or 0 for i in intervals) / row.seconds
    latencies = report["latencies_ms"]
    row.mouth_to_ear_p50_ms = percentile(latencies, 0.5)
    row.mouth_to_ear_p95_ms = percentile(latencies, 0.95)
    row.marks_heard = report["marks_heard"]
    row.marks_due = report["marks_heard"] + report["marks_missed"]
    row.link_loss_pct = loss
    row.raw = report
    return row


async def one_call(
    backend: Any, profile: str, a_kind: str, seconds: float, seed: int, work: Path
) -> tuple[dict[str, Any], dict[str, Any], dict[str, float | None]]:
    """One call, side A `a_kind`, side B plain aiortc: (A's report, B's report, loss per lane)."""
    from tests.support.devserver import unique

    alice, bob = unique("a"), unique("b")
    meeting_id = backend.meeting(alice, [bob])
    async with (
        ImpairedLink(profile, seed=seed) as link,
        backend_in_both_sides(link, backend.url),
    ):
        pipes = {"stdin": asyncio.subprocess.PIPE, "stdout": asyncio.subprocess.PIPE}
        ends = [
            JsonLinesProcess(await link.a.python(SELF, "--end", a_kind, **pipes)),
            JsonLinesProcess(await link.b.python(SELF, "--end", "aiortc", **pipes)),
        ]
        try:
            for end, user, offer_to in (
                (ends[0], alice, backend.user_id(bob) if a_kind == "aiortc" else None),
                (ends[1], bob, None),
            ):
                await end.send(
                    {
                        "url": backend.url,
                        "token": backend.token(user),
                        "meeting_id": meeting_id,
                        "user_id": backend.user_id(user),
                        "offer_to": offer_to,
                        "state_dir": str(work / f"{profile}-{a_kind}-{user}"),
                    }
                )
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                for end in ends:
                    await end.receive("heard")
            await asyncio.sleep(seconds + INTERVAL_S / 2)  # the measurement
            for end in ends:
                await end.send({"report": True})
            reports = [await end.receive("report") for end in ends]
            stats = await link.stats()
        finally:
            for end in ends:
                await end.leave()
    loss = {
        lane: 100.0 * (s.lost + s.capped + s.overflow) / s.taken if s.taken else None
        for lane, s in (("a->b", stats.a_to_b), ("b->a", stats.b_to_a))
    }
    return reports[0], reports[1], loss


def commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True)
    return result.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_rows(rows: list[Row]) -> None:
    header = (
        f"{'profile':<7} {'lane':<5} {'sender -> receiver':<18} {'MOS p50':>7} {'p5':>5} "
        f"{'net p50':>7} {'p5':>5} {'unplayed':>8} {'freezes/min':>11} {'frozen':>7} "
        f"{'fps':>5} {'m2e p50':>8} {'p95':>7} {'marks':>7} {'link loss':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.profile:<7} {r.lane:<5} {f'{r.sender} -> {r.receiver}':<18} "
            f"{fmt(r.mos_p50, '.2f'):>7} {fmt(r.mos_p5, '.2f'):>5} "
            f"{fmt(r.mos_network_p50, '.2f'):>7} {fmt(r.mos_network_p5, '.2f'):>5} "
            f"{fmt(r.audio_unplayed_pct, '.1f') + ' %':>8} {fmt(r.freezes_per_min, '.1f'):>11} "
            f"{fmt(r.frozen_pct, '.1f') + ' %':>7} {fmt(r.fps, '.1f'):>5} "
            f"{fmt(r.mouth_to_ear_p50_ms, '.0f') + ' ms':>8} "
            f"{fmt(r.mouth_to_ear_p95_ms, '.0f') + ' ms':>7} "
            f"{f'{r.marks_heard}/{r.marks_due}':>7} {fmt(r.link_loss_pct, '.1f') + ' %':>9}"
        )


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--end", choices=["agent", "aiortc"], help=argparse.SUPPRESS)
    parser.add_argument(
        "--network",
        action="append",
        choices=PROFILE_NAMES,
        help="a network profile (repeatable; default: all)",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="measured per call")
    parser.add_argument("--seed", type=int, default=2121, help="the links' random draws")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = parser.parse_args(argv)
    if args.end:
        await end_main(args.end)
        return 0
    import tempfile

    from agent.devserver.process import DevServerProcess

    profiles = args.network or list(PROFILE_NAMES)
    for name in profiles:
        parse_profile(name)
    rows: list[Row] = []
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as work, DevServerProcess() as backend:
        for name in profiles:
            began = time.monotonic()
            by_kind = {}
            for kind in ("agent", "aiortc"):
                by_kind[kind] = await one_call(
                    backend, name, kind, args.seconds, args.seed, Path(work)
                )
            (agent_a, agent_b, agent_loss), (plain_a, plain_b, plain_loss) = (
                by_kind["agent"],
                by_kind["aiortc"],
            )
            rows += [
                row_from(name, "b->a", "aiortc", "agent", agent_a, agent_loss["b->a"]),
                row_from(name, "b->a", "aiortc", "aiortc", plain_a, plain_loss["b->a"]),
                row_from(name, "a->b", "agent", "aiortc", agent_b, agent_loss["a->b"]),
                row_from(name, "a->b", "aiortc", "aiortc", plain_b, plain_loss["a->b"]),
            ]
            print(f"# {name}: {time.monotonic() - began:.0f} s", file=sys.stderr)
    print(
        f"# bench/network_quality.py, {started:%Y-%m-%d}, commit {commit()}, "
        f"{args.seconds:g} s per call, intervals of {INTERVAL_S:g} s, seed {args.seed}"
    )
    print_rows(rows)
    if args.json:
        args.json.write_text(
            json.dumps({"commit": commit(), "rows": [asdict(r) for r in rows]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    from agent.cli.loop import run_async

    sys.exit(run_async(main()))
