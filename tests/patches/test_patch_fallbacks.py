"""Every patch has a working fallback: a real call works with that patch left out.

The agent and an aiortc peer call each other through the dev backend; media flows both ways. With
every patch in place, each one is seen at work; with one left out, its fallback is seen instead
(and every other patch still at work), and the call still carries audio and video both ways.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import aioice.ice
import aiortc.rtcdtlstransport
import aiortc.rtcpeerconnection
import pytest
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpreceiver import NackGenerator

from agent.patches import PATCHES
from agent.patches.certificate import SharedCertificate
from agent.patches.descriptions import find_common_codecs
from agent.patches.receiver import _CountingPath, _NoJitterBuffer
from agent.patches.recovery import AudioJitterBuffer, RecoveringNackGenerator
from tests.patches.conftest import GATHER_CAP_S, Call, CallFactory, media_both_ways

_CANDIDATE_ADDRESS = re.compile(r"^a=candidate:(?:\S+\s+){4}(\S+)\s", re.MULTILINE)


def _player_streams(call: Call) -> int:
    player: Any = call.sources.video._player  # type: ignore[union-attr]
    return len(player._MediaPlayer__streams)


def _unplayed_backlog(call: Call) -> int:
    """Frames queued for the file's audio, which the agent does not play (0 without a track)."""
    player: Any = call.sources.video._player  # type: ignore[union-attr]
    return 0 if player.audio is None else int(player.audio._queue.qsize())


def _receivers(call: Call) -> list[Any]:
    return [t.receiver for t in call.pc.getTransceivers()]


def _peer_receiver(call: Call, kind: str) -> Any:
    """The aiortc peer's receiver of `kind` (it decodes, so it keeps its jitter buffers)."""
    assert call.peer.pc is not None
    return next(t.receiver for t in call.peer.pc.getTransceivers() if t.receiver.track.kind == kind)


# patch -> (what shows it at work, what shows its fallback), read from a call with media flowing
AT_WORK: dict[str, tuple[Callable[[Call], bool], Callable[[Call], bool]]] = {
    "ice_host_addresses": (
        lambda c: set(_CANDIDATE_ADDRESS.findall(c.pc.localDescription.sdp)) == {"127.0.0.1"},
        lambda c: "127.0.0.1" not in _CANDIDATE_ADDRESS.findall(c.pc.localDescription.sdp),
    ),
    "ice_gather_timeout": (
        lambda c: c.answered_after < 4.0,  # capped at GATHER_CAP_S
        lambda c: c.answered_after >= 4.5,  # aioice's 5 s for the silent STUN server
    ),
    "remote_descriptions": (
        lambda c: aiortc.rtcpeerconnection.find_common_codecs is find_common_codecs,
        lambda c: aiortc.rtcpeerconnection.find_common_codecs is not find_common_codecs,
    ),
    "shared_certificate": (
        lambda c: isinstance(c.pc._RTCPeerConnection__certificates[0], SharedCertificate),
        lambda c: not isinstance(c.pc._RTCPeerConnection__certificates[0], SharedCertificate),
    ),
    "packet_pump": (
        lambda c: c.sources.preencoded_audio.pump.streams == 1,  # type: ignore[union-attr]
        lambda c: c.sources.preencoded_audio.pump.streams == 0,  # type: ignore[union-attr]
    ),
    "counting_receivers": (
        lambda c: all(
            isinstance(r._RTCRtpReceiver__jitter_buffer, _NoJitterBuffer) for r in _receivers(c)
        ),
        lambda c: (
            not any(
                isinstance(r._RTCRtpReceiver__jitter_buffer, _NoJitterBuffer) for r in _receivers(c)
            )
        ),
    ),
    "counting_path": (
        lambda c: isinstance(_ice_connection(c).__dict__.get("data_received"), _CountingPath),
        lambda c: "data_received" not in _ice_connection(c).__dict__,
    ),
    "one_stream_player": (
        lambda c: _player_streams(c) == 1,
        # both streams decoded, the unplayed one's frames discarded as the video plays
        lambda c: _player_streams(c) == 2 and _unplayed_backlog(c) < 100,
    ),
    "audio_jitter_buffer": (
        lambda c: isinstance(
            _peer_receiver(c, "audio")._RTCRtpReceiver__jitter_buffer, AudioJitterBuffer
        ),
        lambda c: type(_peer_receiver(c, "audio")._RTCRtpReceiver__jitter_buffer) is JitterBuffer,
    ),
    "video_loss_recovery": (
        lambda c: all(
            isinstance(r._RTCRtpReceiver__nack_generator, RecoveringNackGenerator)
            for r in (_peer_receiver(c, "video"), *_receivers(c))
            if r.track.kind == "video"
        ),
        lambda c: type(_peer_receiver(c, "video")._RTCRtpReceiver__nack_generator) is NackGenerator,
    ),
    # prompts start only after a NACK (none on loopback): the senders' RTP goes through the
    # patch's wrapper, or straight to aiortc's (tests/patches/test_nack_prompt.py: the prompts)
    "video_nack_prompt": (
        lambda c: _send_rtp_module() == "agent.patches.nack_prompt",
        lambda c: _send_rtp_module() == "aiortc.rtcdtlstransport",
    ),
}


def _send_rtp_module() -> str:
    return str(aiortc.rtcdtlstransport.RTCDtlsTransport._send_rtp.__module__)


def _ice_connection(call: Call) -> aioice.ice.Connection:
    transport = _receivers(call)[0].transport.transport
    connection: aioice.ice.Connection = transport._connection
    return connection


def test_every_patch_is_covered_here() -> None:
    assert set(AT_WORK) == set(PATCHES)


async def _check(call: Call, left_out: str | None) -> None:
    await media_both_ways(call)
    for name, (at_work, fallback) in AT_WORK.items():
        if name == left_out or left_out in PATCHES[name].requires:
            assert fallback(call), f"{name} left out, but its fallback is not what ran"
        else:
            assert at_work(call), f"{name} installed, but not at work"


async def test_a_call_with_every_patch(agent_call: CallFactory) -> None:
    async with agent_call() as call:
        await _check(call, None)
        assert call.answered_after < GATHER_CAP_S + 3.5


@pytest.mark.parametrize("name", list(PATCHES))
async def test_a_call_works_without(
    name: str, agent_call: CallFactory, install_all_but: Callable[..., frozenset[str]]
) -> None:
    assert install_all_but(name) == frozenset(PATCHES) - {name}
    if name == "ice_host_addresses" and not aioice.ice.get_host_addresses(True, True):
        pytest.skip("no interface but loopback: aioice alone would gather no host candidate")
    async with agent_call() as call:
        await _check(call, name)
