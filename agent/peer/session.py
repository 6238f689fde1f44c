"""One remote (user, session): an RTCPeerConnection driven by perfect negotiation.

Everything that touches the connection runs in the session's own task, one step at a time: incoming
signals, offers the agent decides to make, and close requests all go through `inbox`. That keeps
the negotiation state machine free of interleavings without locks.

aiortc lacks a few things browsers have, and the session supplies them:
- rollback and `restartIce()`: the session replaces the RTCPeerConnection (fresh ICE credentials and
  certificate), re-adds its local tracks, and negotiates again;
- a "disconnected" state: the session watches the transport's received-packet counter (RTP and
  RTCP both count) and calls the connection disconnected after `media_timeout` of silence;
- pranswer: aiortc treats it as final, so a later answer with the same ICE credentials is ignored,
  and one with different credentials makes the session start over with a new offer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)

from agent.convex import ConvexError
from agent.patches.ice import gathering_timeout
from agent.peer.dtls import new_peer_connection
from agent.peer.ice import (
    DEFAULT_GATHER_TIMEOUT_S,
    CandidateError,
    bundles_all_media,
    ice_ufrags,
    is_ice_restart,
    keep_extension_ids,
    parse_candidate,
    sanitize_sdp,
)
from agent.peer.receiving import count_only
from agent.peer.session_quality import IntervalQuality, QualityTracker, SessionQuality
from agent.peer.states import PeerState as PeerState  # re-exported: its old home
from agent.peer.states import allowed
from agent.peer.stats import SessionStats, apply_stats
from agent.signaling.api import ConnvoApi
from agent.signaling.models import IceCandidate, SessionDescription, Signal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalIdentity:
    meeting_id: str
    user_id: str
    session_id: str


# Reading a closing connection's last statistics may take at most this long.
FINAL_STATS_TIMEOUT_S = 0.5
# A close waits this long for the command in progress to finish, then abandons the offer or
# answer the session may be sending (a request held by a slow backend).
CLOSE_GRACE_S = 1.0


@dataclass
class SessionSettings:
    ice_servers: list[RTCIceServer] = field(default_factory=list)
    session_timeout: float = 30.0  # negotiating this long without connecting: give up
    ice_restart_after: float = 5.0  # disconnected this long: restart ICE
    # no packet at all for this long: disconnected (math.inf: connections that carry no media)
    media_timeout: float = 5.0
    liveness_interval: float = 1.0
    max_ice_restarts: int = 3
    # STUN/TURN gathering never holds this session's offers and answers longer than this
    # (aioice waits 5 s); per session, with the patch ice_gather_timeout (agent.patches)
    gather_timeout: float = DEFAULT_GATHER_TIMEOUT_S
    # False: received media is counted (getStats) but not decoded; remote tracks yield nothing
    decode_media: bool = True
    # If set, decides instead of decode_media for each session, as each of its connections is
    # made (a load participant decodes only the connections it measures mouth to ear on)
    decode_media_for: Callable[[PeerSession], bool] | None = field(
        default=None, repr=False, compare=False
    )
    # Seconds between two quality measurements of a connection (docs/quality.md); each is taken
    # at the liveness check due then, from the getStats reading it makes anyway
    quality_interval: float = 5.0
    # Called with each quality measurement of each session (also the last, at its close)
    quality_observer: QualityObserver | None = field(default=None, repr=False, compare=False)


QualityObserver = Callable[["PeerSession", IntervalQuality], None]


class SessionHooks(Protocol):
    """What a session needs from its owner (the SessionManager)."""

    def handled(self, signal: Signal, outcome: str) -> None: ...

    def kick(self) -> None: ...

    def state_changed(self, session: PeerSession) -> None: ...

    def local_tracks(self) -> list[MediaStreamTrack]: ...

    def on_track(
        self, session: PeerSession, track: MediaStreamTrack
    ) -> Coroutine[Any, Any, None] | None: ...


@dataclass
class _Offer:
    restart: bool
    reason: str


@dataclass
class _Close:
    reason: str
    done: asyncio.Event = field(default_factory=asyncio.Event)


_Command = Signal | _Offer | _Close


class PeerSession:
    def __init__(
        self,
        *,
        remote_session_id: str,
        remote_user_id: str,
        local: LocalIdentity,
        api: ConnvoApi,
        hooks: SessionHooks,
        settings: SessionSettings,
        negotiation_gate: asyncio.Semaphore | None = None,
    ) -> None:
        self.remote_session_id = remote_session_id
        self.remote_user_id = remote_user_id
        self.local = local
        self.api = api
        self.hooks = hooks
        self.settings = settings
        # shared by the sessions of one manager: a few offers/answers at a time (see _on_offer)
        self._negotiation_gate = negotiation_gate or asyncio.Semaphore(1)
        # Perfect negotiation needs exactly one polite side; both derive it from the user IDs.
        self.polite = local.user_id > remote_user_id
        self.state = PeerState.NEW
        self.pc: RTCPeerConnection | None = None
        self.stats = SessionStats()
        self.created_at = time.monotonic()
        self.negotiation_started_at: float | None = None
        self.connected_at: float | None = None
        self.time_to_connected: float | None = None
        self.close_reason: str | None = None
        self.connected = asyncio.Event()  # set on every (re)connection; for tests and reports
        self.closed = asyncio.Event()
        self._state_event = asyncio.Event()  # set and replaced on every state change
        self._inbox: asyncio.Queue[_Command] = asyncio.Queue()
        self._tasks: asyncio.TaskGroup | None = None
        self._request: asyncio.Task[Any] | None = None  # an offer or answer being sent
        self._track_tasks: set[asyncio.Task[None]] = set()
        self._pending_candidates: list[IceCandidate] = []
        self._seen_candidates: set[tuple[str, str | None, int | None]] = set()
        self._last_remote_offer: str | None = None
        # the remote's last description: its header-extension ids outlive our connections
        self._negotiated_sdp: str | None = None
        self._last_sdp_timestamp = -1.0
        self._pranswer_ufrags: tuple[str, ...] | None = None
        # The remote description applied to the current connection (None: none yet), and its ICE
        # ufrags. Kept here because aiortc's `pc.remoteDescription` re-serializes the whole SDP on
        # every access, and every candidate needs to know.
        self._remote_sdp: str | None = None
        self._remote_ufrags: tuple[str, ...] = ()
        self._candidates_ended = False  # the remote's end-of-candidates reached this connection
        self._last_rx = -1
        self._last_rx_at = time.monotonic()
        self._disconnected_since: float | None = None
        self._restarts_in_row = 0
        self._answered_at: float | None = None  # our last answer, while not connected
        self._quality = QualityTracker()
        self._quality_due_at = math.inf  # the next measurement, once connected
        # one getStats at a time: a measurement's interval runs from the reading before it
        self._stats_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PeerSession({self.remote_user_id}/{self.remote_session_id}, {self.state})"

    # --- the owner's interface ---------------------------------------------------------------

    def deliver(self, signal: Signal) -> None:
        self._inbox.put_nowait(signal)

    def request_offer(self, reason: str, *, restart: bool = False) -> None:
        self._inbox.put_nowait(_Offer(restart=restart, reason=reason))

    async def close(self, reason: str) -> None:
        """Close and wait until the session task has finished with the connection."""
        if self.closed.is_set():
            return
        command = _Close(reason)
        self._inbox.put_nowait(command)
        if self._tasks is None:  # never started
            await self._shutdown(reason)
            return
        try:
            async with asyncio.timeout(CLOSE_GRACE_S):
                await self.closed.wait()
        except TimeoutError:
            if self._request is not None:
                log.info("%s: closing abandons a request the backend holds", self)
                self._request.cancel()
            await self.closed.wait()

    async def wait_state(self, *states: PeerState) -> None:
        """Return once the session is in one of `states` (wrap in asyncio.timeout)."""
        while self.state not in states:
            await self._state_event.wait()

    @property
    def quality(self) -> SessionQuality:
        """The connection's quality: recent intervals and whole-connection totals (a copy)."""
        return self._quality.view()

    @property
    def latest_quality(self) -> IntervalQuality | None:
        """The last interval measured (cheaper than `quality` for frequent readers)."""
        return self._quality.latest

    async def measure_quality(self) -> IntervalQuality | None:
        """Measure now, closing a (shorter) interval; None unless connected."""
        pc = self.pc
        if pc is None or self.state is not PeerState.CONNECTED:
            return None
        if await self._read_stats(pc, measure=True) is None:
            return None
        return self._quality.latest

    @property
    def negotiating(self) -> bool:
        return self.state in (PeerState.NEW, PeerState.NEGOTIATING)

    async def run(self) -> None:
        """The session's life: process commands and watch liveness until closed."""
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                watchdog = tasks.create_task(self._watchdog(), name=f"watchdog-{self}")
                await self._process()
                watchdog.cancel()
                for task in list(self._track_tasks):
                    task.cancel()
        finally:
            await self._shutdown(self.close_reason or "stopped")

    # --- command processing ------------------------------------------------------------------

    async def _process(self) -> None:
        while True:
            command = await self._inbox.get()
            if isinstance(command, _Close):
                self.close_reason = command.reason
                return
            if self.state in (PeerState.FAILED, PeerState.CLOSED):
                # a failed session negotiates no more: its close is queued
                if isinstance(command, Signal):
                    self.hooks.handled(command, "ignored")
                continue
            if isinstance(command, _Offer):
                await self._send_offer(command)
                continue
            outcome = "applied"
            try:
                outcome = await self._apply(command)
            except Exception as exc:  # one bad signal must not end the session
                outcome = "rejected"
                log.warning(
                    "%s: signal %s (%s) rejected: %s: %s",
                    self,
                    command.id,
                    _kind(command),
                    type(exc).__name__,
                    exc,
                )
            self.hooks.handled(command, outcome)

    async def _apply(self, signal: Signal) -> str:
        if signal.type == "ice":
            return await self._on_candidate(signal.candidate)
        if signal.timestamp < self._last_sdp_timestamp:
            log.info("%s: stale %s %s ignored", self, signal.description.type, signal.id)
            return "ignored"
        self._last_sdp_timestamp = signal.timestamp
        description = signal.description
        if description.type == "offer":
            return await self._on_offer(description)
        if description.type in ("answer", "pranswer"):
            return await self._on_answer(description)
        return await self._on_rollback()

    async def _on_offer(self, offer: SessionDescription) -> str:
        if offer.sdp == self._last_remote_offer:
            return "ignored"  # a duplicated delivery (a retried mutation on the sender's side)
        pc = self.pc
        collision = pc is not None and pc.signalingState == "have-local-offer"
        if collision and not self.polite:
            log.info("%s: glare, impolite side ignores the remote offer", self)
            return "ignored"
        restart = (
            pc is not None
            and self._remote_sdp is not None
            and is_ice_restart(self._remote_sdp, offer.sdp)
        )
        if pc is None or collision or restart or pc.connectionState in ("failed", "closed"):
            # aiortc can neither roll back nor restart ICE in place: start from a fresh connection.
            reason = "glare" if collision else "ice restart" if restart else "new"
            await self._replace_pc(reason, bundle=bundles_all_media(offer.sdp))
        pc = self.pc
        assert pc is not None
        self._last_remote_offer = offer.sdp
        self._begin_negotiation()
        # When fifty offers arrive at once, answering all of them in parallel (each one's steps
        # interleaved with everyone else's) sends every answer at the end; a few at a time sends
        # the first ones at once and the last ones no later. The wait counts in time_to_connected.
        async with self._negotiation_gate:
            if pc is not self.pc:
                return "ignored"  # replaced while waiting (a newer offer, a restart)
            await self._set_remote_description(pc, offer.sdp, "offer")
            self._attach_local_tracks(pc, add_missing=False)
            await self._flush_candidates()
            answer = await pc.createAnswer()
            with gathering_timeout(self.settings.gather_timeout):
                await pc.setLocalDescription(answer)
        await self._send_description("answer", pc.localDescription.sdp)
        if self.state is not PeerState.CONNECTED:
            self._answered_at = time.monotonic()
        return "applied"

    async def _on_answer(self, answer: SessionDescription) -> str:
        pc = self.pc
        if pc is None or pc.signalingState != "have-local-offer":
            if (
                answer.type == "answer"
                and self._pranswer_ufrags is not None
                and ice_ufrags(answer.sdp) != self._pranswer_ufrags
            ):
                # The final answer differs from the provisional one aiortc already applied.
                self._pranswer_ufrags = None
                self.request_offer("final answer differs from pranswer", restart=True)
                return "applied"
            return "ignored"  # duplicate or stale answer
        await self._set_remote_description(pc, answer.sdp, answer.type)
        self._pranswer_ufrags = self._remote_ufrags if answer.type == "pranswer" else None
        await self._flush_candidates()
        return "applied"

    async def _set_remote_description(self, pc: RTCPeerConnection, sdp: str, kind: str) -> None:
        sanitized = sanitize_sdp(sdp)
        await pc.setRemoteDescription(RTCSessionDescription(sanitized, kind))
        self._remote_sdp = sanitized
        self._remote_ufrags = ice_ufrags(sanitized)
        self._negotiated_sdp = sdp

    async def _on_rollback(self) -> str:
        pc = self.pc
        if pc is not None and pc.signalingState == "have-remote-offer":
            # what comes next is unknown: a transport per kind suits an offer without BUNDLE too
            await self._replace_pc("remote rollback", bundle=False)
            self._last_remote_offer = None
            return "applied"
        return "ignored"

    async def _on_candidate(self, payload: IceCandidate) -> str:
        key = (payload.candidate, payload.sdpMid, payload.sdpMLineIndex)
        if key in self._seen_candidates:
            return "ignored"
        self._seen_candidates.add(key)
        if not payload.ends_candidates and not payload.candidate.strip().endswith(".local"):
            parse_candidate(payload)  # reject junk now, not when it is flushed later
        if self.pc is None or self._remote_sdp is None:
            self._pending_candidates.append(payload)
            return "applied"
        return "applied" if await self._add_candidate(payload) else "ignored"

    async def _add_candidate(self, payload: IceCandidate) -> bool:
        """Hands a candidate to ICE; False when it was left out (and why is logged)."""
        pc = self.pc
        assert pc is not None and self._remote_sdp is not None
        ufrags = self._remote_ufrags
        if payload.usernameFragment and ufrags and payload.usernameFragment not in ufrags:
            log.debug("%s: candidate of another ICE generation ignored", self)
            return False
        if self._candidates_ended:
            # ICE takes nothing after end-of-candidates (aiortc drops it silently): say so.
            log.info("%s: candidate after end-of-candidates ignored: %r", self, payload.candidate)
            return False
        if payload.ends_candidates:
            self._candidates_ended = True
            await pc.addIceCandidate(None)
            return True
        try:
            candidate = parse_candidate(payload)
        except CandidateError as exc:
            log.debug("%s: candidate skipped: %s", self, exc)
            return False
        await pc.addIceCandidate(candidate)
        return True

    async def _flush_candidates(self) -> None:
        pending, self._pending_candidates = self._pending_candidates, []
        for payload in pending:
            await self._add_candidate(payload)

    # --- offers, connections -----------------------------------------------------------------

    async def _send_offer(self, command: _Offer) -> None:
        try:
            if command.restart:
                self.stats.ice_restarts += 1
            if (
                command.restart
                or self.pc is None
                or self.pc.connectionState in ("failed", "closed")
            ):
                await self._replace_pc(command.reason)
            pc = self.pc
            assert pc is not None
            if pc.signalingState != "stable":
                return  # an offer/answer exchange is already under way
            self._attach_local_tracks(pc, add_missing=True)
            self._begin_negotiation()
            async with self._negotiation_gate:  # as for answers: a few at a time, first come first
                if pc is not self.pc or pc.signalingState != "stable":
                    return
                offer = await pc.createOffer()
                if self._negotiated_sdp is not None:
                    offer = RTCSessionDescription(
                        keep_extension_ids(offer.sdp, self._negotiated_sdp), "offer"
                    )
                with gathering_timeout(self.settings.gather_timeout):
                    await pc.setLocalDescription(offer)
            await self._send_description("offer", pc.localDescription.sdp)
        except Exception as exc:
            log.warning("%s: could not make an offer (%s): %s", self, command.reason, exc)

    async def _send_description(self, kind: str, sdp: str) -> None:
        # A task of its own, so that close() can abandon a request the backend holds without
        # interrupting anything inside aiortc; awaited here, cancelled if this task is.
        request = asyncio.create_task(
            self.api.send_description(
                self.local.meeting_id,
                self.local.session_id,
                SessionDescription(type=kind, sdp=sdp),  # type: ignore[arg-type]
                target_user_id=self.remote_user_id,
            ),
            name=f"send-{kind}-{self.remote_session_id}",
        )
        self._request = request
        try:
            await asyncio.wait({request})
        finally:
            self._request = None
            request.cancel()  # a no-op once done
        if request.cancelled():
            log.info("%s: sending the %s was abandoned by closing", self, kind)
            return
        exc = request.exception()
        if isinstance(exc, ConvexError):
            # The watchdog restarts or times out the negotiation; nothing else to do here.
            log.warning("%s: sending the %s failed: %s", self, kind, exc)
        elif exc is not None:
            raise exc
        self.hooks.kick()

    def _begin_negotiation(self) -> None:
        if self.negotiation_started_at is None or self.state is PeerState.DISCONNECTED:
            # a renegotiation of a connection that went down (e.g. the remote's ICE restart)
            # gets the whole session timeout, counted from now
            self.negotiation_started_at = time.monotonic()
        if self.state in (PeerState.NEW, PeerState.DISCONNECTED):
            self._set_state(PeerState.NEGOTIATING, "negotiation started")

    async def _replace_pc(self, reason: str, *, bundle: bool = True) -> None:
        """A fresh RTCPeerConnection for this session; `bundle`: all media on one ICE transport.

        With aiortc's default (balanced) an offer of audio and video gathers two transports, and
        the answer then stops the one BUNDLE made unused: twice the sockets and candidates, and
        about 4 ms of the event loop per connection when fifty answers arrive at once. Our own
        offers bundle (but not on a connection made for a remote rollback, where what comes next
        is unknown); an answer bundles when the remote's offer does.
        """
        old = self.pc
        if old is not None:
            self.stats.replaced_connections += 1
            log.info("%s: replacing the peer connection (%s)", self, reason)
            await old.close()
        configuration = RTCConfiguration(
            iceServers=list(self.settings.ice_servers),
            bundlePolicy=RTCBundlePolicy.MAX_BUNDLE if bundle else RTCBundlePolicy.BALANCED,
        )
        # A replacement must present a certificate of its own: with the fingerprint unchanged, a
        # browser keeps its DTLS session across the ICE restart and ignores the new handshake.
        pc = new_peer_connection(configuration) if old is None else RTCPeerConnection(configuration)
        choose = self.settings.decode_media_for
        decode = self.settings.decode_media if choose is None else choose(self)
        if not decode:
            count_only(pc)
        self.pc = pc
        self._quality.new_connection()
        self._quality_due_at = math.inf
        self._remote_sdp = None
        self._remote_ufrags = ()
        self._seen_candidates.clear()
        self._candidates_ended = False
        self._last_rx = -1
        self._last_rx_at = time.monotonic()

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            if pc is self.pc:
                self._on_connection_state(pc.connectionState)

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and decode:
                self._quality.watch_video(track)  # frames and freezes, as they arrive
            consumer = self.hooks.on_track(self, track)
            if consumer is not None and self._tasks is not None:
                task = self._tasks.create_task(_quietly(consumer), name=f"track-{track.kind}")
                self._track_tasks.add(task)
                task.add_done_callback(self._track_tasks.discard)

    def _attach_local_tracks(self, pc: RTCPeerConnection, *, add_missing: bool) -> None:
        """Give every transceiver without a track one of ours, of its kind.

        When answering, tracks must go onto the transceivers the remote offer created: aiortc
        fails to answer when a transceiver added beforehand has no m-line in the offer. When
        offering (`add_missing`), kinds without a transceiver get one, receive-only if the agent
        has nothing to send, so the remote's media always has an m-line to arrive on.
        """
        tracks = {track.kind: track for track in self.hooks.local_tracks()}
        kinds = set()
        for transceiver in pc.getTransceivers():
            kinds.add(transceiver.kind)
            if transceiver.sender.track is None and transceiver.kind in tracks:
                transceiver.sender.replaceTrack(tracks.pop(transceiver.kind))
                if transceiver.direction == "recvonly":
                    transceiver.direction = "sendrecv"
        if add_missing:
            for kind in ("audio", "video"):
                if kind in kinds:
                    continue
                if kind in tracks:
                    pc.addTrack(tracks.pop(kind))
                else:
                    pc.addTransceiver(kind, direction="recvonly")
        for unused in tracks.values():
            unused.stop()

    def _on_connection_state(self, state: str) -> None:
        if self.state in (PeerState.FAILED, PeerState.CLOSED):
            return  # given up: the session is closing whatever the connection does
        if state == "connected":
            now = time.monotonic()
            if self.time_to_connected is None and self.negotiation_started_at is not None:
                self.time_to_connected = now - self.negotiation_started_at
            self.connected_at = now
            self._disconnected_since = None
            self._restarts_in_row = 0
            self._answered_at = None
            self._last_rx_at = now
            if self._quality_due_at == math.inf:  # the first interval of this connection
                self._quality_due_at = now + self.settings.quality_interval
            if self._set_state(PeerState.CONNECTED, "connection connected"):
                self.connected.set()
        elif state == "failed" and self.state is PeerState.CONNECTED:
            self._mark_disconnected("connection failed")
        elif state == "failed" and self.state is PeerState.NEGOTIATING:
            # aiortc's "failed" is final for this connection, and one that fails while being set
            # up (every candidate pair failed) would otherwise wait for the watchdog's
            # ice_restart_after: offer afresh now, within the same bound on restarts in a row.
            self._answered_at = None
            log.info("%s: the connection failed while connecting", self)
            self._restart_ice("failed while connecting")

    def _mark_disconnected(self, why: str) -> None:
        if self.state is not PeerState.CONNECTED:
            return
        self._disconnected_since = time.monotonic()
        self.connected.clear()
        self._set_state(PeerState.DISCONNECTED, why)

    def _set_state(self, state: PeerState, why: str) -> bool:
        """The one place the state changes, along agent.peer.states.TRANSITIONS; False when
        refused (a change the table does not allow is a bug, logged as an error)."""
        old = self.state
        if state is old:
            return True
        if not allowed(old, state):
            log.error(
                "%s: bug: transition %s -> %s (%s) is not in the state table; refused",
                self,
                old,
                state,
                why,
                extra={"peer_illegal_transition": (old, state)},
            )
            return False
        transition = {"peer_transition": (old, state)}
        log.debug("%s: %s -> %s (%s)", self, old, state, why, extra=transition)
        self.state = state
        event, self._state_event = self._state_event, asyncio.Event()
        event.set()
        self.hooks.state_changed(self)
        return True

    # --- liveness ----------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self.settings.liveness_interval)
            now = time.monotonic()
            if self.state in (PeerState.NEW, PeerState.NEGOTIATING):
                started = self.negotiation_started_at or self.created_at
                if now - started > self.settings.session_timeout:
                    self._fail("negotiation timed out")
                elif (
                    self._answered_at is not None
                    and now - self._answered_at >= self.settings.ice_restart_after
                    and self._restarts_in_row < self.settings.max_ice_restarts
                ):
                    self._answered_at = None
                    if self.pc is not None and _transport_up(self.pc):
                        # The connection is up although its state event never reached us
                        # (seen once with Chromium): adopt it, never tear a working one down.
                        log.info("%s: connected (found by the watchdog)", self)
                        self._on_connection_state("connected")
                    else:
                        # Our answer went out and nothing connected: it was lost, or ignored
                        # by a peer that already took an answer to this offer (from this agent
                        # before a crash, unacknowledged). Offer afresh, as for an ICE restart.
                        self._restarts_in_row += 1
                        self.request_offer("answer not taken", restart=True)
            elif self.state is PeerState.CONNECTED:
                await self._check_liveness(now)
            elif self.state is PeerState.DISCONNECTED:
                assert self._disconnected_since is not None
                if now - self._disconnected_since >= self.settings.ice_restart_after:
                    self._disconnected_since = now
                    # Negotiating again: the session timeout bounds the restart.
                    self.negotiation_started_at = now
                    self._restart_ice("ice restart")

    def _restart_ice(self, reason: str) -> None:
        """Offer afresh with new ICE credentials, at most max_ice_restarts times in a row."""
        if self._restarts_in_row >= self.settings.max_ice_restarts:
            self._fail(f"ICE restarts exhausted ({reason})")
            return
        self._restarts_in_row += 1
        self._set_state(PeerState.NEGOTIATING, reason)
        self.request_offer(reason, restart=True)

    async def _check_liveness(self, now: float) -> None:
        pc = self.pc
        if pc is None:
            return
        # Due within half a tick: measured every quality_interval, on the tick nearest it.
        due = now >= self._quality_due_at - self.settings.liveness_interval / 2
        received = await self._read_stats(pc, measure=due)
        if received is None:
            return
        if received > self._last_rx:
            self._last_rx = received
            self._last_rx_at = now
        elif now - self._last_rx_at >= self.settings.media_timeout:
            log.info("%s: no packets for %.1f s, disconnected", self, now - self._last_rx_at)
            self._mark_disconnected("no packets")

    async def _read_stats(
        self, pc: RTCPeerConnection, *, measure: bool, final: bool = False
    ) -> int | None:
        """One getStats reading: the packet counts, and a quality measurement if `measure`.

        Returns the transport's packets received (liveness); None when the connection was
        replaced while reading (`final`: the session's last reading, of a connection it has
        already let go).
        """
        async with self._stats_lock:
            report = await pc.getStats()
            if pc is not self.pc and not final:
                return None
            received = apply_stats(report, self.stats)
            if not measure:
                return received
            now = time.monotonic()  # with the report: frames counted until it are in
            since = self.connected_at if self.connected_at is not None else now
            interval = self._quality.measure(report, now, since)
            self._quality_due_at = now + self.settings.quality_interval
        observer = self.settings.quality_observer
        if observer is not None:
            try:
                observer(self, interval)
            except Exception:  # a report's bug must not stop the liveness checks
                log.exception("%s: quality observer %r failed", self, observer)
        return received

    def _fail(self, reason: str) -> None:
        log.info("%s: failed: %s", self, reason)
        self._set_state(PeerState.FAILED, reason)
        self._inbox.put_nowait(_Close(reason))

    async def _shutdown(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = self.close_reason or reason
        pc, self.pc = self.pc, None
        if pc is not None:
            if self.state is PeerState.CONNECTED:
                # the final figures, for reports; never holding up a shutdown
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(FINAL_STATS_TIMEOUT_S):
                        await self._read_stats(pc, measure=True, final=True)
            with contextlib.suppress(Exception):
                await pc.close()
        self.connected.clear()
        self._set_state(PeerState.CLOSED, self.close_reason)
        # Whatever is still queued is acknowledged, not applied: the session is gone.
        while not self._inbox.empty():
            command = self._inbox.get_nowait()
            if isinstance(command, Signal):
                self.hooks.handled(command, "ignored")
        self.closed.set()


def _transport_up(pc: RTCPeerConnection) -> bool:
    """DTLS is connected on every transceiver's transport (so SRTP media can flow)."""
    transceivers = pc.getTransceivers()
    return bool(transceivers) and all(
        t.receiver.transport.state == "connected" for t in transceivers
    )


def _kind(signal: Signal) -> str:
    return signal.description.type if signal.type == "sdp" else "ice"


async def _quietly(consumer: Awaitable[None]) -> None:
    # A failing media consumer (a full disk, a decoder error) must not end the session.
    try:
        await consumer
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("media consumer failed: %s: %s", type(exc).__name__, exc)


OnTrack = Callable[[PeerSession, MediaStreamTrack], Coroutine[Any, Any, None] | None]
