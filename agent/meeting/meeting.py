"""`agent.join(...)`: the agent in one meeting, as a bot author drives it.

A Meeting wraps a Participant (join, negotiate, leave) and turns what its sessions do into
RemoteParticipants and events. It owns one task, the participant's run, and awaits it in `leave()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import Any

from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from agent.config import AgentSettings, ConfigError, load_settings
from agent.convex import (
    ConvexClient,
    ConvexError,
    FunctionError,
    RetryPolicy,
    TokenError,
    TokenSource,
)
from agent.media.sinks import frames
from agent.meeting.errors import JoinRefused, MeetingEndedError
from agent.meeting.events import (
    ConnectionQuality,
    ConnectionStateChanged,
    Event,
    MeetingEnded,
    ParticipantJoined,
    ParticipantLeft,
    TrackAdded,
)
from agent.meeting.feed import Feed
from agent.meeting.output import AudioOutput, VideoOutput
from agent.meeting.remote import CaptureClock, RemoteParticipant, RemoteTrack, TrackKind
from agent.metrics import AgentMetrics
from agent.patches import install as install_patches
from agent.peer.ice import restrict_host_addresses
from agent.peer.participant import MeetingGone, Participant, ParticipantSettings
from agent.peer.session import LocalIdentity, PeerSession
from agent.peer.states import PeerState
from agent.signaling.api import ConnvoApi

log = logging.getLogger(__name__)

# How long a ParticipantJoined event waits for the participant's display name to be read.
NAME_WAIT_S = 2.0


def join(
    url: str | None = None,
    token: str | None = None,
    meeting_id: str | None = None,
    *,
    settings: AgentSettings | None = None,
    audio_out: bool = True,
    video_out: bool = False,
    quality_interval: float = 5.0,
    max_queued_events: int = 1000,
    **options: Any,
) -> Meeting:
    """The agent in a meeting; `async with agent.join(url, token, meeting_id) as meeting:` joins,
    and leaves on exit.

    Settings are those of `connvo-agent run` (the same keys: `state_dir`, `ice_host_addresses`,
    `session_timeout`, ...), given as keyword `options` or as a ready `settings` object; as with
    the CLI, `CONNVO_*` variables and `$CONNVO_CONFIG` fill in what is not given. A bad value
    raises `agent.ConfigError` (one line, naming the key). Audio is sent unless `audio_out=False`
    (`meeting.audio_out`: silence until the bot plays; each connection encodes it, which a bot
    that only listens can spare); `video_out=True` sends a video track (`meeting.video_out`).
    """
    if settings is None:
        given: dict[str, object] = {"url": url, "token": token, "meeting": meeting_id, **options}
        settings = load_settings(None, given)
    elif url or token or meeting_id or options:
        raise ConfigError("config: give either settings or url/token/meeting_id/options")
    install_patches()  # the agent's changes inside aiortc and aioice, once per process
    if settings.ice_host_addresses:
        restrict_host_addresses(settings.ice_host_addresses)
    client = convex_client(settings, max(1, settings.max_retries + 1))
    return Meeting(
        ConnvoApi(client),
        settings.participant_settings(),
        audio_out=audio_out,
        video_out=video_out,
        quality_interval=quality_interval,
        max_queued_events=max_queued_events,
        owned_client=client,
    )


class Meeting:
    """The agent in one meeting: its remote participants, its events, its audio and video out.

    Made by `agent.join(...)`. The roles of `connvo-agent run` make theirs from a ConnvoApi and
    the participant settings, with these options:

    - `decode=False`: remote media is counted (`packets_received`) but never decoded, so
      `audio()`, `video()` and `frames()` yield nothing (a bot that only checks media flows);
    - `tracks_for_peer`: the tracks to send on each new connection instead of the relayed
      `audio_out` (e.g. pre-encoded audio, or nothing for a recorder);
    - `metrics`: Prometheus figures of requests, polls and signals;
    - `owned_client`: a ConvexClient closed when the meeting is left.
    """

    def __init__(
        self,
        api: ConnvoApi,
        settings: ParticipantSettings,
        *,
        audio_out: bool = True,
        video_out: bool = False,
        quality_interval: float = 5.0,
        max_queued_events: int = 1000,
        decode: bool = True,
        tracks_for_peer: Callable[[], list[MediaStreamTrack]] | None = None,
        metrics: AgentMetrics | None = None,
        owned_client: ConvexClient | None = None,
    ) -> None:
        self.api = api
        self.settings = settings
        self.meeting_id = settings.meeting_id
        self.decode = decode
        self._tracks_for_peer = tracks_for_peer
        self.participants: dict[str, RemoteParticipant] = {}  # by user id, present ones
        self._audio_out = AudioOutput() if audio_out else None
        self._video_out = VideoOutput() if video_out else None
        self.quality_interval = quality_interval
        self.ended_because: str | None = None  # set once the agent is out of the meeting
        self._events = Feed(max(1, max_queued_events))
        self._relay = MediaRelay()
        self._by_session: dict[str, RemoteParticipant] = {}
        self._names: dict[str, str | None] = {}  # user id -> display name, as read
        self._names_wanted = asyncio.Event()
        self._names_read = asyncio.Event()
        self._changed = asyncio.Event()  # set and replaced whenever participants change
        self._client = owned_client
        settings.session.decode_media = decode
        self._participant = Participant(
            api,
            settings,
            local_tracks=self._local_tracks,
            on_track=self._on_track,
            on_state=self._on_state,
            observer=metrics,
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[Event], None]] = []

    # --- the public face -------------------------------------------------------------------------

    @property
    def audio_out(self) -> AudioOutput:
        """The audio every connection receives; not with `join(..., audio_out=False)`."""
        if self._audio_out is None:
            raise RuntimeError("no audio output: joined with audio_out=False")
        return self._audio_out

    @property
    def video_out(self) -> VideoOutput:
        """The video every connection receives; only with `join(..., video_out=True)`."""
        if self._video_out is None:
            raise RuntimeError("no video output: join with video_out=True")
        return self._video_out

    @property
    def user_id(self) -> str:
        """The agent's own user id (known once joined)."""
        return self._local().user_id

    @property
    def session_id(self) -> str:
        """The agent's own WebRTC session id (known once joined)."""
        return self._local().session_id

    @property
    def participant(self) -> Participant:
        """The underlying agent.peer Participant (sessions, poller), for diagnostics."""
        return self._participant

    async def __aenter__(self) -> Meeting:
        await self.join()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.leave()

    async def join(self) -> None:
        """Join the meeting: returns once the agent's own session is live and it can be called.

        Raises JoinRefused (with `reason`), AuthError, ConfigError, or another ConvexError when
        the backend cannot be reached.
        """
        if self._task is not None:
            raise RuntimeError("already joined")
        self._task = asyncio.create_task(self._run(), name=f"meeting-{self.meeting_id}")
        joined = asyncio.create_task(self._participant.joined.wait())
        try:
            await asyncio.wait({self._task, joined}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            joined.cancel()
        if self._task.done():
            await self._close_client()
            error = self._task.exception()
            if isinstance(error, FunctionError):
                raise JoinRefused.from_error(error) from None
            if error is not None:
                raise error
            raise MeetingEndedError(self.ended_because or "left before joining")

    async def leave(self) -> None:
        """Leave the meeting (close every connection, tell the backend); safe to call twice."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        await self._close_client()
        for output in (self._audio_out, self._video_out):
            if output is not None:
                output.stop()

    async def events(self) -> AsyncIterator[Event]:
        """Every event since joining, in order, ending with MeetingEnded (after which a new call
        yields nothing).

        One queue for the meeting, kept from the join on: events that happen before the bot
        starts reading wait for it. Beyond `max_queued_events` unread, the oldest are dropped
        (`events_dropped`).
        """
        while (event := await self._events.get()) is not None:
            if isinstance(event, ParticipantJoined) and event.participant.display_name is None:
                await self.wait_for_name(event.participant)
            yield event
            if isinstance(event, MeetingEnded):
                return

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Call `listener` with every event as it happens, before `events()` yields it (and
        whether or not anything reads `events()`). It runs on the event loop: keep it short."""
        self._listeners.append(listener)

    async def wait_for_participant(self, user_id: str | None = None) -> RemoteParticipant:
        """The participant `user_id` (or any) once present; MeetingEndedError if the meeting
        ends first. Bound the wait with `asyncio.timeout`."""
        while True:
            if self.ended_because is not None:
                raise MeetingEndedError(self.ended_because)
            for p in self.participants.values():
                if user_id is None or p.user_id == user_id:
                    return p
            await self._changed.wait()

    # --- running ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        reason, removed = "left", False
        try:
            try:
                async with asyncio.TaskGroup() as tasks:
                    names = tasks.create_task(self._name_loop())
                    quality = tasks.create_task(self._quality_loop())
                    try:
                        await self._participant.run(self._stop)
                    finally:
                        names.cancel()
                        quality.cancel()
            except BaseExceptionGroup as group:
                # the loops only end by cancellation: the error is the participant's, alone
                raise group.exceptions[0] from None
            reason = self._participant.left_because or reason
        except MeetingGone as exc:
            reason, removed = f"removed from the meeting ({exc})", True
        finally:
            self.ended_because = reason
            for p in list(self.participants.values()):
                self._participant_left(p, "agent left the meeting")
            self._emit(MeetingEnded(reason, removed))
            self._events.end()
            self._wake_waiters()

    async def _close_client(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _local(self) -> LocalIdentity:
        if self._participant.local is None:
            raise RuntimeError("not joined")
        return self._participant.local

    def _local_tracks(self) -> list[MediaStreamTrack]:
        if self._tracks_for_peer is not None:
            return self._tracks_for_peer()
        tracks = []
        if self._audio_out is not None:
            tracks.append(self._relay.subscribe(self._audio_out, buffered=True))
        if self._video_out is not None:
            tracks.append(self._relay.subscribe(self._video_out, buffered=False))
        return tracks

    @property
    def events_dropped(self) -> int:
        """Events lost because the bot did not read them (see events())."""
        return self._events.dropped

    def _emit(self, event: Event) -> None:
        self._events.put(event)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the meeting
                log.exception("event listener %r failed", listener)

    def _wake_waiters(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # --- sessions -> participants --------------------------------------------------------------

    def _on_state(self, session: PeerSession) -> None:
        sid = session.remote_session_id
        p = self._by_session.get(sid)
        if p is None:
            if session.state is PeerState.CLOSED:
                return  # closed before it did anything: never a participant
            p = self.participants.get(session.remote_user_id)
            if p is None:
                user = session.remote_user_id
                p = RemoteParticipant(user, sid, self._names.get(user))
                self.participants[user] = p
                if user not in self._names:
                    self._names_wanted.set()
                self._emit(ParticipantJoined(p))
                self._wake_waiters()
            self._by_session[sid] = p
            p.session_id = sid
        if p.session_id == sid:
            p.state = session.state.value
            _read_figures(p, session)
            self._emit(ConnectionStateChanged(p, p.state))
        if session.state is PeerState.CLOSED:
            del self._by_session[sid]
            if p not in self._by_session.values():
                self._participant_left(p, session.close_reason or "closed")

    def _participant_left(self, p: RemoteParticipant, reason: str) -> None:
        if self.participants.get(p.user_id) is not p:
            return
        del self.participants[p.user_id]
        p._end()
        self._emit(ParticipantLeft(p, reason))
        self._wake_waiters()

    def _on_track(
        self, session: PeerSession, track: MediaStreamTrack
    ) -> Coroutine[Any, Any, None] | None:
        p = self._by_session.get(session.remote_session_id)
        if p is None or track.kind not in ("audio", "video"):
            return None
        kind: TrackKind = "audio" if track.kind == "audio" else "video"
        remote = RemoteTrack(p, kind, session.remote_session_id)
        p.tracks.add(kind)
        self._emit(TrackAdded(p, kind, remote))
        if not self.decode:
            return None  # counted by the connection's statistics, never decoded
        return self._read_track(p, remote, track)

    async def _read_track(
        self, p: RemoteParticipant, remote: RemoteTrack, track: MediaStreamTrack
    ) -> None:
        clock = CaptureClock()
        kind, session_id = remote.kind, remote.session_id
        try:
            async for frame in frames(track):
                item = (frame, clock.stamp(frame), session_id)
                remote._deliver(kind, item)
                p._deliver(kind, item)
        finally:
            remote._end()

    # --- names and quality -------------------------------------------------------------------

    async def wait_for_name(self, p: RemoteParticipant) -> None:
        """Until `p.display_name` is read from the participant list (at most a couple of
        seconds; it stays None if the backend has none). `events()` does this before yielding
        ParticipantJoined; a listener (`add_listener`) hears of it at once, and may wait here."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(NAME_WAIT_S):
                while p.user_id not in self._names and self.ended_because is None:
                    await self._names_read.wait()

    async def _name_loop(self) -> None:
        """Display names from the meeting's participant list, read when someone new appears."""
        api = self._participant.api
        while True:
            await self._names_wanted.wait()
            self._names_wanted.clear()
            try:
                listed = await api.list_participants(self.meeting_id)
            except ConvexError as exc:
                log.warning("could not read the participants' names: %s", exc)
                listed = []
            for row in listed:
                self._names[row.userId] = row.user.displayName
            for p in self.participants.values():
                self._names.setdefault(p.user_id, None)  # not listed: no name to wait for
                if p.display_name is None:
                    p.display_name = self._names[p.user_id]
            read, self._names_read = self._names_read, asyncio.Event()
            read.set()

    async def _quality_loop(self) -> None:
        while True:
            await asyncio.sleep(self.quality_interval)
            manager = self.participant.manager
            if manager is None:
                continue
            for p in list(self.participants.values()):
                session = manager.sessions.get(p.session_id)
                if session is None or session.state is not PeerState.CONNECTED:
                    continue
                _read_figures(p, session)
                self._emit(ConnectionQuality(p, p.rtt_ms, p.packets_lost, p.packets_received))


def _read_figures(p: RemoteParticipant, session: PeerSession) -> None:
    stats = session.stats
    p.rtt_ms = None if stats.rtt is None else stats.rtt * 1000
    p.packets_lost, p.packets_received = stats.packets_lost, stats.rtp_received
    if session.time_to_connected is not None:
        p.time_to_connected_s = session.time_to_connected


def convex_client(
    settings: AgentSettings, attempts: int, metrics: AgentMetrics | None = None
) -> ConvexClient:
    """The Convex client of these settings (token, TLS, timeouts, retries)."""
    try:
        if settings.token_file:
            token = TokenSource(path=settings.token_file)
        else:
            token = TokenSource(value=settings.read_token().get_secret_value())
    except TokenError as exc:
        raise ConfigError(f"config: token: {exc}") from None
    return ConvexClient(
        settings.url,
        token,
        timeout=settings.request_timeout,
        verify=str(settings.ca_bundle) if settings.ca_bundle else True,
        retry=RetryPolicy(max_attempts=attempts),
        observer=None if metrics is None else metrics.request,
        max_in_flight=settings.max_requests_in_flight,
    )
