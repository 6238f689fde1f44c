"""aiortc's RTCRtpReceiver under loss: audio that plays past a hole, video that asks again.

aiortc 1.16's audio jitter buffer (16 packets, 4 prefetched) stops at a lost packet until it is
full, then throws away the four frames queued ahead of the hole: five frames lost per lost packet,
and from the first loss on, audio runs about 300 ms behind. Patch `audio_jitter_buffer` gives each
audio receiver an `AudioJitterBuffer`: once more than four packets are held it releases the oldest
one present, stepping over holes, so a loss costs its own frame and the delay stays 80 ms.

aiortc's video receiver asks for a missing packet (NACK) once, and again only when a later gap
appears; its jitter buffer then holds every later frame until the hole is filled or 512 packets
have arrived (10 s or more), and only then asks for a keyframe. Patch `video_loss_recovery` gives
each video receiver a `RecoveringNackGenerator`, which asks again for each packet still missing
about once a round trip (a few times, while the sender still keeps it), and a
`RecoveringJitterBuffer`, which, once a hole at its head can no longer be filled, drops the frames
it broke and asks for a keyframe (PLI) at once, and again every `PLI_INTERVAL_S` until one comes.

Both are given to each receiver as it is constructed (`RTCRtpReceiver.__init__` is wrapped), in
place of aiortc's own objects of the same classes' bases; a receiver constructed while a patch
is out keeps aiortc's.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable
from typing import Any

import aiortc.rtcrtpreceiver as _receiver
from aiortc.jitterbuffer import MAX_MISORDER, JitterBuffer, JitterFrame
from aiortc.rtp import RTP_HISTORY_SIZE, RtpPacket

from agent.patches._patch import Patch

AUDIO_CAPACITY = 16  # aiortc's
AUDIO_PREFETCH = 4  # packets held back against jitter (80 ms of 20 ms frames), as aiortc's
VIDEO_CAPACITY = 512  # aiortc's

INITIAL_RTT_S = 0.15  # until a retransmission has answered a NACK
MIN_RETRY_S = 0.02  # a reordered packet "answers" at once: the estimate never goes below this
MAX_NACKS = 4  # NACKs per missing packet at most (the first and three more)
GIVE_UP_RTTS = 3.0  # a hole is given up this many round trips after it was seen ...
MIN_GIVE_UP_S = 0.25  # ... but not sooner than this
PLI_INTERVAL_S = 0.3  # keyframe requests from one receiver's recovery, at most one per this

Clock = Callable[[], float]


class AudioJitterBuffer(JitterBuffer):
    """Releases the oldest packet it holds once more than `prefetch` are held, over any hole.

    A packet older than the last one released is dropped (it would play out of order), as is a
    duplicate; a packet too far ahead to fit drops the oldest ones held. So it never holds more
    than `prefetch` + 1 packets, and on a perfect link it delays as aiortc's does (a frame out
    when four more are queued behind it).
    """

    def __init__(self, capacity: int = AUDIO_CAPACITY, prefetch: int = AUDIO_PREFETCH) -> None:
        super().__init__(capacity=capacity, prefetch=prefetch)
        self._mask = capacity - 1
        self.held = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        sequence_number = packet.sequence_number
        origin = self._origin
        if origin is None:
            origin = self._origin = sequence_number
        ahead = (sequence_number - origin) & 0xFFFF
        if ahead >= 0x8000:  # behind the next one to release
            if 0x10000 - ahead < MAX_MISORDER:
                return False, None  # late: what followed it was already released
            self._skip(self._capacity)  # far behind: the sender started again
            self._origin = sequence_number
        elif ahead >= self._capacity:
            self._skip(ahead - self._capacity + 1)  # make room: the oldest ones held go
        packets = self._packets
        slot = sequence_number & self._mask
        if packets[slot] is not None:
            return False, None  # a duplicate
        packets[slot] = packet
        self.held += 1
        if self.held <= self._prefetch:
            return False, None
        origin = self._origin
        assert origin is not None
        while (oldest := packets[origin & self._mask]) is None:  # held > 0: it ends
            origin = (origin + 1) & 0xFFFF
        packets[origin & self._mask] = None
        self.held -= 1
        self._origin = (origin + 1) & 0xFFFF
        data: bytes = oldest._data  # type: ignore[attr-defined]  # set by the receiver
        return False, JitterFrame(data=data, timestamp=oldest.timestamp)

    def _skip(self, count: int) -> None:
        """Moves the origin `count` sequence numbers on, dropping what they hold."""
        assert self._origin is not None
        if count >= self._capacity:
            self._packets[:] = [None] * self._capacity
            self.held = 0
        else:
            for offset in range(count):
                slot = (self._origin + offset) & self._mask
                if self._packets[slot] is not None:
                    self._packets[slot] = None
                    self.held -= 1
        self._origin = (self._origin + count) & 0xFFFF

    def remove(self, count: int) -> None:  # aiortc's, kept consistent with `held`
        self._skip(count)


class _Missing:
    __slots__ = ("nacks", "next_nack", "seen")

    def __init__(self, seen: float, next_nack: float) -> None:
        self.seen = seen
        self.next_nack = next_nack
        self.nacks = 1


class RecoveringNackGenerator(_receiver.NackGenerator):
    """aiortc's NackGenerator, asking again for what is still missing, and giving up on it.

    `add()` returns True when a NACK is due; `missing` then holds what it asks for (the packets
    this packet revealed missing, and those whose next try is due), which aiortc's receiver sends.
    The round trip is estimated from the first answer to each NACK: it follows a slower answer at
    once and a quicker one slowly (a reordered packet answers "at once" without being a resend).
    It is asked for at most `MAX_NACKS` times, and given up `GIVE_UP_RTTS` round trips (at least
    `MIN_GIVE_UP_S`) after it was missed, or once it falls out of the last `RTP_HISTORY_SIZE`
    packets (the sender keeps no more). At most that many are tracked.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._pending: dict[int, _Missing] = {}
        self._next_check = float("inf")
        self.rtt = INITIAL_RTT_S
        self.given_up = 0  # packets given up so far

    def add(self, packet: RtpPacket) -> bool:
        sequence_number = packet.sequence_number
        max_seq = self.max_seq
        if max_seq is None:
            self.max_seq = sequence_number
            return False
        now = self._clock()
        due: list[int] = []
        pending = self._pending
        ahead = (sequence_number - max_seq) & 0xFFFF
        if 0 < ahead < 0x8000:
            if ahead > 1:
                retry = now + self._retry_s()
                first = max(1, ahead - RTP_HISTORY_SIZE)
                for offset in range(first, ahead):
                    missed = (max_seq + offset) & 0xFFFF
                    pending[missed] = _Missing(now, retry)
                    due.append(missed)
                self._next_check = min(self._next_check, retry)
                self._forget_before((sequence_number - RTP_HISTORY_SIZE) & 0xFFFF)
            self.max_seq = sequence_number
        else:
            found = pending.pop(sequence_number, None)
            if found is not None and found.nacks == 1:
                sample = now - found.seen
                self.rtt = max(sample, 0.9 * self.rtt + 0.1 * sample, MIN_RETRY_S)
        if now >= self._next_check:
            due.extend(self._due(now))
        self.missing = set(due)
        return bool(due)

    def is_pending(self, sequence_number: int) -> bool:
        """Whether `sequence_number` is missing and still asked for."""
        return sequence_number in self._pending

    @property
    def pending(self) -> int:
        return len(self._pending)

    def truncate(self) -> None:  # aiortc's name; the window is kept in add()
        if self.max_seq is not None:
            self._forget_before((self.max_seq - RTP_HISTORY_SIZE) & 0xFFFF)

    def _retry_s(self) -> float:
        return max(self.rtt, MIN_RETRY_S)

    def _forget_before(self, oldest: int) -> None:
        stale = [s for s in self._pending if 0 < ((oldest - s) & 0xFFFF) < 0x8000]
        for sequence_number in stale:
            del self._pending[sequence_number]
        self.given_up += len(stale)

    def _due(self, now: float) -> list[int]:
        retry = self._retry_s()
        give_up_after = max(GIVE_UP_RTTS * self.rtt, MIN_GIVE_UP_S)
        due: list[int] = []
        gone: list[int] = []
        next_check = float("inf")
        for sequence_number, missing in self._pending.items():
            if now - missing.seen >= give_up_after:
                gone.append(sequence_number)
                continue
            if missing.next_nack <= now and missing.nacks < MAX_NACKS:
                missing.nacks += 1
                missing.next_nack = now + retry
                due.append(sequence_number)
            if missing.nacks < MAX_NACKS:
                next_check = min(next_check, missing.next_nack)
            next_check = min(next_check, missing.seen + give_up_after)
        for sequence_number in gone:
            del self._pending[sequence_number]
        self.given_up += len(gone)
        self._next_check = next_check
        return due


