"""The session manager: routes signals to peer sessions and owns their tasks.

Rules (see the README, "How the agent negotiates"):
- a session is keyed by the remote's session id; its first signal fixes its remote user, and a later
  signal for it from another user is rejected;
- only an offer or an ICE candidate (which may arrive before its offer) opens a session; an
  answer or rollback for an unknown session is acknowledged and ignored. Rows do not say whether
  a signal was a broadcast, so a broadcast is handled like a direct signal;
- an offer from a new session of a user who already has one replaces the old session (a reload);
- with call_everyone, a listed session that never answers is called at most MAX_CALL_TRIES times,
  with growing pauses, then left alone until it signals or its row at the backend changes: the
  backend never expires the row of a client that crashed;
- with call_everyone, while no connection to a user is up, the user's newest listed session is
  called in place of an older one (a crashed client that came back with a session that waits);
- discovery runs again soon after a connection goes down, whatever its pace was;
- the agent's own session row at the backend reports the aggregate state of its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiortc import MediaStreamTrack

from agent.aio import wait_event
from agent.convex import ConvexError
from agent.peer.session import LocalIdentity, PeerSession, SessionSettings
from agent.peer.states import PeerState
from agent.signaling.api import ConnvoApi
from agent.signaling.models import ActiveSession, MetadataValue, SessionState, Signal

log = logging.getLogger(__name__)

# How long a closed session's id is remembered, so its late signals are ignored, not reopened.
CLOSED_MEMORY_S = 600.0
# A session opened by a lone early candidate whose offer is not at the backend is dropped after
# this, once a poll has seen everything pending (behind a backlog the offer may be hidden).
ORPHAN_TIMEOUT_S = 10.0
# Calls to a listed session that never connects: this many, each after the previous one ended
# (session_timeout at most) plus the pause before it.
MAX_CALL_TRIES = 3
CALL_RETRY_PAUSES_S = (30.0, 120.0)


@dataclass
class _CallRecord:
    """Unanswered calls to one remote session (forgotten once it connects or signals)."""

    tries: int = 0
    next_at: float = 0.0  # monotonic: not before this
    row: tuple[str, float] | None = None  # (state, updatedAt) of its row when last called


@dataclass(kw_only=True)
class ManagerSettings:
    """How the manager calls, discovers and reports; ParticipantSettings extends it."""

    session: SessionSettings = field(default_factory=SessionSettings)
    call_everyone: bool = False
    discovery_interval: float = 10.0  # the longest gap between discoveries
    # discovery runs this often at first and after a change, doubling up to discovery_interval
    discovery_first_interval: float = 1.0
    report_interval: float = 60.0  # refresh of the own session's metadata while nothing changes
    min_report_gap: float = 1.0  # state reports are coalesced to at most one per this
    # offers made or answered at the same time (the rest wait their turn, first come first served)
    concurrent_negotiations: int = 4
    # with call_everyone: whom to call (e.g. only a hub, for a star topology); None = everyone
    call_filter: Callable[[ActiveSession], bool] | None = None
    # with call_everyone: calls to a session that never connects, and the pauses between them
    max_call_tries: int = MAX_CALL_TRIES
    call_retry_pauses: tuple[float, ...] = CALL_RETRY_PAUSES_S


TrackConsumer = Callable[[PeerSession, MediaStreamTrack], Coroutine[Any, Any, None] | None]


class SessionManager:
    def __init__(
        self,
        api: ConnvoApi,
        local: LocalIdentity,
        settings: ManagerSettings,
        *,
        local_tracks: Callable[[], list[MediaStreamTrack]] = list,
        on_track: TrackConsumer | None = None,
        on_state: Callable[[PeerSession], None] | None = None,
    ) -> None:
        self.api = api
        self.local = local
        self.settings = settings
        self.sessions: dict[str, PeerSession] = {}
        self.rejected = Counter[str]()
        self._local_tracks = local_tracks
        self._on_track = on_track
        self._on_state = on_state
        self._handled: Callable[[Signal, str], None] = lambda signal, outcome: None
        self._kick: Callable[[], None] = lambda: None
        self._whole_views: Callable[[], int] = lambda: 0
        # sessions opened by a candidate, no description yet -> whole views when opened
        self._awaiting_offer: dict[str, int] = {}
        self._closed: dict[str, float] = {}  # remote session id -> when it closed
        self._closed_wall: dict[str, float] = {}  # the same, epoch seconds (vs. signal times)
        # the other sessions the previous discovery saw; None before the first, which always
        # counts as a change (discovery runs again 1 s after joining, whoever is there)
        self._seen_active: set[str] | None = None
        self._calls: dict[str, _CallRecord] = {}  # remote session id -> unanswered calls
        # set when a connection goes down: its remote may have left, or come back as a new session
        self._discovery_wake = asyncio.Event()
        self._negotiation_gate = asyncio.Semaphore(settings.concurrent_negotiations)
        self._tasks: asyncio.TaskGroup | None = None
        self._report_wake = asyncio.Event()
        self._reported: tuple[SessionState, int] | None = None
        self.ready = asyncio.Event()
        self._opened = asyncio.Event()  # set and replaced whenever a session opens

    def bind_poller(
        self,
        handled: Callable[[Signal, str], None],
        kick: Callable[[], None],
        whole_views: Callable[[], int] | None = None,
    ) -> None:
        self._handled = handled
        self._kick = kick
        if whole_views is not None:
            self._whole_views = whole_views

    # --- SessionHooks (called by sessions) ---------------------------------------------------

    def handled(self, signal: Signal, outcome: str) -> None:
        self._handled(signal, outcome)

    def kick(self) -> None:
        self._kick()

    def state_changed(self, session: PeerSession) -> None:
        if session.state is PeerState.CONNECTED:
            self._calls.pop(session.remote_session_id, None)
        if session.state is PeerState.DISCONNECTED:
            self._discovery_wake.set()
        if session.state is PeerState.CLOSED:
            self._closed[session.remote_session_id] = time.monotonic()
            self._closed_wall[session.remote_session_id] = time.time()
            if self.sessions.get(session.remote_session_id) is session:
                del self.sessions[session.remote_session_id]
        if self._on_state is not None:
            self._on_state(session)
        self._report_wake.set()

    def local_tracks(self) -> list[MediaStreamTrack]:
        return self._local_tracks()

    def on_track(
        self, session: PeerSession, track: MediaStreamTrack
    ) -> Coroutine[Any, Any, None] | None:
        return self._on_track(session, track) if self._on_track else None

    # --- SignalSink (called by the poller) ---------------------------------------------------

    def negotiating(self) -> bool:
        return any(s.negotiating for s in self.sessions.values())

    def deliver(self, signal: Signal) -> None:
        session = self.sessions.get(signal.sessionId)
        if session is not None:
            if signal.fromUserId != session.remote_user_id:
                self._reject(signal, "sender is not the session's remote user")
                return
            if signal.type == "sdp":
                self._awaiting_offer.pop(signal.sessionId, None)
            session.deliver(signal)
            return
        if signal.fromUserId == self.local.user_id:
            self._ignore(signal, "own signal")
            return
        self._calls.pop(signal.sessionId, None)  # it is alive: calls to it may start over
        closed_at = self._closed.get(signal.sessionId)
        if closed_at is not None:
            fresh_offer = (
                signal.type == "sdp"
                and signal.description.type == "offer"
                and signal.timestamp / 1000 > self._closed_wall.get(signal.sessionId, math.inf)
            )
            if not fresh_offer:
                self._ignore(signal, "session already closed")
                return
            # An offer sent after the agent closed that session (e.g. gave up calling it).
            del self._closed[signal.sessionId]
        opens = signal.type == "ice" or signal.description.type == "offer"
        if not opens:
            self._ignore(signal, f"{signal.description.type} for an unknown session")
            return
        session = self._open(signal.sessionId, signal.fromUserId)
        if signal.type == "sdp":
            self._replace_older_sessions(session)
        else:
            self._awaiting_offer[signal.sessionId] = self._whole_views()
        session.deliver(signal)

    # --- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Own the sessions, discovery and state reporting until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            self.ready.set()
            tasks.create_task(self._report_loop(), name="report-state")
            tasks.create_task(self._discovery_loop(), name="discovery")
            await asyncio.Event().wait()  # until cancelled by the owner

    async def wait_session(self, remote_session_id: str) -> PeerSession:
        """The session with that remote session id, once it exists (wrap in asyncio.timeout)."""
        while remote_session_id not in self.sessions:
            await self._opened.wait()
        return self.sessions[remote_session_id]

    async def close_all(self, reason: str) -> None:
        sessions = list(self.sessions.values())
        await asyncio.gather(*(s.close(reason) for s in sessions), return_exceptions=True)

    def call(self, remote_session_id: str, remote_user_id: str) -> PeerSession:
        """Open a session to a remote participant and send it an offer."""
        session = self._open(remote_session_id, remote_user_id)
        session.request_offer("call")
        return session

    def _open(self, remote_session_id: str, remote_user_id: str) -> PeerSession:
        assert self._tasks is not None, "SessionManager.run() is not running"
        session = PeerSession(
            remote_session_id=remote_session_id,
            remote_user_id=remote_user_id,
            local=self.local,
            api=self.api,
            hooks=self,
            settings=self.settings.session,
            negotiation_gate=self._negotiation_gate,
        )
        self.sessions[remote_session_id] = session
        self._tasks.create_task(session.run(), name=f"session-{remote_session_id}")
        opened, self._opened = self._opened, asyncio.Event()
        opened.set()
        self._report_wake.set()
        return session

    def _replace_older_sessions(self, newer: PeerSession) -> None:
        for session in list(self.sessions.values()):
            if session is not newer and session.remote_user_id == newer.remote_user_id:
                log.info("%s replaced by a newer session of the same user", session)
                assert self._tasks is not None
                self._tasks.create_task(session.close("replaced by a newer session"))

    def _reject(self, signal: Signal, why: str) -> None:
        self.rejected[why] += 1
        log.warning("signal %s from %s rejected: %s", signal.id, signal.fromUserId, why)
        self._handled(signal, "rejected")

    def _ignore(self, signal: Signal, why: str) -> None:
        log.debug("signal %s ignored: %s", signal.id, why)
        self._handled(signal, "ignored")

    # --- discovery and cleanup ---------------------------------------------------------------

    async def _discovery_loop(self) -> None:
        # Fast while people come and go, slow when the meeting is stable: a hundred load-test
        # participants each asking every second would be most of the backend's traffic.
        longest = self.settings.discovery_interval
        first = min(self.settings.discovery_first_interval, longest)
        interval = first
        while True:
            changed = False  # a failed request backs off too: no faster calls into an outage
            with contextlib.suppress(ConvexError):
                changed = await self.discover_once()
            self._forget_old_closed()
            interval = first if changed else min(2 * interval, longest)
            waited_from = time.monotonic()
            if await wait_event(self._discovery_wake, interval):
                # A connection went down: look again soon, not at the stable meeting's pace
                # (its remote may have crashed and rejoined), yet never more often than `first`.
                interval = first
                await asyncio.sleep(max(0.0, first - (time.monotonic() - waited_from)))
            self._discovery_wake.clear()

    async def discover_once(self) -> bool:
        """Close sessions whose remote went away; with call_everyone, call whoever is new.

        Returns whether the other participants' sessions changed since the previous call.
        """
        asked_at = time.monotonic()
        active = await self.api.get_active_sessions(self.local.meeting_id)
        others = [a for a in active if a.userId != self.local.user_id]
        present = {a.sessionId for a in others}
        seen = self._seen_active
        changed = seen is None or present != seen
        for session_id, ours in list(self.sessions.items()):
            # Gone from the list: it was listed before, or its session began before this read
            # (a remote's row exists before its first signal, so a read made after that signal
            # lists it until it closes). A session that opened and closed between two reads
            # was never seen listed; the second rule catches it.
            if session_id not in present and (
                (seen is not None and session_id in seen) or ours.created_at < asked_at
            ):
                log.info("%s: the remote left", ours)
                assert self._tasks is not None
                self._tasks.create_task(ours.close("remote left"))
        self._seen_active = present
        for session_id in [k for k in self._calls if k not in present]:
            del self._calls[session_id]  # no longer listed: nothing more to call
        now = time.monotonic()
        for session_id, views in list(self._awaiting_offer.items()):
            session = self.sessions.get(session_id)
            if session is None:
                del self._awaiting_offer[session_id]
            elif now - session.created_at > ORPHAN_TIMEOUT_S and self._whole_views() > views:
                del self._awaiting_offer[session_id]
                assert self._tasks is not None
                self._tasks.create_task(self._drop_orphan(session))
        if self.settings.call_everyone:
            wanted = self.settings.call_filter or (lambda remote: True)
            listed = {a.sessionId: a for a in others}
            for remote in _newest_per_user([a for a in others if wanted(a)]):
                mine = [s for s in self.sessions.values() if s.remote_user_id == remote.userId]
                if mine and not _superseded(mine, remote, listed):
                    continue
                if self._may_call(remote, now):
                    if mine:
                        log.info(
                            "user %s has a newer session %s; calling it instead",
                            remote.userId,
                            remote.sessionId,
                        )
                    self._replace_older_sessions(self.call(remote.sessionId, remote.userId))
        return changed

    def _may_call(self, remote: ActiveSession, now: float) -> bool:
        """Whether to call this listed session now (and count the call if so)."""
        record = self._calls.setdefault(remote.sessionId, _CallRecord())
        row = (remote.state, remote.updatedAt)
        if record.row is not None and record.row != row:
            # Its client updated its row since the last call: alive after all, start over.
            log.info("session %s changed at the backend; calling it again", remote.sessionId)
            record.tries, record.next_at = 0, 0.0
        tries, pauses = self.settings.max_call_tries, self.settings.call_retry_pauses
        if record.tries >= tries or now < record.next_at:
            return False
        record.tries += 1
        record.row = row
        pause = pauses[min(record.tries, len(pauses)) - 1] if pauses else 0.0
        record.next_at = now + self.settings.session.session_timeout + pause
        if record.tries == tries:
            log.info(
                "session %s of user %s: last call (%d unanswered); left alone afterwards until"
                " it signals or its row changes",
                remote.sessionId,
                remote.userId,
                tries - 1,
            )
        return True

    async def _drop_orphan(self, session: PeerSession) -> None:
        log.info("%s: no offer for its candidates; dropped", session)
        await session.close("no offer arrived")
        # Not remembered as closed: should its offer come after all (a sender retrying for long),
        # it opens a fresh session rather than being ignored.
        self._closed.pop(session.remote_session_id, None)

    def _forget_old_closed(self) -> None:
        cutoff = time.monotonic() - CLOSED_MEMORY_S
        self._closed = {k: t for k, t in self._closed.items() if t >= cutoff}
        self._closed_wall = {k: t for k, t in self._closed_wall.items() if k in self._closed}

    # --- the own session's state at the backend ----------------------------------------------

    def aggregate_state(self) -> tuple[SessionState, dict[str, MetadataValue]]:
        states = Counter(s.state for s in self.sessions.values())
        connected = states[PeerState.CONNECTED]
        state: SessionState
        if connected:
            state = "connected"
        elif states[PeerState.DISCONNECTED]:
            state = "disconnected"
        else:
            state = "connecting"
        rtts = [s.stats.rtt for s in self.sessions.values() if s.stats.rtt is not None]
        metadata: dict[str, MetadataValue] = {
            "peers": len(self.sessions),
            "peersConnected": connected,
            "peersNegotiating": states[PeerState.NEGOTIATING] + states[PeerState.NEW],
            "packetsLost": sum(s.stats.packets_lost for s in self.sessions.values()),
        }
        if rtts:
            metadata["rttMs"] = round(1000 * sum(rtts) / len(rtts), 1)
        return state, metadata

    async def _report_loop(self) -> None:
        last_sent = 0.0
        while True:
            await wait_event(self._report_wake, self.settings.report_interval)
            self._report_wake.clear()
            # Coalesce bursts of state changes into one request.
            gap = self.settings.min_report_gap - (time.monotonic() - last_sent)
            if gap > 0:
                await asyncio.sleep(gap)
            state, metadata = self.aggregate_state()
            key = (state, int(metadata["peersConnected"]))
            if (
                key == self._reported
                and time.monotonic() - last_sent < self.settings.report_interval
            ):
                continue
            with contextlib.suppress(ConvexError):
                await self.api.update_session_state(
                    self.local.meeting_id, self.local.session_id, state, metadata
                )
                self._reported = key
            last_sent = time.monotonic()


def _superseded(
    mine: list[PeerSession], newest: ActiveSession, listed: dict[str, ActiveSession]
) -> bool:
    """Whether the sessions with a user should give way to the user's newest listed session.

    A client that crashed and came back (a killed browser tab reopened, a bot moved to another
    worker) leaves its old row listed forever, and its new session may wait to be called: so
    while no connection to the user is up, a newer session of the user is called instead. A
    connection that is up is kept, so two live sessions of one user never take turns.
    """
    for session in mine:
        if session.remote_session_id == newest.sessionId or session.state is PeerState.CONNECTED:
            return False
        row = listed.get(session.remote_session_id)
        if row is not None and row.createdAt >= newest.createdAt:
            return False
    return True


def _newest_per_user(sessions: list[ActiveSession]) -> list[ActiveSession]:
    newest: dict[str, ActiveSession] = {}
    for s in sessions:
        if s.userId not in newest or s.createdAt > newest[s.userId].createdAt:
            newest[s.userId] = s
    return list(newest.values())
