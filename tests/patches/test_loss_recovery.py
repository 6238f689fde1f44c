"""The receivers' loss recovery (agent.patches.recovery), fed RTP packets with holes.

The audio jitter buffer is checked against aiortc's own on the same packets; the video recovery
inside a real aiortc RTCRtpReceiver, whose RTCP (NACK, PLI) is read where it leaves the receiver
for its transport. Time is a clock the test moves, so the timers are exact.
"""

from __future__ import annotations

import itertools
import random
import types
from collections.abc import Callable, Collection, Iterator
from typing import Any

import pytest
from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RTCP_PSFB_PLI, RTCP_RTPFB_NACK, RtcpPsfbPacket, RtcpRtpfbPacket, RtpPacket

from agent.patches import install, installed, uninstall
from agent.patches.recovery import (
    AudioJitterBuffer,
    RecoveringJitterBuffer,
    RecoveringNackGenerator,
)

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90_000, payloadType=96)
MEDIA_SSRC = 1234
VP8_KEYFRAME = b"\x50\x02\x00\x9d\x01\x2a\x40\x00\x30\x00"  # a key frame's header, 64x48


def audio(sequence_number: int) -> RtpPacket:
    packet = RtpPacket(payload_type=111, sequence_number=sequence_number & 0xFFFF)
    packet.timestamp = (sequence_number * 960) & 0xFFFFFFFF
    packet._data = sequence_number.to_bytes(4, "big")  # type: ignore[attr-defined]
    return packet


def released(buffer: JitterBuffer, sequence_numbers: list[int]) -> list[int]:
    """The sequence numbers of the frames `buffer` lets out, fed these packets in this order."""
    out = []
    for sequence_number in sequence_numbers:
        _, frame = buffer.add(audio(sequence_number))
        if frame is not None:
            out.append(int.from_bytes(frame.data, "big"))
    return out


def test_on_a_perfect_link_audio_is_released_as_aiortc_does() -> None:
    packets = list(range(60))
    ours = released(AudioJitterBuffer(), packets)
    assert ours == released(JitterBuffer(capacity=16, prefetch=4), packets)
    assert ours == list(range(56))  # a frame out once four more are queued behind it


def test_a_lost_packet_costs_its_own_frame_only() -> None:
    packets = [n for n in range(60) if n not in (10, 30, 31)]
    ours = released(AudioJitterBuffer(), packets)
    assert ours == [n for n in range(56) if n not in (10, 30, 31)]
    # aiortc's waits at each hole until full, then drops the four frames ahead of it
    assert len(released(JitterBuffer(capacity=16, prefetch=4), packets)) < len(ours) - 8


def test_late_packets_play_in_order_or_not_at_all() -> None:
    buffer = AudioJitterBuffer()
    # 5 comes after 6 and 7 (still in time); 1 comes after 0..5 were released; 8 twice
    order = [0, 1, 2, 3, 4, 6, 7, 5, 8, 8, 9, 10, 11, 12, 1, 13, 14]
    assert released(buffer, order) == list(range(11))
    assert buffer.held == 4


def test_sequence_numbers_wrap_around() -> None:
    start = 0xFFFF - 6
    packets = [n & 0xFFFF for n in range(start, start + 20) if n != 0x10000]
    out = released(AudioJitterBuffer(), packets)
    assert out == [n & 0xFFFF for n in range(start, start + 16) if n != 0x10000]


def test_a_long_gap_or_a_restart_keeps_the_buffer_bounded() -> None:
    buffer = AudioJitterBuffer()
    released(buffer, list(range(4)))
    assert released(buffer, [200]) == []  # the four held are too old to fit with it
    assert buffer.held == 1
    released(buffer, [5000, 5001, 5002, 5003, 5004, 40_000])
    assert buffer.held <= 5 and sum(p is not None for p in buffer._packets) == buffer.held


def test_random_loss_and_reordering_never_play_out_of_order() -> None:
    rng = random.Random(21)
    arrivals: list[int] = []
    for n in range(20_000):
        if rng.random() < 0.1:
            continue  # lost
        if arrivals and rng.random() < 0.1:
            arrivals.insert(len(arrivals) - rng.randint(1, min(3, len(arrivals))), n)
        else:
            arrivals.append(n)
    buffer = AudioJitterBuffer()
    out = []
    for n in arrivals:
        _, frame = buffer.add(audio(n))
        assert buffer.held <= 4 and sum(p is not None for p in buffer._packets) == buffer.held
        if frame is not None:
            out.append(int.from_bytes(frame.data, "big"))
    assert all((b - a) & 0xFFFF < 0x8000 and a != b for a, b in itertools.pairwise(out))
    assert len(out) > 0.85 * 20_000


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class VideoReceiver:
    """A real aiortc video receiver; what it sends is read as it leaves for the transport."""

    def __init__(self, clock: Clock) -> None:
        gatherer = RTCIceGatherer()
        dtls = RTCDtlsTransport(RTCIceTransport(gatherer), [RTCCertificate.generateCertificate()])
        self.receiver = RTCRtpReceiver("video", dtls)
        self.receiver._RTCRtpReceiver__codecs[96] = VP8  # type: ignore[attr-defined]
        self.receiver._set_rtcp_ssrc(99)
        self.nacks: RecoveringNackGenerator = self.receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
        self.buffer: RecoveringJitterBuffer = self.receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
        self.nacks._clock = self.buffer._clock = clock
        self.sent: list[Any] = []
        self.frames: list[int] = []

        async def send_rtcp(packet: Any) -> None:
            self.sent.append(packet)

        self.receiver._send_rtcp = send_rtcp  # type: ignore[method-assign]
        self.receiver._RTCRtpReceiver__decoder_thread = True  # type: ignore[attr-defined]
        self.receiver._RTCRtpReceiver__decoder_queue = types.SimpleNamespace(  # type: ignore[attr-defined]
            put=lambda item: self.frames.append(item[1].timestamp)
        )

    async def feed(
        self, sequence_number: int, frame: int, last: bool = False, key: bool = False
    ) -> None:
        packet = RtpPacket(
            payload_type=96,
            sequence_number=sequence_number,
            timestamp=frame * 3000,
            ssrc=MEDIA_SSRC,
            marker=last,
            # a VP8 payload descriptor (start of partition 0), then the frame
            payload=b"\x10" + (VP8_KEYFRAME if key else b"\x01") + bytes(20),
        )
        await self.receiver._handle_rtp_packet(packet, arrival_time_ms=0)

    async def feed_frames(
        self, first_frame: int, frames: int, lose: Collection[int] = (), key: bool = False
    ) -> None:
        """Frames of 3 packets each, sequence number 3 * frame + i, leaving out `lose`."""
        for frame in range(first_frame, first_frame + frames):
            for i in range(3):
                if 3 * frame + i not in lose:
                    await self.feed(3 * frame + i, frame, last=i == 2, key=key and i == 0)

    def nacked(self) -> list[list[int]]:
        return [
            p.lost for p in self.sent if isinstance(p, RtcpRtpfbPacket) and p.fmt == RTCP_RTPFB_NACK
        ]

    def plis(self) -> int:
        return sum(isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_PLI for p in self.sent)


