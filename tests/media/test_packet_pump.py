"""The packet pump sends pre-encoded RTP for aiortc's senders, over real loopback connections."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from itertools import pairwise

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtp import RtpPacket

from agent.media.packet_pump import MAX_CATCH_UP_FRAMES
from agent.media.preencoded import PreencodedAudio
from agent.media.sources import tone_track
from agent.peer.ice import restrict_host_addresses
from tests.support.waiting import poll_until


@dataclass
class Call:
    tone: PreencodedAudio
    sender: RTCPeerConnection
    receiver: RTCPeerConnection
    rtp: RTCRtpSender
    packets: list[RtpPacket] = field(default_factory=list)  # as the receiving side parsed them
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def pumped_call(tone: PreencodedAudio | None = None) -> AsyncIterator[Call]:
    """A pre-encoded tone over a real loopback connection; the receiver records what arrives."""
    restrict_host_addresses(["127.0.0.1"])
    tone = tone or PreencodedAudio("tone")
    sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    call = Call(tone, sender, receiver, sender.addTrack(tone.track()))

    def record(rtp_receiver: RTCRtpReceiver) -> None:
        # wraps the real handler: every packet is still handled as usual
        handle = rtp_receiver._handle_rtp_packet

        async def recording(packet: RtpPacket, arrival_time_ms: int) -> None:
            call.packets.append(packet)
            call.arrived.set()
            await handle(packet, arrival_time_ms)

        rtp_receiver._handle_rtp_packet = recording  # type: ignore[method-assign]

    receiver.on("track", lambda track: None)
    try:
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        record(receiver.getTransceivers()[0].receiver)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        yield call
    finally:
        await sender.close()
        await receiver.close()
        tone.stop()
        restrict_host_addresses(None)


async def _packets(call: Call, count: int) -> None:
    """Until `count` packets have arrived (bounded by the caller's timeout)."""
    while len(call.packets) < count:
        call.arrived.clear()
        await call.arrived.wait()


async def _rtp_exited(sender: RTCRtpSender) -> None:
    await sender._RTCRtpSender__rtp_exited.wait()  # type: ignore[attr-defined]  # aiortc's event


async def test_pumped_rtp_is_what_aiortcs_sender_would_send() -> None:
    async with pumped_call() as call, asyncio.timeout(20):
        await _packets(call, 60)
        assert call.tone.pump.streams == 1  # the pump sends, not aiortc's loop
        packets = call.packets[:60]
        assert {p.ssrc for p in packets} == {call.rtp._ssrc}
        opus = re.search(r"a=rtpmap:(\d+) opus/48000", call.receiver.localDescription.sdp)
        assert opus is not None
        assert {(p.payload_type, p.marker, p.version) for p in packets} == {(int(opus[1]), 1, 2)}
        seqs = [p.sequence_number for p in packets]
        assert [(b - a) % 65536 for a, b in pairwise(seqs)] == [1] * 59
        stamps = [p.timestamp for p in packets]
        steps = [(b - a) % 2**32 for a, b in pairwise(stamps)]
        assert set(steps) == {960}  # 20 ms at 48 kHz, no stall on an idle loop
        assert {p.extensions.mid for p in packets} == {"0"}
        # aiortc negotiates mid and audio level for audio; pre-encoded frames carry no level
        assert {(p.extensions.audio_level, p.extensions.abs_send_time) for p in packets} == {
            (None, None)
        }
        payloads = call.tone.payloads
        first = payloads.index(packets[0].payload)
        assert [p.payload for p in packets] == [
            payloads[(first + k) % len(payloads)] for k in range(60)
        ]

        async def reported() -> bool:
            sent = [s for s in (await call.sender.getStats()).values() if s.type == "outbound-rtp"]
            got = await call.receiver.getStats()
            sr = [s for s in got.values() if s.type == "remote-outbound-rtp"]
            return bool(sent and sent[0].packetsSent >= 60 and sent[0].bytesSent > 0 and sr)

        # the sender's counters (getStats) and its RTCP sender reports, read by the receiver
        await poll_until(reported)
        transport = [s for s in (await call.sender.getStats()).values() if s.type == "transport"]
        assert transport[0].packetsSent >= 60


async def test_one_timer_sends_for_every_connection() -> None:
    tone = PreencodedAudio("tone")
    async with contextlib.AsyncExitStack() as stack, asyncio.timeout(30):
        calls = [await stack.enter_async_context(pumped_call(tone)) for _ in range(4)]
        for call in calls:
            await _packets(call, 1)
        ticks, counts = tone.pump.ticks, [len(c.packets) for c in calls]
        await asyncio.gather(*(_packets(c, n + 25) for c, n in zip(calls, counts, strict=True)))
        assert tone.pump.streams == 4
        # 25 more packets each, 100 in all, from about 25 timer callbacks, not 100
        assert tone.pump.ticks - ticks <= 30


async def test_closing_or_ending_the_track_stops_the_stream() -> None:
    async with pumped_call() as call, asyncio.timeout(20):
        await _packets(call, 5)
        await call.rtp.stop()  # what closing the connection does: returns once RTP has stopped
        assert call.tone.pump.streams == 0
        assert call.tone.pump._timer is None  # no timer left running for nobody
        assert call.rtp.track is None
    async with pumped_call() as call, asyncio.timeout(20):
        await _packets(call, 5)
        track = call.rtp.track
        call.tone.stop()  # the source ends its tracks: the sender's RTP ends as aiortc's would
        await _rtp_exited(call.rtp)
        assert call.tone.pump.streams == 0
        assert track.readyState == "ended"


async def test_a_replaced_track_is_sent_by_aiortcs_own_loop() -> None:
    async with pumped_call() as call, asyncio.timeout(20):
        await _packets(call, 5)
        replacement = tone_track()  # encoded by aiortc, frame by frame
        call.rtp.replaceTrack(replacement)
        count = len(call.packets)
        await _packets(call, count + 25)  # media goes on
        assert call.tone.pump.streams == 0
        assert call.rtp.track is replacement
    # numbered on across the switch: SRTP refuses a sequence number far behind the last
    seqs = [p.sequence_number for p in call.packets]
    assert [(b - a) % 65536 for a, b in pairwise(seqs)] == [1] * (len(seqs) - 1)


async def test_after_a_stall_stale_frames_are_dropped_not_burst() -> None:
    async with pumped_call() as call, asyncio.timeout(20):
        await _packets(call, 10)
        time.sleep(0.3)  # noqa: ASYNC251 - the fault injected: the event loop blocked for 15 frames
        count = len(call.packets)
        await _packets(call, count + 10)
    seqs = [p.sequence_number for p in call.packets]
    assert [(b - a) % 65536 for a, b in pairwise(seqs)] == [1] * (len(seqs) - 1)
    stamps = [p.timestamp for p in call.packets]
    steps = [(b - a) % 2**32 // 960 for a, b in pairwise(stamps)]
    # the frames missed show as one jump in the timestamps; at most a few are caught up
    assert max(steps) >= 15 - MAX_CATCH_UP_FRAMES
    assert sum(1 for s in steps if s > 1) == 1
