"""The video sender's NACK prompts (agent.patches.nack_prompt), against aiortc's own receiver-side
NackGenerator: a hole whose NACK was lost is asked for again once a prompt reaches the receiver.

RTP packets are real aiortc RtpPackets, serialized; time is a clock the test moves. The calls in
tests/network/test_calls_under_profiles.py check the same end to end, over an impaired link.
"""

from __future__ import annotations

import pytest
from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import RtpPacket

from agent.patches.nack_prompt import PROMPT_INTERVAL_S, PROMPT_WINDOW_S, NackPrompter

SSRC = 4321


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rtp(sequence_number: int, *, last_of_frame: bool) -> bytes:
    packet = RtpPacket(payload_type=96, marker=int(last_of_frame), sequence_number=sequence_number)
    packet.ssrc = SSRC
    packet.payload = b"\x10" + bytes(100)
    return packet.serialize()


class Receiver:
    """aiortc's receiver-side NACK logic: a NACK of everything missing whenever a gap appears."""

    def __init__(self) -> None:
        self.generator = NackGenerator()
        self.nacks: list[list[int]] = []

    def receive(self, data: bytes) -> None:
        if self.generator.add(RtpPacket.parse(data)):
            self.nacks.append(sorted(self.generator.missing))


def send_frames(
    prompter: NackPrompter,
    receiver: Receiver,
    first: int,
    frames: int,
    clock: Clock,
    packets_per_frame: int = 2,
) -> int:
    """`frames` frames of `packets_per_frame` packets each from sequence number `first`, 50 ms
    apart."""
    sequence_number = first
    for _ in range(frames):
        for last in [False] * (packets_per_frame - 1) + [True]:
            for data in prompter.route(rtp(sequence_number, last_of_frame=last)):
                receiver.receive(data)
            sequence_number += 1
        clock.now += 0.05
    return sequence_number


@pytest.mark.parametrize("packets_per_frame", [1, 2])
def test_a_hole_whose_nack_was_lost_is_asked_for_again_after_a_prompt(
    packets_per_frame: int,
) -> None:
    clock, receiver = Clock(), Receiver()
    prompter = NackPrompter(clock)
    next_seq = send_frames(prompter, receiver, 0, 2, clock)  # 0..3 arrive
    # 4 is lost on the way; 5 arrives, the receiver NACKs [4], and the NACK is lost too
    receiver.receive(rtp(5, last_of_frame=True))
    assert receiver.nacks == [[4]]
    # the sender had been asked for an earlier packet (the burst's other losses)
    prompter.nacked([2])
    # the link runs clean: without a prompt aiortc's receiver would never ask again
    next_seq = send_frames(prompter, receiver, 6, 20, clock, packets_per_frame)
    assert prompter.prompts >= 1
    prompted_nacks = receiver.nacks[1:]
    assert prompted_nacks and all(4 in nack for nack in prompted_nacks)
    # each prompt is a swapped pair: every packet arrived (the last one held is still held)
    assert receiver.generator.missing == {4}
    assert receiver.generator.max_seq == next_seq - 1


def test_a_nack_of_the_prompt_alone_stops_the_prompts() -> None:
    clock, receiver = Clock(), Receiver()
    prompter = NackPrompter(clock)
    prompter.nacked([7])
    seq = send_frames(prompter, receiver, 0, 10, clock)
    assert prompter.prompts == 1
    assert receiver.nacks and receiver.generator.missing == set()
    prompted = receiver.nacks[-1]
    assert len(prompted) == 1
    prompter.nacked(prompted)  # the receiver misses only what was swapped on purpose
    send_frames(prompter, receiver, seq, 40, clock)
    assert prompter.prompts == 1


def test_prompts_wait_for_quiet_and_end_with_the_window() -> None:
    clock = Clock()
    prompter = NackPrompter(clock)
    first = rtp(1, last_of_frame=False)
    assert prompter.route(first) == [first]  # never asked: nothing is held
    prompter.nacked([1])
    clock.now += PROMPT_INTERVAL_S / 2
    assert prompter.route(first) == [first]  # a NACK just came: the receiver is asking anyway
    clock.now += PROMPT_INTERVAL_S
    last = rtp(2, last_of_frame=True)
    assert prompter.route(last) == []  # held (a frame's last packet, as in one-packet frames) ...
    next_frame = rtp(3, last_of_frame=True)
    assert prompter.route(next_frame) == [next_frame, last]  # ... and sent after the next one
    assert prompter.route(first) == [first]  # quiet again only PROMPT_INTERVAL_S from now
    clock.now += PROMPT_WINDOW_S
    assert prompter.route(first) == [first]  # the window is over
