"""The agent in a call across an impaired link, under each profile, against a plain aiortc peer.

The agent (a Participant, on an event loop of its own in a thread inside side A) and a plain aiortc
peer (tests.support.peers.RemotePeer in a process inside side B) signal through one dev backend,
which both sides reach through a TcpForwarder (signalling is not impaired; the media is). Each
sends audio and video; each direction of offer is tried. The call must connect and stay up, audio
must keep arriving at about real time, video must keep arriving after a second of 50 % loss (the
receivers asked for retransmissions, the senders were asked, and retransmitted packets arrived),
and no buffer or queue on either end may grow past its bound while the link is bad.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.devserver.process import DevServerProcess
from agent.network import LANES, ImpairedLink
from agent.network.link import ADDRESSES
from agent.peer.ice import restrict_host_addresses
from tests.network.helpers import AgentEnd, JsonLinesProcess, backend_in_both_sides, run_agent
from tests.support.devserver import unique
from tests.support.waiting import poll_until

PEER = str(Path(__file__).resolve().parent / "peer_proc.py")
CONNECT_S = 20.0
HOLD_S = 2.0  # audio is counted over this, once both ends hear each other
BURST_S = 1.0  # 50 % loss both ways, on top of the profile
BURST_LOSS = 0.5
RECOVER_S = 3.0  # video frames must be arriving again within this after the burst
AUDIO_FPS = 50  # 20 ms Opus frames
# Audio frames heard, as a share of real time, at least (see below): at the agent's end, with its
# audio jitter buffer (agent.patches.recovery), and at the plain aiortc peer's, with aiortc's.
AUDIO_FLOOR = {
    "agent": {"good": 0.9, "wifi": 0.75, "mobile": 0.5, "bad": 0.3},
    "peer": {"good": 0.85, "wifi": 0.65, "mobile": 0.45, "bad": 0.2},
}
# The bounds no buffer may pass: aiortc's own capacities (jitter buffers 16 and 512 packets, RTP
# history and NACK window 128), and for the unbounded queues (decoder, track, ICE receive queue,
# UDP send buffer) a few frames' or packets' worth: a consumer that keeps up.
BOUNDS = {
    "audio_jitter_buffer": 16,
    "video_jitter_buffer": 512,
    "audio_decoder_queue": 5,
    "video_decoder_queue": 5,
    "audio_track_queue": 10,
    "video_track_queue": 10,
    "audio_nack_missing": 0,
    "video_nack_missing": 128,
    "audio_send_history": 128,
    "video_send_history": 128,
    "ice_receive_queue": 200,
    "udp_send_buffer": 64 * 1024,
}


@pytest.fixture(scope="module")
def backend() -> Iterator[DevServerProcess]:
    with DevServerProcess() as server:
        yield server


@pytest.fixture(autouse=True)
def agent_ice_on_side_a() -> Iterator[None]:
    """The agent gathers on side A's address alone (the peer is a process of its own)."""
    restrict_host_addresses([ADDRESSES["a"]])
    yield
    restrict_host_addresses(None)


async def heard_both(agent: AgentEnd, peer: JsonLinesProcess) -> bool:
    if not (agent.audio_at and agent.video_at):
        return False
    status = await peer.status()
    return bool(status["audio_frames"] and status["video_frames"])


def frames_between(arrivals: list[float], start: float, end: float) -> int:
    return sum(1 for t in arrivals if start <= t < end)


def longest_gap(arrivals: list[float], start: float, end: float) -> float:
    times = [t for t in arrivals if start <= t < end]
    return max((b - a for a, b in itertools.pairwise(times)), default=end - start)


