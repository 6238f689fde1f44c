"""One identity in one meeting: join, own a WebRTC session, poll and negotiate, leave cleanly.

Roles (bot, recorder, transcriber, load) wrap a Participant and supply local tracks and a consumer
for remote tracks. Shutdown order matters to the people still in the meeting: close every peer
connection, acknowledge what was handled, report the own session closed, close it, leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiortc import MediaStreamTrack

from agent.convex import ConvexError, FunctionError
from agent.peer.ice import to_rtc_ice_servers
from agent.peer.manager import ManagerSettings, SessionManager, TrackConsumer
from agent.peer.session import LocalIdentity, PeerSession
from agent.peer.states import PeerState
from agent.signaling.api import ConnvoApi
from agent.signaling.poller import (
    FAST_INTERVAL_S,
    IDLE_INTERVAL_S,
    RECENT_WINDOW_S,
    PollerObserver,
    SignalPoller,
)
from agent.signaling.state import SignalStateStore, state_file

log = logging.getLogger(__name__)

OWN_SESSION_KEY = "own_session_id"
# At a restart, how long pending signals may take to be handled before remembered peers are called.
RESTORE_SETTLE_S = 5.0


@dataclass(kw_only=True)
class ParticipantSettings(ManagerSettings):
    """The manager's settings (calls, discovery, reports, `session`) and the participant's own.

    These dataclasses (with SessionSettings) hold every default; agent.config.AgentSettings takes
    its defaults from them and maps its keys onto them by name.
    """

    meeting_id: str
    state_dir: Path
    session_id: str | None = None
    poll_fast_interval: float = FAST_INTERVAL_S
    poll_idle_interval: float = IDLE_INTERVAL_S
    poll_recent_window: float = RECENT_WINDOW_S
    # None: take the ICE servers from getMeetingConnectionInfo
    ice_servers_override: list[str] | None = None
    shutdown_timeout: float = 4.0
    # How often getMeeting is asked whether the meeting ended or this identity was removed: no
    # signaling function checks the meeting's state. 15 s keeps an idle agent within one request
    # per second in all (polls 0.8/s, discovery 0.1/s, this 0.07/s, state reports).
    meeting_check_interval: float = 15.0


class MeetingGone(Exception):
    """The meeting can no longer be read by this identity (access withdrawn, or deleted)."""


ENDED_MEETING_STATES = frozenset({"concluded", "cancelled"})


class Participant:
    def __init__(
        self,
        api: ConnvoApi,
        settings: ParticipantSettings,
        *,
        local_tracks: Callable[[], list[MediaStreamTrack]] = list,
        on_track: TrackConsumer | None = None,
        on_state: Callable[[PeerSession], None] | None = None,
        observer: PollerObserver | None = None,
    ) -> None:
        self.api = api
        self._observer = observer
        self.settings = settings
        self._local_tracks = local_tracks
        self._on_track = on_track
        self._on_state = on_state
        self.local: LocalIdentity | None = None
        self.manager: SessionManager | None = None
        self.poller: SignalPoller | None = None
        self.store: SignalStateStore | None = None
        self.joined = asyncio.Event()
        self.joined_at: float | None = None
        self._gone: BaseException | None = None
        self._owns_state = False
        # Why the participant left on its own (e.g. "meeting ended"); None while it is in.
        self.left_because: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Join, then negotiate until `stop` is set (or the meeting goes away), then leave."""
        await self._join()
        try:
            await self._serve(stop)
        finally:
            await self._leave()

    async def _join(self) -> None:
        s = self.settings
        user = await self.api.get_current_user()
        await self.api.join_meeting(s.meeting_id)
        info = await self.api.get_connection_info(s.meeting_id)
        if s.ice_servers_override is None:
            s.session.ice_servers = to_rtc_ice_servers(info.connectionInfo.iceServers)
        self.store = SignalStateStore(state_file(s.state_dir, s.meeting_id, user.id))
        # After a crash the same state dir gives back the same own session (idempotent at the
        # backend), so the remote peers keep talking to one session of ours. Only for the one
        # participant holding the state file's lock: another one of the same identity sharing the
        # directory at the same time must not take over this session.
        self._owns_state = _lock_state(self.store.path)
        if not self._owns_state:
            log.warning("state file %s is in use by another participant", self.store.path)
        reused = self.store.get_meta(OWN_SESSION_KEY) if self._owns_state else None
        try:
            session_id = await self._open_own_session(s.session_id, reused)
        except BaseException:
            if self._owns_state:
                _unlock_state(self.store.path)
            self.store.close()
            self.store = None
            raise
        if self._owns_state:
            self.store.set_meta(OWN_SESSION_KEY, session_id)
        self.local = LocalIdentity(s.meeting_id, user.id, session_id)
        self.manager = SessionManager(
            self.api,
            self.local,
            s,  # a ManagerSettings itself
            local_tracks=self._local_tracks,
            on_track=self._on_track,
            on_state=self._state_changed,
        )
        self.poller = SignalPoller(
            self.api,
            s.meeting_id,
            self.store,
            self.manager,
            fast_interval=s.poll_fast_interval,
            idle_interval=s.poll_idle_interval,
            recent_window=s.poll_recent_window,
            observer=self._observer,
        )
        poller = self.poller
        self.manager.bind_poller(poller.handled, poller.kick, lambda: poller.whole_views)
        log.info("joined meeting %s as user %s, session %s", s.meeting_id, user.id, session_id)

    async def _open_own_session(self, wanted: str | None, reused: str | None) -> str:
        """Create (or take back) the own session row and make sure it is live.

        After a restart the same state dir gives back the same session id, so remote peers keep
        talking to one session of ours and no dead row is left listed (nothing expires at the
        backend). createWebRTCSession returns an existing row as it is, closed or not, and even
        when another user owns it; so the row is then reopened with updateSessionState, which
        only succeeds on a row of the caller's own.
        """
        meeting_id = self.settings.meeting_id
        session_id = wanted or reused or uuid.uuid4().hex
        await self.api.create_webrtc_session(meeting_id, session_id)
        if session_id != reused and session_id != wanted:
            return session_id  # a fresh random id: the row was just created, connecting
        try:
            await self.api.update_session_state(meeting_id, session_id, "connecting")
        except FunctionError as exc:
            if exc.code != "NOT_FOUND":
                raise
            if session_id == wanted:
                raise FunctionError(
                    exc.function,
                    f"session id {session_id!r} belongs to another participant of this meeting",
                    exc.data,
                    exc.status,
                ) from None
            log.info("remembered session %s is not ours at the backend; a new one", session_id)
            session_id = uuid.uuid4().hex
            await self.api.create_webrtc_session(meeting_id, session_id)
        return session_id

    async def _serve(self, stop: asyncio.Event) -> None:
        assert self.manager is not None and self.poller is not None
        async with asyncio.TaskGroup() as tasks:
            manager_task = tasks.create_task(self.manager.run(), name="sessions")
            await self.manager.ready.wait()
            self.joined_at = time.monotonic()
            self.joined.set()
            poller_task = tasks.create_task(self._poll(), name="poller")
            tasks.create_task(self._restore_peers(), name="restore-peers")
            stop_task = tasks.create_task(stop.wait(), name="stop")
            watch_task = tasks.create_task(self._watch_meeting(), name="meeting-watch")
            await asyncio.wait(
                {manager_task, poller_task, stop_task, watch_task},
                return_when=asyncio.FIRST_COMPLETED,
            )
            # Sessions close before the poller stops, so their last signals are acknowledged.
            # Bounded: leaving (below, in _leave) must still have time to report and leave.
            try:
                async with asyncio.timeout(self.settings.shutdown_timeout / 2):
                    await self.manager.close_all("agent leaving")
            except TimeoutError:
                open_ = [s for s in self.manager.sessions.values() if not s.closed.is_set()]
                log.warning("%d session(s) still closing when the agent left", len(open_))
            for task in (manager_task, poller_task, stop_task, watch_task):
                task.cancel()
        if self._gone is not None:
            raise MeetingGone(str(self._gone)) from self._gone

    def _state_changed(self, session: PeerSession) -> None:
        # The state dir remembers the open sessions, so a restart after a crash can call them.
        if self.store is not None:
            if session.state is PeerState.CLOSED:
                self.store.forget_peer(session.remote_session_id)
            else:
                self.store.remember_peer(session.remote_session_id, session.remote_user_id)
        if self._on_state is not None:
            self._on_state(session)

    async def _restore_peers(self) -> None:
        """After a crash: offer again (fresh ICE) to the sessions open when the agent stopped.

        Pending signals go first (they may reopen some of those sessions themselves); only peers
        whose session is still active at the backend are called.
        """
        assert self.store is not None and self.manager is not None and self.poller is not None
        remembered = self.store.peers() if self._owns_state else {}
        if not remembered:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RESTORE_SETTLE_S):
                await self.poller.next_poll()
                while not self.poller.idle:
                    await self.poller.next_change()
        try:
            active = {
                a.sessionId: a.userId
                for a in await self.api.get_active_sessions(self.settings.meeting_id)
            }
        except ConvexError as exc:
            log.warning("could not list active sessions to restore peers: %s", exc)
            active = {}
        for session_id, user_id in remembered.items():
            if active.get(session_id) != user_id:
                self.store.forget_peer(session_id)
                continue
            session = self.manager.sessions.get(session_id)
            if session is None:
                log.info("restoring the session with %s/%s after a restart", user_id, session_id)
                self.manager.call(session_id, user_id)
            elif session.pc is None and session.remote_user_id == user_id:
                session.request_offer("restored after a restart")

    async def _watch_meeting(self) -> None:
        """Return once the meeting has ended or this identity is no longer in it.

        Signaling goes on working after endMeeting (no signaling function checks the meeting's
        state), so only getMeeting tells. A meeting that ended is a normal end (left_because is
        set); one that can no longer be read (not a participant any more) is MeetingGone.
        """
        interval = self.settings.meeting_check_interval
        while True:
            await asyncio.sleep(interval)
            try:
                meeting = await self.api.get_meeting(self.settings.meeting_id)
            except FunctionError as exc:
                if exc.code in ("FORBIDDEN", "NOT_FOUND"):
                    self._gone = exc
                    return
                log.warning("could not check the meeting's state: %s", exc)
                continue
            except ConvexError as exc:
                log.warning("could not check the meeting's state: %s", exc)
                continue
            if meeting.state in ENDED_MEETING_STATES:
                self.left_because = f"meeting {meeting.state}"
                log.info("the meeting is %s; leaving", meeting.state)
                return

    async def _poll(self) -> None:
        assert self.poller is not None
        try:
            await self.poller.run()
        except* FunctionError as group:
            self._gone = group.exceptions[0]

    async def _leave(self) -> None:
        """Best effort and bounded: the process must exit promptly even if the backend is down."""
        s = self.settings
        try:
            async with asyncio.timeout(s.shutdown_timeout):
                if self.manager is not None:
                    await self.manager.close_all("agent leaving")
                if self.poller is not None:
                    with contextlib.suppress(ConvexError):
                        await self.poller.flush_acks()
                if self.local is not None:
                    with contextlib.suppress(ConvexError):
                        await self.api.update_session_state(
                            s.meeting_id, self.local.session_id, "closed"
                        )
                    with contextlib.suppress(ConvexError):
                        await self.api.close_session(s.meeting_id, self.local.session_id)
                with contextlib.suppress(ConvexError):
                    await self.api.leave_meeting(s.meeting_id)
        except TimeoutError:
            log.warning("leaving the meeting took longer than %.1f s; gave up", s.shutdown_timeout)
        finally:
            if self.store is not None:
                if self._owns_state:
                    _unlock_state(self.store.path)
                self.store.close()
            log.info("left meeting %s", s.meeting_id)


# Open lock files of the state files this process owns (flock is per open file, so a second
# participant in the same process is refused too).
_STATE_LOCKS: dict[Path, int] = {}


def _lock_state(path: Path) -> bool:
    lock_path = path.with_suffix(path.suffix + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _STATE_LOCKS[path] = fd
    return True


def _unlock_state(path: Path) -> None:
    fd = _STATE_LOCKS.pop(path, None)
    if fd is not None:
        os.close(fd)  # closing releases the lock
