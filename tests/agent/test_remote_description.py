"""setRemoteDescription as the patch `remote_descriptions` leaves it: the same codecs as aiortc's
own matching, an answer applied without a turn of the event loop, and media flowing afterwards."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, sdp
from aiortc.codecs import CODECS
from aiortc.mediastreams import AudioStreamTrack

from agent.patches import install
from agent.patches.descriptions import aiortc_find_common_codecs, find_common_codecs
from agent.peer.ice import restrict_host_addresses

TIMEOUT_S = 10


def codec_pairs(description: str) -> list[tuple[str, Any]]:
    parsed = sdp.SessionDescription.parse(description)
    return [(m.kind, m.rtp.codecs) for m in parsed.media if m.kind in CODECS]


def assert_same_codecs(description: str) -> None:
    pairs = codec_pairs(description)
    assert pairs
    for kind, remote in pairs:
        ours = find_common_codecs(CODECS[kind], remote)
        assert ours == aiortc_find_common_codecs(CODECS[kind], remote), kind
        assert ours, kind
        # owned by the caller, as aiortc's are: changing them changes nothing of aiortc's
        before = copy.deepcopy(CODECS[kind])
        for codec in ours:
            codec.parameters["x-test"] = 1
            codec.rtcpFeedback.clear()
        assert CODECS[kind] == before


def loopback_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses(None)


async def aiortc_offer(*kinds: str) -> str:
    pc = loopback_pc()
    for kind in kinds:
        pc.addTransceiver(kind)
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    return offer


async def test_codecs_as_aiortc_matches_them() -> None:
    assert_same_codecs(await aiortc_offer("audio", "video"))
    # H.264 without profile-level-id or packetization mode (read as constrained baseline, mode 0),
    # and H.264 High, which aiortc does not have: its RTX is then refused too
    video = await aiortc_offer("video")
    mixed = video.replace(
        "a=fmtp:99 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        "a=fmtp:99 level-asymmetry-allowed=1",
    ).replace("profile-level-id=42e01f", "profile-level-id=640c1f")
    assert mixed.count("profile-level-id") == 1
    ours = find_common_codecs(CODECS["video"], codec_pairs(mixed)[0][1])
    assert [c.payloadType for c in ours] == [97, 98]  # VP8 and its RTX only
    assert_same_codecs(mixed)


@pytest.fixture
async def offerer_and_answerer() -> AsyncIterator[tuple[RTCPeerConnection, RTCPeerConnection]]:
    offerer, answerer = loopback_pc(), loopback_pc()
    try:
        yield offerer, answerer
    finally:
        await offerer.close()
        await answerer.close()


async def exchange(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> str:
    """Offer audio from `offerer`, answer it with audio; returns the answer, not yet applied."""
    offerer.addTrack(AudioStreamTrack())
    answerer.addTrack(AudioStreamTrack())
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    return str(answerer.localDescription.sdp)


async def connected(pc: RTCPeerConnection) -> None:
    changed = asyncio.Event()
    pc.on("connectionstatechange", changed.set)
    async with asyncio.timeout(TIMEOUT_S):
        while pc.connectionState != "connected":
            await changed.wait()
            changed.clear()


def steps_to_finish(coro: Coroutine[Any, Any, Any]) -> bool:
    """True when the coroutine finishes in the step that starts it (no wait for the loop)."""
    try:
        coro.send(None)
    except StopIteration:
        return True
    coro.close()
    return False


async def test_answer_applied_in_one_step_and_media_flows(
    offerer_and_answerer: tuple[RTCPeerConnection, RTCPeerConnection],
) -> None:
    install(only={"remote_descriptions"})
    offerer, answerer = offerer_and_answerer
    answer = await exchange(offerer, answerer)
    assert "a=candidate:" in answer
    assert steps_to_finish(offerer.setRemoteDescription(RTCSessionDescription(answer, "answer")))
    assert offerer.signalingState == "stable"
    transport = offerer.getTransceivers()[0].receiver.transport.transport
    assert len(transport.getRemoteCandidates()) == answer.count("a=candidate:")
    assert transport._connection._remote_candidates_end  # end-of-candidates reached aioice
    # and the connection comes up and carries audio
    received = asyncio.Event()
    track = offerer.getTransceivers()[0].receiver.track

    async def first_frame() -> None:
        await track.recv()
        received.set()

    async with asyncio.timeout(TIMEOUT_S), asyncio.TaskGroup() as tasks:
        tasks.create_task(first_frame())
        await received.wait()
    await connected(offerer)


async def test_a_candidate_that_waits_is_finished_by_a_task(
    offerer_and_answerer: tuple[RTCPeerConnection, RTCPeerConnection],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fault: adding a candidate waits a turn first (as aioice does while it resolves an mDNS
    # name, which would send multicast). The real addition runs after it.
    install(only={"remote_descriptions"})
    offerer, answerer = offerer_and_answerer
    answer = await exchange(offerer, answerer)
    transport = offerer.getTransceivers()[0].receiver.transport.transport
    real_add = transport.addRemoteCandidate
    waited = []

    async def add_after_a_turn(candidate: Any) -> None:
        await asyncio.sleep(0)
        waited.append(candidate)
        await real_add(candidate)

    monkeypatch.setattr(transport, "addRemoteCandidate", add_after_a_turn)
    async with asyncio.timeout(TIMEOUT_S):
        await offerer.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    assert len(waited) == answer.count("a=candidate:") + 1  # and end-of-candidates, last
    assert waited[-1] is None
    assert len(transport.getRemoteCandidates()) == answer.count("a=candidate:")
    assert transport._connection._remote_candidates_end
    await connected(offerer)
