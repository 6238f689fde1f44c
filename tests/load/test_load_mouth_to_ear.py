"""Mouth-to-ear latency in load runs: marked audio sent, the marks found in the received audio,
per connection end, per second and in the summary; and nothing decoded for it when it is off."""

from __future__ import annotations

import asyncio
import html
import json
import time
from pathlib import Path
from typing import Any

import pytest

from agent.convex import make_http_client
from agent.peer.session import PeerSession, PeerState
from agent.roles.load.plan import LoadPlan
from agent.roles.load.provision import provision
from agent.roles.load.worker import LoadWorker
from tests.load.test_load import load
from tests.support.peers import RemotePeer
from tests.support.waiting import poll_until

LOOPBACK_MAX_MS = 500  # loopback adds next to nothing: encoder, jitter buffer, decoder


@pytest.mark.parametrize("media", ["preencoded", "full"])
def test_a_load_run_measures_mouth_to_ear(devserver: Any, tmp_path: Path, media: str) -> None:
    result = load(
        devserver,
        tmp_path / "r",
        *("--meetings", "1", "--peers-per-meeting", "2", "--duration", "5", "--media", media),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["plan"]["mouth_to_ear"] == 1  # the default

    sessions = [s for p in report["participants"] for s in p["sessions"]]
    assert len(sessions) == 2
    for s in sessions:
        # marks leave every 2 s and the hold is 5 s after both connected: each end heard some
        assert s["mouth_to_ear_marks"] >= 1, s
        assert 0 < s["mouth_to_ear_ms"] < LOOPBACK_MAX_MS, s

    q = report["summary"]["quality"]
    assert q["mouth_to_ear_connections"] == 2
    assert q["mouth_to_ear_marks"] == sum(s["mouth_to_ear_marks"] for s in sessions)
    m = q["mouth_to_ear_ms"]
    assert 0 < m["p50"] <= m["p95"] <= m["max"] < LOOPBACK_MAX_MS
    assert f"mouth to ear p50 {m['p50']:.0f} ms" in q["headline"]
    # the end-of-run line carries the headline
    assert q["headline"] in result.stdout

    # per second: the marks heard and their latencies' sum (so shards add up)
    rows = [row for row in report["timeline"] if row["mouth_to_ear_n"]]
    assert rows and all(0 < r["mouth_to_ear_sum_ms"] / r["mouth_to_ear_n"] < 500 for r in rows)

    page = (tmp_path / "r" / "report.html").read_text()
    line = page.index('class="mouth-to-ear"')
    assert page.index(html.escape(q["headline"])) < line < page.index("<svg")
    assert f"p50 {m['p50']:g} ms" in page[line:]


async def provisioned_worker(
    devserver: Any, tmp_path: Path, *, peers: int, duration: float, mouth_to_ear: int
) -> LoadWorker:
    """A load worker for one meeting of `peers` on loopback, its identities provisioned."""
    plan = LoadPlan(
        url=devserver.url,
        meetings=1,
        peers_per_meeting=peers,
        duration=duration,
        report_dir=tmp_path,
        ramp=20.0,
        admin_key=devserver.admin_key,
        ice_host_addresses=("127.0.0.1",),
        mouth_to_ear=mouth_to_ear,
    )
    async with make_http_client() as http:
        identities = await provision(plan, http)
    return LoadWorker(plan, identities, state_dir=tmp_path / "state")


async def test_off_means_no_marks_and_nothing_decoded(devserver: Any, tmp_path: Path) -> None:
    """--mouth-to-ear 0: plain pre-encoded audio, counting receivers, no detector, null fields."""
    worker = await provisioned_worker(devserver, tmp_path, peers=2, duration=1.0, mouth_to_ear=0)
    result = await worker.run(time.time())

    for running in worker.running:
        assert running.participant.settings.session.decode_media is False
        assert running.ears.detectors == {}
    assert type(worker._preencoded).__name__ == "PreencodedAudio"
    sessions = [s for p in result.participants for s in p.sessions]
    assert [s.state for s in sessions] == ["connected", "connected"]
    assert all(s.packets_received > 0 for s in sessions)  # audio flowed, counted
    assert all(s.mouth_to_ear_ms is s.mouth_to_ear_marks is None for s in sessions)
    assert all(row.mouth_to_ear_n == 0 for row in result.samples)


def counting(session: Any) -> bool:
    """Whether the session's connection only counts what it receives (agent.patches.receiver's
    count_only leaves its mark on the connection: its own transceiver factory)."""
    return "_RTCPeerConnection__createTransceiver" in vars(session.pc)


async def test_only_the_measured_connections_are_decoded(devserver: Any, tmp_path: Path) -> None:
    """--mouth-to-ear 1 in a mesh of three, pre-encoded: each participant decodes the audio of
    one connection (where it finds the marks); its other connection only counts its RTP."""
    worker = await provisioned_worker(devserver, tmp_path, peers=3, duration=5.0, mouth_to_ear=1)
    run = asyncio.create_task(worker.run(time.time()))

    def connected_sessions() -> list[list[PeerSession]]:
        found = []
        for running in worker.running:
            manager = running.participant.manager
            sessions = list(manager.sessions.values()) if manager is not None else []
            found.append([s for s in sessions if s.state is PeerState.CONNECTED])
        return found

    async def everyone_connected() -> bool:
        found = connected_sessions()
        return len(found) == 3 and all(len(sessions) == 2 for sessions in found)

    async with asyncio.timeout(30):
        await poll_until(everyone_connected)
    for running, sessions in zip(worker.running, connected_sessions(), strict=True):
        (measured,) = running.ears.detectors
        assert [counting(s) for s in sessions] == [s is not measured for s in sessions]
    result = await run

    by_name = {p.name: p for p in result.participants}
    for running in worker.running:
        figures = by_name[running.identity.name].sessions
        assert all(s.packets_received > 0 for s in figures)  # audio flowed to both
        heard = [s for s in figures if s.mouth_to_ear_marks]
        assert len(heard) == 1 and 0 < heard[0].mouth_to_ear_ms < LOOPBACK_MAX_MS, figures


async def test_a_measured_connection_reads_the_video_it_decodes(
    devserver: Any, tmp_path: Path
) -> None:
    """A person with a camera in a pre-encoded run: the connection measured mouth to ear decodes
    all it receives, so its video is read as well (aiortc queues the frames nobody reads)."""
    worker = await provisioned_worker(devserver, tmp_path, peers=2, duration=3.0, mouth_to_ear=1)
    person = worker.identities.pop()  # not a load participant: a peer sending audio and video
    async with RemotePeer(
        devserver.url, person.token, person.meeting_id, person.user_id, video=True
    ) as peer:
        result = await worker.run(time.time())
    assert peer.connected.is_set()

    ((session,),) = [p.sessions for p in result.participants]
    assert session.mouth_to_ear_marks is not None  # the measured connection
    assert session.quality["inbound"]["video_frames"] > 0, session.quality["inbound"]
