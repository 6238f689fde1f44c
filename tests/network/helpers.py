"""What tests/network asks the kernel directly: network namespace ids (rtnetlink), which prove
that a namespace is gone (the kernel drops a namespace's id everywhere when it removes it); and
what an aiortc connection does inside: retransmission and keyframe requests, buffer levels."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from agent.convex import ConvexClient, RetryPolicy, TokenSource
from agent.media.sources import testsrc_track, tone_track
from agent.network import ImpairedLink
from agent.network.forward import TcpForwarder
from agent.peer.participant import Participant, ParticipantSettings
from agent.peer.session import PeerSession, PeerState, SessionSettings
from agent.signaling.api import ConnvoApi

RTM_NEWNSID = 88
RTM_GETNSID = 90
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NETNSA_NSID = 1
NETNSA_FD = 3
NLMSG = struct.Struct("=IHHII")
NLA = struct.Struct("=HH")


def _attr(kind: int, value: bytes) -> bytes:
    data = NLA.pack(NLA.size + len(value), kind) + value
    return data + bytes(-len(data) % 4)


def _attrs(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while len(data) >= NLA.size:
        length, kind = NLA.unpack_from(data)
        found[kind & 0x3FFF] = data[NLA.size : length]
        data = data[(length + 3) & ~3 :]
    return found


def _ask(kind: int, flags: int, attrs: bytes) -> list[dict[int, bytes]]:
    """One rtnetlink request (rtgenmsg + attrs); the attributes of each reply message."""
    body = struct.pack("=B3x", socket.AF_UNSPEC) + attrs
    replies: list[dict[int, bytes]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.send(NLMSG.pack(NLMSG.size + len(body), kind, NLM_F_REQUEST | flags, 1, 0) + body)
        while True:
            data = sock.recv(65536)
            while data:
                length, msg_type, _, _, _ = NLMSG.unpack_from(data)
                payload = data[NLMSG.size : length]
                data = data[(length + 3) & ~3 :]
                if msg_type == NLMSG_DONE:
                    return replies
                if msg_type == NLMSG_ERROR:
                    (error,) = struct.unpack_from("=i", payload)
                    if error:
                        raise OSError(-error, os.strerror(-error))
                    return replies
                replies.append(_attrs(payload[4:]))
                if not flags & NLM_F_DUMP:
                    return replies


def assign_nsid(netns_fd: int) -> int:
    """Give the namespace `netns_fd` an id in the caller's namespace, and return it."""
    fd = _attr(NETNSA_FD, struct.pack("=I", netns_fd))
    _ask(RTM_NEWNSID, NLM_F_ACK, fd + _attr(NETNSA_NSID, struct.pack("=i", -1)))
    (reply,) = _ask(RTM_GETNSID, 0, fd)
    (nsid,) = struct.unpack("=i", reply[NETNSA_NSID])
    return int(nsid)


def nsids() -> set[int]:
    """The ids the caller's namespace holds for namespaces that still exist."""
    return {struct.unpack("=i", r[NETNSA_NSID])[0] for r in _ask(RTM_GETNSID, NLM_F_DUMP, b"")}


