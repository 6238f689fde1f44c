"""aiortc's video sender: prompting a receiver to ask again for what it still misses.

aiortc 1.16's video receiver asks for a missing packet (NACK) when a gap appears, and again only
when a later gap appears. If that NACK or its retransmission is lost and the link then runs clean,
no later gap comes: its jitter buffer holds every later frame until 512 packets have arrived
(10 s or more) before a keyframe request restarts the video. The agent's own receivers ask again
by themselves (patch `video_loss_recovery`), but a plain aiortc peer is not the agent's to change.

Patch `video_nack_prompt` works from the sending end. After a video sender is asked for packets
(a NACK), once the receiver has been quiet for PROMPT_INTERVAL_S it sends two consecutive packets
in swapped order: the later one first. The receiver sees a gap, and a receiver that NACKs
on a gap (aiortc's does at once) lists every packet it still misses; the sender answers as usual,
with retransmissions. A NACK naming nothing but the swapped packet says the receiver misses
nothing else: the prompts stop until the next real NACK. They also stop PROMPT_WINDOW_S after the
last NACK that named a missing packet. The cost is one packet late per prompt (by a frame
interval at most, see below), and a retransmission of it where the receiver asks; a receiver
that waits for reordering before it NACKs (a browser) just sees the two packets swapped.

The packet held back leaves right after the sender's next one, with no timer: within a frame that
is at once (aiortc's sender sends a frame's packets back to back), after a frame's last packet it
is the next frame's first (a frame interval later; aiortc's own test video is one packet a frame).
A held packet that never leaves (the stream ended) was already in the sender's history: a NACK
for it is answered.
"""

from __future__ import annotations

import math
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import aiortc.rtcdtlstransport as _dtls
import aiortc.rtcrtpsender as _sender
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpRtpfbPacket, is_rtcp

from agent.patches._patch import Patch

PROMPT_INTERVAL_S = 0.25  # quiet (no NACK, no prompt) this long before a prompt
PROMPT_WINDOW_S = 2.0  # prompts go on at most this long after a NACK that named a missing packet
RTP_HEADER_BYTES = 12

Clock = Callable[[], float]


class NackPrompter:
    """One video sender's prompts (see the module docstring)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._until = -math.inf  # prompts may go until then
        self._quiet_since = -math.inf  # the last NACK or prompt
        self._held: bytes | None = None
        self._prompted: deque[int] = deque(maxlen=16)  # sequence numbers sent late on purpose
        self.prompts = 0  # prompts sent (observable)

    def nacked(self, lost: list[int]) -> None:
        """The receiver asked for `lost`."""
        now = self._clock()
        self._quiet_since = now
        if all(seq in self._prompted for seq in lost):
            self._until = -math.inf  # it misses nothing else
        else:
            self._until = now + PROMPT_WINDOW_S

    def route(self, packet: bytes) -> list[bytes]:
        """What to send now, in order, when the sender sends `packet` (an RTP packet)."""
        held = self._held
        if held is not None:
            self._held = None
            return [packet, held]
        now = self._clock()
        if now < self._until and now - self._quiet_since >= PROMPT_INTERVAL_S:
            self._held = packet
            self._prompted.append(int.from_bytes(packet[2:4], "big"))
            self._quiet_since = now
            self.prompts += 1
            return []
        return [packet]


# The prompters of live video senders, by SSRC (the DTLS transport sees only bytes).
_prompters: weakref.WeakValueDictionary[int, NackPrompter] = weakref.WeakValueDictionary()
_saved: dict[str, Any] = {}


def prompter_of(sender: Any) -> NackPrompter | None:
    """The sender's prompter, once it has been asked for a packet (None before, or for audio)."""
    prompter: NackPrompter | None = getattr(sender, "_agent_nack_prompter", None)
    return prompter


def _apply() -> str | None:
    handle = getattr(_sender.RTCRtpSender, "_handle_rtcp_packet", None)
    send_rtp = getattr(_dtls.RTCDtlsTransport, "_send_rtp", None)
    if handle is None or send_rtp is None:
        return "RTCRtpSender._handle_rtcp_packet or RTCDtlsTransport._send_rtp has moved"

    async def _handle_rtcp_packet(self: Any, packet: Any) -> None:
        if (
            isinstance(packet, RtcpRtpfbPacket)
            and packet.fmt == RTCP_RTPFB_NACK
            and self.kind == "video"
        ):
            prompter = prompter_of(self)
            if prompter is None:
                prompter = self._agent_nack_prompter = NackPrompter()
                _prompters[self._ssrc] = prompter
            prompter.nacked(packet.lost)
        await handle(self, packet)

    async def _send_rtp(self: Any, data: bytes) -> None:
        if _prompters and len(data) >= RTP_HEADER_BYTES and not is_rtcp(data):
            prompter = _prompters.get(int.from_bytes(data[8:12], "big"))
            if prompter is not None:
                for packet in prompter.route(data):
                    await send_rtp(self, packet)
                return
        await send_rtp(self, data)

    _saved["handle"], _saved["send_rtp"] = handle, send_rtp
    _sender.RTCRtpSender._handle_rtcp_packet = _handle_rtcp_packet  # type: ignore[method-assign]
    _dtls.RTCDtlsTransport._send_rtp = _send_rtp  # type: ignore[method-assign]
    return None


def _restore() -> None:
    if "handle" in _saved:
        _sender.RTCRtpSender._handle_rtcp_packet = _saved.pop("handle")  # type: ignore[method-assign]
        _dtls.RTCDtlsTransport._send_rtp = _saved.pop("send_rtp")  # type: ignore[method-assign]


VIDEO_NACK_PROMPT = Patch(
    name="video_nack_prompt",
    replaces=(
        "aiortc.rtcrtpsender.RTCRtpSender._handle_rtcp_packet",
        "aiortc.rtcdtlstransport.RTCDtlsTransport._send_rtp",
    ),
    why=(
        "a plain aiortc receiver asks again for a missing video packet only when a later gap "
        "appears, so after a lost NACK or retransmission on a link that then runs clean its "
        "video stalls for 10 s or more. After a NACK, the agent's video senders swap two "
        "consecutive packets once the receiver goes quiet: the gap makes it list what it still "
        "misses, which is then retransmitted."
    ),
    fallback="aiortc's sender: a plain aiortc receiver may stall after a loss burst.",
    libraries=("aiortc",),
    apply=_apply,
    restore=_restore,
)