@pytest.mark.parametrize("offerer", ["agent", "peer"])
@pytest.mark.parametrize("profile", ["good", "wifi", "mobile", "bad"])
async def test_a_call_under_the_profile(
    profile: str, offerer: str, backend: DevServerProcess, tmp_path: Path
) -> None:
    bot, alice = unique("bot"), unique("alice")
    meeting_id = backend.meeting(bot, [alice])
    agent = AgentEnd()
    started = time.monotonic()
    async with (
        ImpairedLink(profile, seed=21) as link,
        backend_in_both_sides(link, backend.url),
    ):
        nominal = {lane: link.impairment(lane) for lane in LANES}
        process = await link.b.python(
            PEER, "connvo", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        peer = JsonLinesProcess(process)
        await peer.send(
            {
                "url": backend.url,
                "token": backend.token(alice),
                "meeting_id": meeting_id,
                "user_id": backend.user_id(alice),
                "offer_to": None if offerer == "agent" else backend.user_id(bot),
            }
        )
        agent_run = asyncio.create_task(
            link.a.run(
                lambda: run_agent(
                    backend.url,
                    backend.token(bot),
                    meeting_id,
                    offerer == "agent",
                    tmp_path / "state",
                    agent,
                )
            )
        )
        try:
            async with asyncio.timeout(CONNECT_S):
                await peer.receive("connected")
                await poll_until(agent.is_connected)
                # both ends hear each other before the hold starts
                await poll_until(lambda: heard_both(agent, peer))
            connected_s = time.monotonic() - started

            # Audio at about real time both ways, over the hold.
            hold_start = time.monotonic()
            await asyncio.sleep(HOLD_S)
            hold_end = time.monotonic()
            before = await peer.status()
            heard = {
                "agent": frames_between(agent.audio_at, hold_start, hold_end) / HOLD_S,
                "peer": frames_between(before["audio_at"], hold_start, hold_end) / HOLD_S,
            }
            gaps = {
                "agent": longest_gap(agent.audio_at, hold_start, hold_end),
                "peer": longest_gap(before["audio_at"], hold_start, hold_end),
            }

            # A second of heavy loss both ways, then the profile again.
            requests_before = (agent.counts.as_dict(), before["rtcp"])
            for lane in LANES:
                await link.set_impairment(
                    lane, dataclasses.replace(nominal[lane], loss=BURST_LOSS, burst=None)
                )
            await asyncio.sleep(BURST_S)
            await link.set_profile(profile)
            burst_end = time.monotonic()
            at_burst_end = await peer.status()

            # Video keeps arriving at both ends: frames after the burst, as at the end of the hold.
            def recovered(status: dict[str, Any]) -> dict[str, bool]:
                agent_frames = frames_between(agent.video_at, burst_end + 0.5, time.monotonic())
                peer_frames = status["video_frames"] - at_burst_end["video_frames"]
                return {"agent": agent_frames >= 10, "peer": peer_frames >= 15}

            async def video_again() -> dict[str, Any] | None:
                status = await peer.status()
                return status if all(recovered(status).values()) else None

            stuck: dict[str, Any] | None = None
            try:
                async with asyncio.timeout(RECOVER_S):
                    after = await poll_until(video_again)
            except TimeoutError:
                after = await peer.status()
                stuck = {
                    "recovered": recovered(after),
                    "agent_levels": agent.levels[-1],
                    "peer_levels": after["levels_now"],
                }
            recovered_s = time.monotonic() - burst_end
            stats = await link.stats()
        finally:
            agent.leave()
            await peer.leave()
            await agent_run

    agent_requests = agent.counts.as_dict()
    peer_requests = after["rtcp"]
    figures = {
        "connected_s": round(connected_s, 2),
        "audio_fps": {k: round(v, 1) for k, v in heard.items()},
        "audio_longest_gap_s": {k: round(v, 3) for k, v in gaps.items()},
        "recovered_s": round(recovered_s, 2),
        "agent": {**agent_requests, "rtx_received": agent.rtx_received},
        "peer": {**peer_requests, "rtx_received": after["rtx_received"]},
        "link": {lane: dataclasses.asdict(stats.lane(lane)) for lane in LANES},
    }
    print(profile, offerer, json.dumps(figures))
    message = json.dumps(figures)

    # The call was up to the end, both ways.
    assert after["state"] == "connected" and agent.state == "connected", message
    # Audio keeps playing: no long silence, at most real time, and at least the share of it that
    # the end's audio jitter buffer releases under the profile (docs/network.md). Replaying
    # 30 000 packets drawn by each profile's model (three seeds), the lowest 2 s window released
    # 100, 93, 87 and 47 % (good, wifi, mobile, bad) through the agent's AudioJitterBuffer, and
    # 100, 71, 40 and 21 % through aiortc's JitterBuffer (it drops the four frames queued ahead
    # of each loss). In the calls the agent's end heard 96-102, 99-102, 95-98 and 82-88 % in
    # most runs, but twice in 40 calls 79 % and 50 % (the hold starts as the call does, on a
    # machine shared with other tests): the floors sit under all of those.
    for end in ("agent", "peer"):
        assert AUDIO_FPS * AUDIO_FLOOR[end][profile] <= heard[end] <= AUDIO_FPS * 1.1, message
        assert gaps[end] < 1.0, message
    # Loss was answered with retransmissions: receivers asked, senders were asked, RTX arrived.
    for mine, theirs, rtx in (
        (agent_requests, peer_requests, agent.rtx_received),
        (peer_requests, agent_requests, after["rtx_received"]),
    ):
        assert mine["nacks_sent"] > 0 and theirs["retransmits_asked"] > 0 and rtx > 0, message
    # The peer's keyframe requests (aiortc's: a decoding error, an overflowing jitter buffer) all
    # reached the agent's sender. The agent's own may be lost in the burst and not repeated: its
    # video receivers ask again only until a keyframe comes, and aiortc's encoder starts one
    # unasked when its bitrate changes (tests/patches/test_loss_recovery.py checks the repeats).
    assert agent_requests["keyframes_asked"] >= min(1, peer_requests["plis_sent"]), message
    assert requests_before[0]["nacks_sent"] < agent_requests["nacks_sent"], message
    # Video came back at both ends within RECOVER_S of the burst. The agent's receivers ask again
    # for what is still missing, then give it up and ask for a keyframe (patch
    # video_loss_recovery). The plain aiortc peer's receiver asks again only when a later gap
    # appears: the agent's video sender makes one once the peer is quiet (video_nack_prompt).
    assert stuck is None, f"video stalled: {stuck} {message}"
    # Nothing grew past its bound, at either end, through the hold, the burst and the recovery.
    highest = {
        "agent": {name: max(s.get(name, 0) for s in agent.levels) for name in BOUNDS},
        "peer": after["levels_max"],
    }
    for end, levels in highest.items():
        for name, bound in BOUNDS.items():
            assert levels.get(name, 0) <= bound, f"{end} {name}: {json.dumps(highest)}"