class RecoveringJitterBuffer(JitterBuffer):
    """aiortc's video JitterBuffer, which drops the frames a lost packet broke and asks for a
    keyframe, instead of waiting for 512 packets.

    Once `nacks` gives up on the first packet missing from the head, the frame that packet was
    part of, the frame the next packet present is part of, and the hole between them are
    dropped (the two are the same frame when the loss was inside one), and add() says a keyframe
    is wanted (PLI) at once, and again every `PLI_INTERVAL_S` until a keyframe comes out (the
    request or the keyframe may have been lost too).
    """

    def __init__(
        self,
        nacks: RecoveringNackGenerator,
        capacity: int = VIDEO_CAPACITY,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(capacity=capacity, is_video=True)
        self._nacks = nacks
        self._clock = clock
        self._given_up_seen = 0
        self._last_pli = float("-inf")
        self._waiting = False
        self._keyframe_wanted = False  # since a skip, until a keyframe is released
        self.frames_dropped = 0  # holes skipped (each drops one or two frames)

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        pli, frame = super().add(packet)
        given_up = self._nacks.given_up
        if frame is None and (self._waiting or given_up != self._given_up_seen):
            self._given_up_seen = given_up
            if self._skip_lost():
                self.frames_dropped += 1
                self._keyframe_wanted = True
                frame = self._remove_frame(packet.sequence_number)
                self._waiting = True  # another hole may wait behind this one
        if self._keyframe_wanted:
            if frame is not None and is_keyframe(frame.data):
                self._keyframe_wanted = False
            elif self._clock() - self._last_pli >= PLI_INTERVAL_S:
                pli = True  # the first request, or again: it or its keyframe may have been lost
        if pli:
            self._last_pli = self._clock()
        return pli, frame

    def _skip_lost(self) -> bool:
        """Drops what a given-up hole at the head broke; False if there is none, or not yet.

        Sets `_waiting` when the head waits on a given-up hole but the frame after it is still
        arriving (its end is not known yet): the next packet tries again.
        """
        self._waiting = False
        origin = self._origin
        if origin is None:
            return False
        capacity = self._capacity
        packets = self._packets
        hole = next((o for o in range(capacity) if packets[(origin + o) % capacity] is None), None)
        if hole is None or not self._lost((origin + hole) & 0xFFFF):
            return False
        broken: set[int] = set()
        head = packets[origin % capacity]
        if head is not None:
            broken.add(head.timestamp)  # the frame the hole cut short
        after_hole = True
        for offset in range(hole, capacity):
            packet = packets[(origin + offset) % capacity]
            if packet is None:
                continue
            if after_hole:  # the first packet after the hole: its frame may have lost its start
                broken.add(packet.timestamp)
                after_hole = False
            elif packet.timestamp not in broken:
                self.remove(offset)  # the next whole frame starts here
                return True
        self._waiting = True
        return False

    def _lost(self, sequence_number: int) -> bool:
        """Whether a packet missing from the buffer was given up (is not coming any more)."""
        max_seq = self._nacks.max_seq
        return (
            max_seq is not None
            and 0 < ((max_seq - sequence_number) & 0xFFFF) < 0x8000
            and not self._nacks.is_pending(sequence_number)
        )


def is_keyframe(data: bytes) -> bool:
    """Whether a reassembled VP8 or H.264 frame (as aiortc depayloads them) is a keyframe."""
    if len(data) >= 6 and data[0] & 1 == 0 and data[3:6] == b"\x9d\x01\x2a":
        return True  # VP8: the key frame's start code (RFC 6386, 9.1)
    if not data.startswith(b"\x00\x00"):  # a VP8 inter frame starts with an odd byte
        return False
    # H.264 (Annex B; emulation prevention keeps start codes out of the NAL units): an IDR slice
    start = data.find(b"\x00\x00\x01")
    while start != -1 and start + 3 < len(data):
        if data[start + 3] & 0x1F == 5:
            return True
        start = data.find(b"\x00\x00\x01", start + 3)
    return False


def _with_recovery(receiver: Any) -> None:
    """Gives a receiver being constructed the patched jitter buffer and NACK generator."""
    try:
        kind = receiver._RTCRtpReceiver__kind
        jitter_buffer = receiver._RTCRtpReceiver__jitter_buffer
        nacks = receiver._RTCRtpReceiver__nack_generator
    except AttributeError:  # another aiortc: its own
        return
    if type(jitter_buffer) is not JitterBuffer:
        return
    if kind == "audio" and AUDIO_JITTER_BUFFER.installed and nacks is None:
        receiver._RTCRtpReceiver__jitter_buffer = AudioJitterBuffer(
            jitter_buffer.capacity, jitter_buffer._prefetch
        )
    elif kind == "video" and VIDEO_LOSS_RECOVERY.installed:
        if type(nacks) is not _receiver.NackGenerator:
            return
        recovering = RecoveringNackGenerator()
        receiver._RTCRtpReceiver__nack_generator = recovering
        receiver._RTCRtpReceiver__jitter_buffer = RecoveringJitterBuffer(
            recovering, jitter_buffer.capacity
        )


_saved: dict[str, Any] = {}


def _apply() -> str | None:
    if "__init__" in _saved:
        return None  # the other patch put the constructor in place
    original = _receiver.RTCRtpReceiver.__init__
    probe = _receiver.RTCRtpReceiver("video", types.SimpleNamespace(state="new"))  # type: ignore[arg-type]
    if not isinstance(getattr(probe, "_RTCRtpReceiver__jitter_buffer", None), JitterBuffer):
        return "RTCRtpReceiver keeps its jitter buffer elsewhere"
    if type(getattr(probe, "_RTCRtpReceiver__nack_generator", None)) is not (
        _receiver.NackGenerator
    ):
        return "RTCRtpReceiver keeps its NACK generator elsewhere"
    if not all(hasattr(JitterBuffer, name) for name in ("_remove_frame", "remove", "capacity")):
        return "aiortc's JitterBuffer has changed"

    def __init__(self: Any, kind: str, transport: Any) -> None:
        original(self, kind, transport)
        _with_recovery(self)

    _saved["__init__"] = original
    _receiver.RTCRtpReceiver.__init__ = __init__  # type: ignore[method-assign]
    return None


def _restore() -> None:
    if AUDIO_JITTER_BUFFER.installed and VIDEO_LOSS_RECOVERY.installed:
        return  # the other one still needs the constructor (it checks which are installed)
    if "__init__" in _saved:
        _receiver.RTCRtpReceiver.__init__ = _saved.pop("__init__")  # type: ignore[method-assign]


AUDIO_JITTER_BUFFER = Patch(
    name="audio_jitter_buffer",
    replaces=(
        "aiortc.RTCRtpReceiver.__init__",
        "aiortc.RTCRtpReceiver.__jitter_buffer (per audio receiver)",
    ),
    why=(
        "aiortc's audio jitter buffer waits at a lost packet until it holds 16, then discards "
        "the four frames queued ahead of the hole: five frames lost per lost packet, and audio "
        "about 300 ms late from the first loss on. The agent's plays the oldest packet it holds "
        "once more than four are queued, stepping over holes."
    ),
    fallback="aiortc's audio jitter buffer: five frames lost per lost packet, 300 ms behind.",
    libraries=("aiortc",),
    apply=_apply,
    restore=_restore,
)

VIDEO_LOSS_RECOVERY = Patch(
    name="video_loss_recovery",
    replaces=(
        "aiortc.RTCRtpReceiver.__init__",
        "aiortc.RTCRtpReceiver.__nack_generator, __jitter_buffer (per video receiver)",
    ),
    why=(
        "aiortc asks for a missing video packet again only when a later gap appears, so a hole "
        "whose NACK or retransmission was lost holds every later frame until 512 packets have "
        "arrived (10 s or more). The agent asks again about once a round trip, and when a hole "
        "cannot be filled any more drops the frames it broke and asks for a keyframe at once."
    ),
    fallback=(
        "aiortc's NACKs and video jitter buffer: after a lost NACK or retransmission, video "
        "can stall for 10 s or more until the buffer overflows."
    ),
    libraries=("aiortc",),
    apply=_apply,
    restore=_restore,
)