@pytest.fixture
def recovery() -> Iterator[None]:
    before = installed()
    uninstall()
    install(only={"audio_jitter_buffer", "video_loss_recovery"})
    yield
    uninstall()
    install(only=before)


@pytest.fixture
def video(recovery: None) -> Callable[[], tuple[VideoReceiver, Clock]]:
    def make() -> tuple[VideoReceiver, Clock]:
        clock = Clock()
        return VideoReceiver(clock), clock

    return make


def test_receivers_get_the_patched_parts_only_while_installed(recovery: None) -> None:
    transport: Any = types.SimpleNamespace(state="new")
    audio_buffer = RTCRtpReceiver("audio", transport)._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]
    assert isinstance(audio_buffer, AudioJitterBuffer)
    uninstall(["audio_jitter_buffer", "video_loss_recovery"])
    plain = RTCRtpReceiver("video", transport)
    assert type(plain._RTCRtpReceiver__jitter_buffer) is JitterBuffer  # type: ignore[attr-defined]


async def test_a_packet_still_missing_is_asked_for_again_then_given_up(video: Any) -> None:
    end, clock = video()
    await end.feed_frames(0, 2, lose={4})
    assert end.nacked() == [[4]]  # asked at once, as aiortc does
    for step in range(1, 12):  # 50 ms steps; the frames behind the hole wait
        clock.now += 0.05
        await end.feed_frames(1 + step, 1)
    # again every round trip (150 ms until a retransmission has answered), for three round trips
    assert end.nacked() == [[4]] * 3
    # then given up: the broken frame is dropped, a keyframe asked for, the frames after played
    assert end.plis() == 1
    # the frames held behind the hole go out one per packet that arrives, so they catch up
    await end.feed_frames(13, 10)
    assert end.frames == [frame * 3000 for frame in range(22) if frame != 1]
    assert end.plis() == 1 and end.nacks.pending == 0


async def test_an_answered_nack_is_not_repeated_and_sets_the_round_trip(video: Any) -> None:
    end, clock = video()
    await end.feed_frames(0, 2, lose={4})
    clock.now += 0.04
    await end.feed(4, 1)  # the retransmission
    for step in range(10):
        clock.now += 0.05
        await end.feed_frames(2 + step, 1)
    assert end.nacked() == [[4]] and end.plis() == 0
    assert end.frames == [frame * 3000 for frame in range(11)]
    assert end.nacks.rtt == pytest.approx(0.04 * 0.1 + 0.15 * 0.9)


async def test_the_keyframe_request_is_repeated_until_a_keyframe_comes(video: Any) -> None:
    end, clock = video()
    await end.feed_frames(0, 2, lose={4})
    for frame in range(2, 30):  # 125 ms a frame, to 3.5 s
        clock.now += 0.125
        await end.feed_frames(frame, 1)
    # given up at 0.5 s (three round trips of 150 ms), and asked for a keyframe then, and again
    # with the first frame 300 ms or more later, to 3.5 s: the request or its answer was lost
    assert end.plis() == 9
    clock.now += 0.125
    await end.feed_frames(30, 1, key=True)
    await end.feed_frames(31, 1)  # the keyframe goes out as the next frame begins
    for frame in range(32, 40):
        clock.now += 0.125
        await end.feed_frames(frame, 1)
    assert end.plis() == 9


async def test_keyframe_requests_are_rate_limited(video: Any) -> None:
    end, clock = video()
    await end.feed_frames(0, 1)
    lost = {3 * frame + 1 for frame in range(1, 40, 2)}  # every other frame broken
    for frame in range(1, 60):
        clock.now += 0.033
        await end.feed_frames(frame, 1, lose=lost)
    # about two seconds with a loss every 66 ms: at most one PLI per 300 ms
    assert 1 <= end.plis() <= 2 / 0.3 + 1
    assert end.frames[-1] == 58 * 3000  # playing again after the losses
    assert end.nacks.pending == 0
