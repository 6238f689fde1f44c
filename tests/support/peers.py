"""A scripted remote participant for tests: a real aiortc RTCPeerConnection with media, signalling
through the dev backend's HTTP API with plain aiohttp calls (deliberately not the agent's code; and
cheap, as a browser's fetch is: httpx costs ~1.8 ms of CPU per request, and fifty simulated
browsers polling from one process made the harness the bottleneck of the benchmarks).

It can offer or answer, trickle its candidates as separate signals (even before its offer), send
arbitrary raw signals, restart ICE, renegotiate, and counts the frames it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import (
    MediaBlackhole,  # noqa: F401  (kept for ad-hoc debugging)
    MediaPlayer,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from aiortc.sdp import candidate_from_sdp

from agent.peer.dtls import SharedCertificate, new_peer_connection
from agent.peer.receiving import count_only

SIGNALING = "meetings/webrtc/signaling"
_JSON = {"Content-Type": "application/json"}


class ApiError(Exception):
    pass


class PeerTransportError(Exception):
    """The request got no HTTP answer (connection refused or dropped, timeout)."""


@dataclass
class HttpReply:
    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: Any  # the parsed JSON body, or None when it is not JSON


@dataclass
class Received:
    audio_frames: int = 0
    video_frames: int = 0
    audio: asyncio.Event = field(default_factory=asyncio.Event)
    video: asyncio.Event = field(default_factory=asyncio.Event)


class RemotePeer:
    def __init__(
        self,
        url: str,
        token: str,
        meeting_id: str,
        user_id: str,
        *,
        session_id: str | None = None,
        audio: bool = True,
        video: bool = True,
        poll_interval: float = 0.02,
        idle_poll_interval: float | None = None,
        audio_file: str | None = None,
        audio_track: Callable[[], MediaStreamTrack] | None = None,
        decode: bool = True,
        ignore_answers: int = 0,
        certificate: SharedCertificate | None = None,
        on_audio: Callable[[Any], None] | None = None,
        on_video: Callable[[Any], None] | None = None,
    ) -> None:
        self.url = url
        self.meeting_id = meeting_id
        self.user_id = user_id
        self.session_id = session_id or f"peer-{uuid.uuid4().hex[:12]}"
        self.audio = audio
        # Play this file (once, in real time) instead of aiortc's silence: a new player per
        # connection, so each connection hears the file from its start.
        self.audio_file = audio_file
        # Or a track from this factory (e.g. pre-encoded audio shared by many peers)
        self.audio_track = audio_track
        # False: received media is only counted by the connection (getStats), never decoded
        self.decode = decode
        # Called with every decoded audio frame received (an av.AudioFrame)
        self.on_audio = on_audio
        # Called with every decoded video frame received (an av.VideoFrame)
        self.on_video = on_video
        self._rtp_of_closed = 0  # RTP received by connections already replaced or closed
        # The DTLS certificate of the first connection (a replacement makes its own, as a
        # browser's ICE restart needs a new fingerprint); None: aiortc makes one per connection.
        self._certificate = certificate
        # Drop this many answers, and the connection that offered: as a peer whose offer was
        # answered twice (by an agent that crashed before acknowledging it, then again)
        self.ignore_answers = ignore_answers
        self.players: list[MediaPlayer] = []
        self.video = video
        self.poll_interval = poll_interval
        # Poll this slowly unless negotiating (benchmarks with many peers keep the backend quiet).
        self.idle_poll_interval = idle_poll_interval or poll_interval
        self._negotiating = False
        self._wake = asyncio.Event()
        self._token = token
        self.request_timeout = 10.0
        self._http: aiohttp.ClientSession | None = None  # made on first use, inside the loop
        self.pc: RTCPeerConnection | None = None
        self.remote_user_id: str | None = None
        self.remote_session_id: str | None = None
        self.received = Received()
        self.signals: list[dict[str, Any]] = []  # every signal received, in arrival order
        self.connected = asyncio.Event()
        self.answers = 0
        self.offers_received = 0
        self._poll_task: asyncio.Task[None] | None = None
        self._track_tasks: set[asyncio.Task[None]] = set()
        self._signal_event = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> RemotePeer:
        await self.call(
            f"{SIGNALING}/createWebRTCSession", meetingId=self.meeting_id, sessionId=self.session_id
        )
        self._poll_task = asyncio.create_task(self._poll_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self, *, close_session: bool = True) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
            self._poll_task = None
        if close_session:
            with contextlib.suppress(Exception):
                await self.call(
                    f"{SIGNALING}/closeSession",
                    meetingId=self.meeting_id,
                    sessionId=self.session_id,
                )
        await self._close_pc()
        if self._http is not None:
            await self._http.close()

    async def crash(self) -> None:
        """Vanish without closing anything at the backend (a killed browser tab)."""
        await self.stop(close_session=False)

    async def post(self, function: str, args: dict[str, Any]) -> HttpReply:
        """One POST of a Convex function call; raises PeerTransportError without an answer."""
        if self._http is None:
            # no cookie jar, the body encoded here: a tenth of a simulated browser's request CPU
            self._http = aiohttp.ClientSession(
                base_url=self.url,
                headers={"Authorization": f"Bearer {self._token}", **_JSON},
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        try:
            async with self._http.post(
                f"/api/run/{function}",
                data=json.dumps({"args": args, "format": "json"}).encode(),
                timeout=aiohttp.ClientTimeout(total=self.request_timeout),
            ) as response:
                raw = await response.read()
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                return HttpReply(response.status, response.headers.copy(), body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PeerTransportError(f"{function}: {exc!r}") from exc

    async def call(self, function: str, **args: Any) -> Any:
        reply = await self.post(function, args)
        body = reply.body if isinstance(reply.body, dict) else {}
        if body.get("status") != "success":
            raise ApiError(f"{function}: HTTP {reply.status}: {body.get('errorMessage')}")
        return body.get("value")

    # --- sending -----------------------------------------------------------------------------

    def _expect_reply(self) -> None:
        self._negotiating = True
        self._wake.set()

    async def send_sdp(self, kind: str, sdp: str, target: str | None) -> None:
        args: dict[str, Any] = {
            "meetingId": self.meeting_id,
            "sessionId": self.session_id,
            "description": {"type": kind, "sdp": sdp},
        }
        if target is not None:
            args["targetUserId"] = target
        await self.call(f"{SIGNALING}/exchangeSessionDescription", **args)
        if kind == "offer":
            self._expect_reply()

    async def send_ice(self, candidate: dict[str, Any], target: str | None) -> None:
        args: dict[str, Any] = {
            "meetingId": self.meeting_id,
            "sessionId": self.session_id,
            "candidate": candidate,
        }
        if target is not None:
            args["targetUserId"] = target
        await self.call(f"{SIGNALING}/exchangeICECandidate", **args)

    async def offer(
        self,
        target_user_id: str | None,
        *,
        trickle: bool = False,
        candidates_first: bool = False,
        end_of_candidates: bool = False,
        restart: bool = False,
        duplicate: bool = False,
        candidate_delay: float = 0.0,
        munge: Callable[[str], str] | None = None,
    ) -> int:
        """Send an offer to the agent (trickle: candidates as separate ICE signals).

        `munge` rewrites the SDP as sent (the connection keeps its own). Returns how many
        signals were sent.
        """
        self.remote_user_id = target_user_id
        if self.pc is None or restart:
            await self._new_pc()
        pc = self.pc
        assert pc is not None
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        if munge is not None:
            sdp = munge(sdp)
        copies = 2 if duplicate else 1
        if not trickle:
            for _ in range(copies):
                await self.send_sdp("offer", sdp, target_user_id)
            return copies
        offer_sdp, candidates = split_candidates(sdp)
        if candidates_first:
            for c in candidates:
                await self.send_ice(c, target_user_id)
        await self.send_sdp("offer", offer_sdp, target_user_id)
        if duplicate:
            await self.send_sdp("offer", offer_sdp, target_user_id)
        if not candidates_first:
            for c in candidates:
                if candidate_delay:
                    await asyncio.sleep(candidate_delay)  # as a browser's gathering would
                await self.send_ice(c, target_user_id)
                if duplicate:
                    await self.send_ice(c, target_user_id)
        if end_of_candidates:
            await self.send_ice(
                {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}, target_user_id
            )
        return copies * (1 + len(candidates)) + (1 if end_of_candidates else 0)

    async def prepare_trickled_offer(self, target_user_id: str) -> tuple[str, list[dict[str, Any]]]:
        """A fresh connection's offer, not sent: its SDP without candidates, and the candidates
        as trickle payloads (send them with `send_ice`, the offer with `send_sdp`)."""
        self.remote_user_id = target_user_id
        await self._new_pc()
        assert self.pc is not None
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return split_candidates(self.pc.localDescription.sdp)

    async def add_video(self) -> None:
        """Renegotiate: add a video track to a running connection and re-offer."""
        assert self.pc is not None and self.remote_user_id is not None
        self.pc.addTrack(VideoStreamTrack())
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.send_sdp("offer", self.pc.localDescription.sdp, self.remote_user_id)

    # --- receiving ---------------------------------------------------------------------------

    async def wait_signal(self, predicate: Any) -> dict[str, Any]:
        """The first received signal matching `predicate` (wrap in asyncio.timeout)."""
        while True:
            for s in self.signals:
                if predicate(s):
                    return s
            self._signal_event.clear()
            await self._signal_event.wait()

    async def _poll_loop(self) -> None:
        while True:
            try:
                page = await self.call(f"{SIGNALING}/getPendingSignals", meetingId=self.meeting_id)
            except (ApiError, PeerTransportError):
                page = []
            ids = []
            for s in sorted(page, key=lambda s: (s["timestamp"], s["type"] != "sdp")):
                ids.append(s["_id"])
                if any(seen["_id"] == s["_id"] for seen in self.signals):
                    continue
                self.signals.append(s)
                self._signal_event.set()
                with contextlib.suppress(Exception):
                    await self._apply(s)
            if ids:
                with contextlib.suppress(ApiError, PeerTransportError):
                    await self.call(f"{SIGNALING}/markSignalsProcessed", signalIds=ids)
            if ids:
                self._negotiating = not self.connected.is_set()
            fast = self._negotiating and not self.connected.is_set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval if fast else self.idle_poll_interval):
                    await self._wake.wait()
            self._wake.clear()

    async def _apply(self, s: dict[str, Any]) -> None:
        self.remote_user_id = s["fromUserId"]
        self.remote_session_id = s["sessionId"]
        data = s["data"]
        if s["type"] == "ice":
            if self.pc is not None and data.get("candidate"):
                c = candidate_from_sdp(data["candidate"].removeprefix("candidate:"))
                c.sdpMid, c.sdpMLineIndex = data.get("sdpMid"), data.get("sdpMLineIndex")
                await self.pc.addIceCandidate(c)
            return
        if data["type"] == "offer":
            self.offers_received += 1
            polite = self.user_id > s["fromUserId"]
            pc = self.pc
            glare = pc is not None and pc.signalingState == "have-local-offer"
            if glare and not polite:
                return
            restart = (
                pc is not None
                and pc.remoteDescription is not None
                and ufrags(pc.remoteDescription.sdp)[:1] != ufrags(data["sdp"])[:1]
            )
            if pc is None or glare or restart:
                await self._new_pc()
            assert self.pc is not None
            await self.pc.setRemoteDescription(RTCSessionDescription(data["sdp"], "offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            await self.send_sdp("answer", self.pc.localDescription.sdp, s["fromUserId"])
            self.answers += 1
        elif data["type"] in ("answer", "pranswer"):
            if self.ignore_answers > 0:
                self.ignore_answers -= 1
                await self._close_pc()
                return
            if self.pc is not None and self.pc.signalingState == "have-local-offer":
                await self.pc.setRemoteDescription(RTCSessionDescription(data["sdp"], data["type"]))

    # --- the connection ----------------------------------------------------------------------

    async def _new_pc(self) -> None:
        await self._close_pc()
        certificate, self._certificate = self._certificate, None
        configuration = RTCConfiguration(iceServers=[])
        if certificate is None:
            pc = RTCPeerConnection(configuration)
        else:
            pc = new_peer_connection(configuration, certificate)
        if not self.decode:
            count_only(pc)
        self.pc = pc
        self.connected.clear()
        if self.audio and self.audio_track is not None:
            pc.addTrack(self.audio_track())
        elif self.audio and self.audio_file is not None:
            player = MediaPlayer(self.audio_file)
            self.players.append(player)
            assert player.audio is not None
            pc.addTrack(player.audio)
        elif self.audio:
            pc.addTrack(AudioStreamTrack())
        if self.video:
            pc.addTrack(VideoStreamTrack())

        @pc.on("connectionstatechange")
        def _state() -> None:
            if pc is self.pc and pc.connectionState == "connected":
                self.connected.set()

        @pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            task = asyncio.create_task(self._count(track))
            self._track_tasks.add(task)
            task.add_done_callback(self._track_tasks.discard)

    async def rtp_received(self) -> int:
        """RTP packets received so far, over every connection (counted without decoding)."""
        current = 0 if self.pc is None else await _inbound_rtp(self.pc)
        return self._rtp_of_closed + current

    async def _count(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if track.kind == "audio":
                    if self.on_audio is not None:
                        self.on_audio(frame)
                    self.received.audio_frames += 1
                    self.received.audio.set()
                else:
                    if self.on_video is not None:
                        self.on_video(frame)
                    self.received.video_frames += 1
                    self.received.video.set()

    async def _close_pc(self) -> None:
        pc, self.pc = self.pc, None
        if pc is not None:
            with contextlib.suppress(Exception):
                self._rtp_of_closed += await _inbound_rtp(pc)
            await pc.close()
        for player in self.players:  # ends the player's decoding thread
            if player.audio is not None:
                player.audio.stop()
        self.players.clear()
        for task in list(self._track_tasks):
            task.cancel()
        for task in list(self._track_tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


_CANDIDATE = re.compile(r"^a=candidate:(.*)$")


def split_candidates(sdp: str) -> tuple[str, list[dict[str, Any]]]:
    """Remove candidate lines from an SDP; return them as trickle payloads (mid, m-line index)."""
    lines, candidates = [], []
    mline = -1
    mid: str | None = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            mline += 1
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        m = _CANDIDATE.match(line)
        if m:
            candidates.append(
                {
                    "candidate": f"candidate:{m.group(1)}",
                    "sdpMLineIndex": mline,
                    "sdpMid": mid or str(mline),
                }
            )
            continue
        if line.startswith("a=end-of-candidates"):
            continue
        lines.append(line)
    # aiortc bundles everything on the first transport; trickle only its candidates.
    first = [c for c in candidates if c["sdpMLineIndex"] == 0]
    return "\r\n".join(lines) + "\r\n", first


def ufrags(sdp: str) -> list[str]:
    return re.findall(r"^a=ice-ufrag:(\S+)", sdp, re.MULTILINE)


async def _inbound_rtp(pc: RTCPeerConnection) -> int:
    reports = (await pc.getStats()).values()
    return sum(r.packetsReceived for r in reports if getattr(r, "type", "") == "inbound-rtp")
