"""A Pipecat transport for Connvo meetings: the pipeline hears each participant and speaks to all.

    from agent.integrations.pipecat import ConnvoParams, ConnvoTransport

    transport = ConnvoTransport(url, token, meeting_id, params=ConnvoParams())
    pipeline = Pipeline([transport.input(), ..., transport.output()])

Needs `pip install 'connvo-agent[pipecat]'`; docs/pipecat.md is the user's guide. Built on the
public API alone (`agent.join`, `agent.Meeting`), like any bot, and modelled on Pipecat's own
LiveKit transport: the same processors, frames and event names where they map.

Construction. Either join()'s arguments: `url`, `token`, `meeting_id` and settings options
(`state_dir`, `ice_host_addresses`, ...; the `CONNVO_*` variables fill in what is not given, and a
bad value raises `agent.ConfigError` right away); or `meeting=`, a Meeting made by `agent.join(...)`
and not joined yet (for join's own options, such as `video_out`). Not both. The transport reads
`meeting.events()` itself: nothing else should.

Lifetime. The meeting is joined when the pipeline starts (the StartFrame reaches the input or the
output, whichever is first) and left when the pipeline ends (EndFrame or CancelFrame), once both the
input and the output are done with it, so that the output's last audio is sent. A Meeting is joined
once: a transport runs one pipeline, once. When the meeting ends for the bot (the host ended it,
the bot was removed) the transport ends the pipeline with an EndWorkerFrame. A join that fails is
an ErrorFrame, followed by an EndWorkerFrame. A meeting never joined is closed at the pipeline's
teardown.

Input. Each participant's audio as `UserAudioRawFrame`s tagged with their user id (`user_id`), at
the pipeline's input rate (`audio_in_sample_rate` of the params, else of the PipelineParams) and
`audio_in_channels` (1 or 2), from when they join until they leave. All participants' frames enter
the one pipeline.

Output. The pipeline's audio goes to `meeting.audio_out`, which every participant hears. A write
returns once at most `audio_out_queue_size_ms` of audio is queued in the meeting, so the output
runs at the pace audio is heard (as a sound card's would) and Pipecat's bot-speaking frames follow
it. An InterruptionFrame also clears what the meeting has queued (`audio_out.clear()`). Audio
written while no participant's connection is up is dropped: nobody would hear it.

Events (`@transport.event_handler(name)`; each handler gets the transport first):

- `on_connected()`, `on_disconnected()`: the bot joined the meeting; the bot is out of it.
- `on_participant_joined(user_id)`: a participant's connection with the bot is up (audio flows
  both ways); once per participant, whatever their reconnections.
- `on_first_participant_joined(user_id)`: the same, for the first one (again after everyone left).
- `on_participant_left(user_id, reason)`: a participant who joined is gone.
- `on_participant_connected(user_id)`, `on_participant_disconnected(user_id)`,
  `on_client_connected({"id": user_id})`, `on_client_disconnected({"id": user_id})`: aliases, as
  Pipecat's LiveKit transport has them.
- `on_audio_track_subscribed(user_id)`, `on_video_track_subscribed(user_id)`: their audio or video
  arrived (after `on_participant_joined`).
- `on_meeting_ended(reason)`: the meeting ended for the bot without the pipeline ending it.

Tasks. One task reads the meeting's events, with one child task per participant reading their
audio (an asyncio.TaskGroup); it is created by the join, and cancelled and awaited by the leave.
Event handlers run as Pipecat runs them: a task each, awaited by the transport's `cleanup()`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Literal

from loguru import logger
from pipecat.frames.frames import (
    BotConnectedFrame,
    CancelFrame,
    ClientConnectedFrame,
    EndFrame,
    EndWorkerFrame,
    Frame,
    InterruptionFrame,
    OutputAudioRawFrame,
    StartFrame,
    UserAudioRawFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pydantic import Field, field_validator

from agent.meeting import (
    ConnectionStateChanged,
    Event,
    Meeting,
    MeetingEnded,
    ParticipantJoined,
    ParticipantLeft,
    RemoteParticipant,
    TrackAdded,
    join,
)

EVENTS = (
    "on_connected",
    "on_disconnected",
    "on_meeting_ended",
    "on_first_participant_joined",
    "on_participant_joined",
    "on_participant_left",
    "on_participant_connected",
    "on_participant_disconnected",
    "on_client_connected",
    "on_client_disconnected",
    "on_audio_track_subscribed",
    "on_video_track_subscribed",
)


class ConnvoParams(TransportParams):
    """Pipecat's TransportParams, with audio in and out on by default.

    Parameters:
        audio_out_queue_size_ms: How much of the pipeline's audio may wait in the meeting's
            output ahead of what is heard (what an interruption cuts short).
    """

    audio_in_enabled: bool = True
    audio_out_enabled: bool = True
    audio_out_queue_size_ms: int = Field(default=200, ge=20, le=5000)

    @field_validator("audio_in_channels", "audio_out_channels")
    @classmethod
    def _mono_or_stereo(cls, channels: int) -> int:
        if channels not in (1, 2):
            raise ValueError("channels must be 1 or 2")
        return channels


class _SharesTheMeeting:
    """The input's and the output's lifecycle: each releases the shared meeting when the pipeline
    ends (the output after sending what it has queued), and the last one leaves it."""

    _transport: ConnvoTransport

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)  # type: ignore[misc]
        await self._transport._release(self)  # type: ignore[arg-type]

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)  # type: ignore[misc]
        await self._transport._release(self)  # type: ignore[arg-type]

    async def cleanup(self) -> None:
        await super().cleanup()  # type: ignore[misc]
        await self._transport._release(self)  # type: ignore[arg-type]
        await self._transport._close_unjoined()
        await self._transport.cleanup()  # type: ignore[no-untyped-call]


class ConnvoInputTransport(_SharesTheMeeting, BaseInputTransport):
    """Pushes each participant's audio into the pipeline as `UserAudioRawFrame`s."""

    def __init__(self, transport: ConnvoTransport, params: ConnvoParams, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._transport = transport

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        joined = await self._transport._start(self)
        await self.set_transport_ready(frame)
        if joined and self._params.audio_in_enabled:
            self._transport._audio_ready(self)


class ConnvoOutputTransport(_SharesTheMeeting, BaseOutputTransport):
    """Sends the pipeline's audio to the meeting; an interruption clears what is queued there."""

    def __init__(self, transport: ConnvoTransport, params: ConnvoParams, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._transport = transport

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self._transport._start(self)
        await self.set_transport_ready(frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self._transport._clear_audio()

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        return await self._transport._write_audio(
            frame.audio, frame.sample_rate, frame.num_channels
        )


class ConnvoTransport(BaseTransport):
    """The bot in one Connvo meeting, as a Pipecat transport (see the module's docstring)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        meeting_id: str | None = None,
        *,
        meeting: Meeting | None = None,
        params: ConnvoParams | None = None,
        name: str | None = None,
        input_name: str | None = None,
        output_name: str | None = None,
        **options: Any,
    ) -> None:
        """Either join()'s arguments (`url`, `token`, `meeting_id`, settings `options`) or
        `meeting`, a Meeting not joined yet; `params` are the transport's."""
        super().__init__(name=name, input_name=input_name, output_name=output_name)
        if meeting is not None:
            if url is not None or token is not None or meeting_id is not None or options:
                raise ValueError("give either meeting= or join()'s arguments, not both")
            self._meeting = meeting
        else:
            self._meeting = join(url, token, meeting_id, **options)
        self._params = params or ConnvoParams()
        self._input: ConnvoInputTransport | None = None
        self._output: ConnvoOutputTransport | None = None
        for event in EVENTS:
            self._register_event_handler(event)
        # the meeting, shared by the input and the output
        self._lock = asyncio.Lock()
        self._state: Literal["new", "joined", "failed", "left"] = "new"
        self._users: set[FrameProcessor] = set()  # started processors not yet done with it
        self._leaving = False
        self._disconnected = False
        self._run_task: asyncio.Task[None] | None = None
        self._group: asyncio.TaskGroup | None = None
        # participants
        self._sink: ConnvoInputTransport | None = None  # the input, once it takes audio
        self._reading: set[RemoteParticipant] = set()
        self._present: dict[str, RemoteParticipant] = {}  # joined (announced), by user id
        self._pending_tracks: dict[RemoteParticipant, list[str]] = {}
        self._first_joined = False
        self._muted: set[str] = set()

    # --- Pipecat's transport face ----------------------------------------------------------------

    def input(self) -> ConnvoInputTransport:
        if self._input is None:
            self._input = ConnvoInputTransport(self, self._params, name=self._input_name)
        return self._input

    def output(self) -> ConnvoOutputTransport:
        if self._output is None:
            self._output = ConnvoOutputTransport(self, self._params, name=self._output_name)
        return self._output

    @property
    def meeting(self) -> Meeting:
        """The Meeting (joined while the pipeline runs)."""
        return self._meeting

    @property
    def participant_id(self) -> str:
        """The bot's own user id (once joined)."""
        return self._meeting.user_id

    def get_participants(self) -> list[str]:
        """The user ids of the participants who joined and have not left."""
        return list(self._present)

    def get_client_id(self, client: Any) -> str:
        """The user id in an `on_client_connected` / `on_client_disconnected` argument."""
        return str(client["id"])

    async def mute_participant(self, participant_id: str) -> None:
        """Stop pushing this participant's audio into the pipeline."""
        self._muted.add(participant_id)

    async def unmute_participant(self, participant_id: str) -> None:
        """Push this participant's audio into the pipeline again."""
        self._muted.discard(participant_id)

    async def send_audio(self, frame: OutputAudioRawFrame) -> None:
        """Queue audio on the output, after what the pipeline has queued there."""
        if self._output is not None:
            await self._output.queue_frame(frame, FrameDirection.DOWNSTREAM)

    # --- joining and leaving ---------------------------------------------------------------------

    async def _start(self, processor: FrameProcessor) -> bool:
        """Join the meeting unless it is joined; whether `processor` may use it. The first failed
        join is reported as an ErrorFrame and ends the pipeline."""
        try:
            return await self._acquire(processor)
        except Exception as exc:
            await processor.push_error(
                f"{self}: could not join the meeting: {exc}",
                exception=exc,
                force_treat_as_permanent=True,
            )
            await processor.push_frame(EndWorkerFrame(reason=f"could not join the meeting: {exc}"))
            return False

    async def _acquire(self, processor: FrameProcessor) -> bool:
        async with self._lock:
            if self._state == "new":
                self._state = "failed"  # unless the join below succeeds
                try:
                    await self._meeting.join()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await self._meeting.leave()  # a cancelled join may have begun
                    raise
                self._state = "joined"
                logger.info(f"{self}: joined meeting {self._meeting.meeting_id}")
                self._run_task = asyncio.create_task(self._run(), name=f"{self}::meeting")
                await self._call_event_handler("on_connected")
                if self._input is not None:
                    await self._input.push_frame(BotConnectedFrame())
            if self._state != "joined":
                return False
            self._users.add(processor)
            return True

    async def _release(self, processor: FrameProcessor) -> None:
        """`processor` is done with the meeting; the last one leaves it."""
        if processor is self._sink:
            self._sink = None
        async with self._lock:
            if processor not in self._users:
                return
            self._users.discard(processor)
            if self._users:
                return
            self._state = "left"
            self._leaving = True
            try:
                await self._meeting.leave()
            finally:
                await self._stop_run()
                logger.info(f"{self}: left meeting {self._meeting.meeting_id}")
                await self._disconnected_once()

    async def _close_unjoined(self) -> None:
        """At the pipeline's teardown: a meeting never joined is closed (its backend client)."""
        async with self._lock:
            if self._state == "new":
                self._state = "left"
                await self._meeting.leave()

    async def _stop_run(self) -> None:
        task, self._run_task = self._run_task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait({task})  # raises only if this task itself is cancelled
        if not task.cancelled() and task.exception() is not None:
            logger.error(f"{self}: reading the meeting failed: {task.exception()!r}")

    async def _disconnected_once(self) -> None:
        if not self._disconnected:
            self._disconnected = True
            await self._call_event_handler("on_disconnected")

    # --- the meeting's events --------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                self._start_readers()
                async for event in self._meeting.events():
                    await self._on_event(event)
        finally:
            self._group = None

    async def _on_event(self, event: Event) -> None:
        if isinstance(event, ParticipantJoined):
            self._start_reader(event.participant)
        elif isinstance(event, ConnectionStateChanged):
            p = event.participant
            if event.state == "connected" and self._present.get(p.user_id) is not p:
                await self._participant_joined(p)
        elif isinstance(event, TrackAdded):
            if self._present.get(event.participant.user_id) is event.participant:
                await self._track_added(event.participant, event.kind)
            else:
                self._pending_tracks.setdefault(event.participant, []).append(event.kind)
        elif isinstance(event, ParticipantLeft):
            await self._participant_left(event.participant, event.reason)
        elif isinstance(event, MeetingEnded) and not self._leaving:
            await self._meeting_ended(event.reason)

    async def _participant_joined(self, p: RemoteParticipant) -> None:
        if self._leaving or p.left.is_set():
            return
        self._present[p.user_id] = p
        logger.info(f"{self}: participant {p.user_id} joined")
        await self._call_event_handler("on_participant_joined", p.user_id)
        await self._call_event_handler("on_participant_connected", p.user_id)
        await self._call_event_handler("on_client_connected", {"id": p.user_id})
        if self._sink is not None:
            await self._sink.push_frame(ClientConnectedFrame())
        if not self._first_joined:
            self._first_joined = True
            await self._call_event_handler("on_first_participant_joined", p.user_id)
        for kind in self._pending_tracks.pop(p, []):
            await self._track_added(p, kind)

    async def _track_added(self, p: RemoteParticipant, kind: str) -> None:
        await self._call_event_handler(f"on_{kind}_track_subscribed", p.user_id)

    async def _participant_left(self, p: RemoteParticipant, reason: str) -> None:
        self._pending_tracks.pop(p, None)
        if self._leaving or self._present.get(p.user_id) is not p:
            return
        del self._present[p.user_id]
        logger.info(f"{self}: participant {p.user_id} left ({reason})")
        await self._call_event_handler("on_participant_left", p.user_id, reason)
        await self._call_event_handler("on_participant_disconnected", p.user_id)
        await self._call_event_handler("on_client_disconnected", {"id": p.user_id})
        if not self._present:
            self._first_joined = False

    async def _meeting_ended(self, reason: str) -> None:
        """The meeting ended for the bot while the pipeline runs: end the pipeline."""
        logger.info(f"{self}: the meeting ended ({reason})")
        await self._call_event_handler("on_meeting_ended", reason)
        await self._disconnected_once()
        for processor in (self._input, self._output):
            if processor is not None and processor in self._users:
                await processor.push_frame(EndWorkerFrame(reason=f"meeting ended: {reason}"))
                return

    # --- audio in ----------------------------------------------------------------------------

    def _audio_ready(self, sink: ConnvoInputTransport) -> None:
        """The input takes audio from now on: read every participant's."""
        self._sink = sink
        self._start_readers()

    def _start_readers(self) -> None:
        for p in list(self._meeting.participants.values()):
            self._start_reader(p)

    def _start_reader(self, p: RemoteParticipant) -> None:
        sink = self._sink
        if self._group is None or sink is None or p in self._reading or p.left.is_set():
            return
        self._reading.add(p)
        self._group.create_task(self._read_audio(p, sink), name=f"{self}::audio-{p.user_id}")

    async def _read_audio(self, p: RemoteParticipant, sink: ConnvoInputTransport) -> None:
        """Push `p`'s audio into the input until they leave (the stream then ends)."""
        try:
            stream = p.audio(sample_rate=sink.sample_rate, channels=self._params.audio_in_channels)
            async for frame in stream:
                if self._sink is not sink or p.user_id in self._muted:
                    continue
                await sink.push_audio_frame(
                    UserAudioRawFrame(
                        audio=frame.pcm,
                        sample_rate=frame.sample_rate,
                        num_channels=frame.channels,
                        user_id=p.user_id,
                    )
                )
        except Exception:
            logger.exception(f"{self}: reading the audio of {p.user_id} failed")
        finally:
            self._reading.discard(p)

    # --- audio out ---------------------------------------------------------------------------

    def _heard(self) -> bool:
        """Whether a participant's connection is up to hear the output."""
        return any(p.state == "connected" for p in self._meeting.participants.values())

    async def _write_audio(self, pcm: bytes, sample_rate: int, channels: int) -> bool:
        if self._state != "joined" or not self._heard():
            return False
        out = self._meeting.audio_out
        await out.play_pcm(pcm, sample_rate, channels)
        # Return when no more than the queue size is left to play (the meeting plays it at real
        # time): the output then runs at the pace the audio is heard, as with a sound card.
        excess = out.queued_seconds - self._params.audio_out_queue_size_ms / 1000
        if excess > 0:
            await asyncio.sleep(excess)
        return True

    def _clear_audio(self) -> None:
        if self._state == "joined":
            dropped = self._meeting.audio_out.clear()
            logger.debug(f"{self}: interruption, {dropped:.2f} s of queued audio dropped")