def netns_fds() -> set[str]:
    """The network namespaces this process holds open fds of ('net:[inode]')."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("net:"):
            held.add(target)
    return held


# --- what an aiortc connection does under loss (tests/network/test_calls_under_profiles.py) ---
# aiortc reports neither NACK nor PLI counts in getStats, and its queues are private: these read
# them from the real objects (and count calls of the real methods, which still run).


class RtcpCounts:
    """Retransmission and keyframe requests one end sent (as a receiver) and got (as a sender)."""

    def __init__(self) -> None:
        self.nacks_sent = 0  # RTCP NACK packets its receivers sent
        self.nacked_sent = 0  # sequence numbers those asked for
        self.plis_sent = 0  # RTCP PLI (keyframe requests) its receivers sent
        self.retransmits_asked = 0  # sequence numbers its senders were asked to send again
        self.keyframes_asked = 0  # keyframe requests (PLI or FIR) its senders got

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def instrument(pc: Any, counts: RtcpCounts) -> None:
    """Count what the receivers and senders of `pc` send and get (once per transceiver)."""
    for transceiver in pc.getTransceivers():
        receiver, sender = transceiver.receiver, transceiver.sender
        if getattr(receiver, "_counted", False):
            continue
        receiver._counted = True
        send_nack, send_pli = receiver._send_rtcp_nack, receiver._send_rtcp_pli
        retransmit, keyframe = sender._retransmit, sender._send_keyframe

        async def nack(ssrc: int, lost: list[int], real: Any = send_nack) -> None:
            counts.nacks_sent += 1
            counts.nacked_sent += len(lost)
            await real(ssrc, lost)

        async def pli(ssrc: int, real: Any = send_pli) -> None:
            counts.plis_sent += 1
            await real(ssrc)

        async def again(seq: int, real: Any = retransmit) -> None:
            counts.retransmits_asked += 1
            await real(seq)

        def key(real: Any = keyframe) -> None:
            counts.keyframes_asked += 1
            real()

        receiver._send_rtcp_nack, receiver._send_rtcp_pli = nack, pli
        sender._retransmit, sender._send_keyframe = again, key


def rtx_received(pc: Any) -> int:
    """Retransmitted packets (RTX) that reached the receivers of `pc`."""
    total = 0
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        streams = receiver._RTCRtpReceiver__remote_streams
        for ssrc in receiver._RTCRtpReceiver__rtx_ssrc:
            if ssrc in streams:
                total += streams[ssrc].packets_received
    return total


def buffer_levels(pc: Any) -> dict[str, int]:
    """How full the connection's buffers and queues are now, by name (kind first).

    Receivers: the jitter buffer (packets held), the decoder's queue and the track's queue
    (frames), the NACK generator's missing set; senders: the retransmission history (packets);
    the ICE connection: datagrams received and not yet read, bytes the UDP sockets hold unsent.
    """
    levels: dict[str, int] = {}
    for transceiver in pc.getTransceivers():
        kind = transceiver.kind
        receiver = transceiver.receiver
        jitter = receiver._RTCRtpReceiver__jitter_buffer
        levels[f"{kind}_jitter_buffer"] = sum(p is not None for p in jitter._packets)
        decoder = receiver._RTCRtpReceiver__decoder_queue
        levels[f"{kind}_decoder_queue"] = decoder.qsize() if hasattr(decoder, "qsize") else 0
        track = receiver._track
        levels[f"{kind}_track_queue"] = track._queue.qsize() if track is not None else 0
        nacks = receiver._RTCRtpReceiver__nack_generator
        levels[f"{kind}_nack_missing"] = len(nacks.missing) if nacks is not None else 0
        levels[f"{kind}_send_history"] = len(transceiver.sender._RTCRtpSender__rtp_history)
        ice = transceiver.sender.transport.transport._connection
        levels["ice_receive_queue"] = ice._queue.qsize()
        levels["udp_send_buffer"] = sum(
            p.transport.get_write_buffer_size() for p in ice._protocols if p.transport
        )
    return levels


# --- the agent in a side of the link ------------------------------------------------------------


@dataclass
class AgentEnd:
    """What the agent's thread shares with the test (lists and ints: appended, never shared
    mid-update)."""

    audio_at: list[float] = field(default_factory=list)
    video_at: list[float] = field(default_factory=list)
    counts: RtcpCounts = field(default_factory=RtcpCounts)
    rtx_received: int = 0
    levels: list[dict[str, int]] = field(default_factory=list)
    state: str = "new"
    connected: threading.Event = field(default_factory=threading.Event)
    loop: asyncio.AbstractEventLoop | None = None
    stop: asyncio.Event | None = None

    async def is_connected(self) -> bool:
        return self.connected.is_set()

    def leave(self) -> None:
        if self.loop is not None and self.stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has ended already
                self.loop.call_soon_threadsafe(self.stop.set)


async def run_agent(
    url: str, token: str, meeting_id: str, offer: bool, state_dir: Path, end: AgentEnd
) -> None:
    """The agent (a Participant) until `end.stop`, for `ImpairedLink.a.run`: a tone and a test
    pattern out, every frame in counted; its connection's requests, RTX and buffer levels are
    sampled on its own loop, four times a second. `offer`: it calls whoever is in the meeting."""
    end.loop, end.stop = asyncio.get_running_loop(), asyncio.Event()

    async def consume(session: PeerSession, track: MediaStreamTrack) -> None:
        arrivals = end.audio_at if track.kind == "audio" else end.video_at
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                arrivals.append(time.monotonic())

    client = ConvexClient(url, TokenSource(value=token), retry=RetryPolicy(max_attempts=6))
    settings = ParticipantSettings(
        meeting_id=meeting_id,
        state_dir=state_dir,
        call_everyone=offer,
        discovery_first_interval=0.2,
        discovery_interval=1.0,
        session=SessionSettings(session_timeout=30.0),
    )
    participant = Participant(
        ConnvoApi(client),
        settings,
        local_tracks=lambda: [tone_track(), testsrc_track()],
        on_track=consume,
    )
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(participant.run(end.stop))
            while not end.stop.is_set():
                sessions = (
                    list(participant.manager.sessions.values()) if participant.manager else []
                )
                for session in sessions:
                    end.state = session.state.value
                    if session.state is PeerState.CONNECTED and session.pc is not None:
                        instrument(session.pc, end.counts)
                        end.rtx_received = rtx_received(session.pc)
                        end.levels.append(buffer_levels(session.pc))
                        end.connected.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.25):
                        await end.stop.wait()
    finally:
        await client.aclose()


# --- processes in the sides of a link ------------------------------------------------------------


class JsonLinesProcess:
    """A process in one side of a link (peer_proc.py, bench/network_quality.py's ends), spoken to
    in JSON lines: one object a line each way; end of its stdin tells it to leave."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        await self.process.stdin.drain()

    async def receive(self, key: str) -> Any:
        """The value of `key` in the next line that has it (lines without it are passed over)."""
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            message = json.loads(line)
            if key in message:
                return message[key]
        raise AssertionError(
            f"the process exited (code {await self.process.wait()}) before {key!r}"
        )

    async def status(self) -> dict[str, Any]:
        await self.send({"status": True})
        status: dict[str, Any] = await self.receive("status")
        return status

    async def leave(self, timeout_s: float = 10.0) -> None:
        """Close its stdin and wait for it to exit; kill it if it has not within `timeout_s`."""
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            async with asyncio.timeout(timeout_s):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@contextlib.asynccontextmanager
async def backend_in_both_sides(link: ImpairedLink, url: str) -> AsyncIterator[None]:
    """The backend at `url` (on the host's loopback) reachable at the same address in both sides
    of `link` (TcpForwarders: signalling is not impaired)."""
    host, port = url.removeprefix("http://").split(":")
    async with TcpForwarder(link.a, (host, int(port))), TcpForwarder(link.b, (host, int(port))):
        yield
