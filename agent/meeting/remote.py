"""A remote participant as a bot sees it: who it is, its connection, its audio and video.

Every remote track is read by one task of the agent whatever the bot does; each `audio()` or
`video()` iterator gets its own bounded queue from that reader. A reader that falls behind loses
its oldest frames (counted in `dropped`), never slows the connection, the event loop or another
reader.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import av

from agent.meeting.feed import Feed

TrackKind = Literal["audio", "video"]

# RTP timestamps are 32-bit and wrap (after 24.8 h of 48 kHz audio).
_RTP_WRAP = 1 << 32
# A capture time further than this from "arrival minus the frame's duration" means the sender
# restarted its timestamps (a new stream): the clock is anchored again.
_REANCHOR_S = 5.0


@dataclass(frozen=True)
class AudioFrame:
    """20 ms or so of a participant's audio as 16-bit signed PCM, channels interleaved."""

    pcm: bytes
    sample_rate: int
    channels: int
    samples: int  # per channel
    capture_time_ms: float  # epoch ms of the first sample (see CaptureClock)
    session_id: str  # the participant's connection that carried it


@dataclass(frozen=True)
class VideoFrame:
    """One decoded video frame of a participant."""

    frame: av.VideoFrame
    capture_time_ms: float
    session_id: str


@dataclass(frozen=True)
class MediaFrame:
    """One frame of a track as aiortc decoded it (`av.AudioFrame`, in the format received, or
    `av.VideoFrame`), for readers that want the source format (a recorder)."""

    frame: av.AudioFrame | av.VideoFrame
    capture_time_ms: float
    session_id: str


class CaptureClock:
    """Epoch times of a remote track's frames from their RTP timestamps (`frame.pts`).

    The first frame anchors the clock on its arrival (this machine's clock, less the frame's
    duration); later frames are placed by their RTP timestamps, so jitter-buffer delays and bursts
    do not move them and gaps in the sender's stream keep their length. The anchor includes the
    network and jitter-buffer delay of the first frame (tens of ms on a LAN).
    """

    def __init__(self) -> None:
        self._anchor_s: float | None = None  # epoch s of the first pts
        self._first_pts = 0
        self._last_pts = 0
        self._wraps = 0

    def stamp(self, frame: av.AudioFrame | av.VideoFrame, now: float | None = None) -> float:
        """Epoch ms of `frame`'s first sample."""
        arrival = time.time() if now is None else now
        duration = frame.samples / frame.sample_rate if isinstance(frame, av.AudioFrame) else 0.0
        if frame.pts is None or frame.time_base is None:
            return (arrival - duration) * 1000
        pts = frame.pts
        if self._anchor_s is not None and self._last_pts - pts > _RTP_WRAP // 2:
            self._wraps += 1
        self._last_pts = pts
        unwrapped = pts + self._wraps * _RTP_WRAP
        if self._anchor_s is not None:
            at = self._anchor_s + float((unwrapped - self._first_pts) * frame.time_base)
            if abs(at - (arrival - duration)) <= _REANCHOR_S:
                return at * 1000
        self._anchor_s, self._first_pts, self._wraps = arrival - duration, pts, 0
        return self._anchor_s * 1000


class AudioStream:
    """`async for frame in participant.audio(...)`: the participant's audio at the asked format,
    across its connections (a reload's new connection continues the same stream), until it
    leaves or the bot leaves the meeting. From `track.audio(...)`: that track's, until it ends."""

    def __init__(self, owner: MediaSource, sample_rate: int, channels: int, limit: int):
        if sample_rate <= 0 or channels not in (1, 2):
            raise ValueError("sample_rate must be positive and channels 1 or 2")
        self.sample_rate = sample_rate
        self.channels = channels
        self._owner = owner
        self._feed = Feed(limit)
        self._resampler = av.AudioResampler(
            format="s16", layout="mono" if channels == 1 else "stereo", rate=sample_rate
        )

    @property
    def dropped(self) -> int:
        """Frames this reader lost because it fell more than its queue behind."""
        return self._feed.dropped

    def __aiter__(self) -> AsyncIterator[AudioFrame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[AudioFrame]:
        try:
            while (item := await self._feed.get()) is not None:
                frame, capture_ms, session_id = item
                for out in self._resampler.resample(frame):
                    samples = out.samples
                    yield AudioFrame(
                        pcm=bytes(out.planes[0])[: samples * 2 * self.channels],
                        sample_rate=self.sample_rate,
                        channels=self.channels,
                        samples=samples,
                        capture_time_ms=capture_ms,
                        session_id=session_id,
                    )
                    # a resampled frame may start a few samples later than its source frame
                    capture_ms += 1000 * samples / self.sample_rate
        finally:
            self._owner._unsubscribe(self._feed)


class VideoStream:
    """`async for frame in participant.video()`: decoded video frames (`VideoFrame`); the
    oldest are dropped when the reader falls behind. `track.frames()` gives a FrameStream, which
    yields `MediaFrame`s of either kind the same way."""

    frame_type: type[VideoFrame] | type[MediaFrame] = VideoFrame

    def __init__(self, owner: MediaSource, limit: int):
        self._owner = owner
        self._feed = Feed(limit)

    @property
    def dropped(self) -> int:
        """Frames this reader lost because it fell more than its queue behind."""
        return self._feed.dropped

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Any]:
        try:
            while (item := await self._feed.get()) is not None:
                yield self.frame_type(*item)
        finally:
            self._owner._unsubscribe(self._feed)


class FrameStream(VideoStream):
    """`async for frame in track.frames()`: `MediaFrame`s in the format aiortc decoded."""

    frame_type = MediaFrame

    def __aiter__(self) -> AsyncIterator[MediaFrame]:
        return self._frames()


class MediaSource:
    """What remote frames are delivered to: a participant (all its tracks) or one track."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()
        self._feeds: dict[TrackKind, list[Feed]] = {"audio": [], "video": []}

    def _subscribe(self, kind: TrackKind, feed: Feed) -> None:
        if self.ended.is_set():
            feed.end()
        self._feeds[kind].append(feed)

    def _unsubscribe(self, feed: Feed) -> None:
        for feeds in self._feeds.values():
            if feed in feeds:
                feeds.remove(feed)

    def _deliver(self, kind: TrackKind, item: tuple[Any, float, str]) -> None:
        for feed in self._feeds[kind]:
            feed.put(item)

    def _end(self) -> None:
        self.ended.set()
        for feeds in self._feeds.values():
            for feed in feeds:
                feed.end()

    def _audio(self, sample_rate: int, channels: int, max_queued_ms: int) -> AudioStream:
        stream = AudioStream(self, sample_rate, channels, max(1, max_queued_ms // 20))
        self._subscribe("audio", stream._feed)
        return stream

    def _video(self, max_queued_frames: int) -> VideoStream:
        stream = VideoStream(self, max(1, max_queued_frames))
        self._subscribe("video", stream._feed)
        return stream


class RemoteParticipant(MediaSource):
    """Another participant of the meeting with a connection to the agent.

    Present from `ParticipantJoined` to `ParticipantLeft`; the same object throughout (a reload's
    new connection replaces the old one under it). Its figures are those of its current
    connection, updated at each state change and each `ConnectionQuality` event.
    """

    def __init__(self, user_id: str, session_id: str, display_name: str | None = None) -> None:
        super().__init__()
        self.user_id = user_id
        self.display_name = display_name
        self.session_id = session_id  # its current connection's WebRTC session id
        self.state = "new"  # its current connection's state
        self.time_to_connected_s: float | None = None  # offer or answer applied -> connected
        self.rtt_ms: float | None = None
        self.packets_lost = 0
        self.packets_received = 0
        self.tracks: set[TrackKind] = set()
        self.left = self.ended  # set when the participant has left

    def __repr__(self) -> str:
        name = f" {self.display_name!r}" if self.display_name else ""
        return f"<RemoteParticipant {self.user_id}{name} {self.state}>"

    def audio(
        self, sample_rate: int = 16_000, channels: int = 1, *, max_queued_ms: int = 2_000
    ) -> AudioStream:
        """This participant's audio as 16-bit PCM at `sample_rate` and `channels` (1 or 2).

        Frames queue for this reader up to `max_queued_ms`; beyond, the oldest are dropped
        (`stream.dropped`). Frames start from the moment of the call. The stream ends when the
        participant leaves or the agent leaves the meeting.
        """
        return self._audio(sample_rate, channels, max_queued_ms)

    def video(self, *, max_queued_frames: int = 2) -> VideoStream:
        """This participant's decoded video frames (`av.VideoFrame`), at most
        `max_queued_frames` queued for this reader (the oldest dropped)."""
        return self._video(max_queued_frames)


class RemoteTrack(MediaSource):
    """One track of a participant's connection, from `TrackAdded` until it ends (the connection
    closed or was replaced). A reader that wants each track apart (a file per track) reads
    these; most bots read the participant instead."""

    def __init__(self, participant: RemoteParticipant, kind: TrackKind, session_id: str) -> None:
        super().__init__()
        self.participant = participant
        self.kind = kind
        self.session_id = session_id

    def __repr__(self) -> str:
        return f"<RemoteTrack {self.kind} of {self.participant.user_id}/{self.session_id}>"

    def audio(
        self, sample_rate: int = 16_000, channels: int = 1, *, max_queued_ms: int = 2_000
    ) -> AudioStream:
        """This audio track as 16-bit PCM, as `RemoteParticipant.audio`."""
        if self.kind != "audio":
            raise ValueError("not an audio track")
        return self._audio(sample_rate, channels, max_queued_ms)

    def video(self, *, max_queued_frames: int = 2) -> VideoStream:
        """This video track's frames, as `RemoteParticipant.video`."""
        if self.kind != "video":
            raise ValueError("not a video track")
        return self._video(max_queued_frames)

    def frames(self, *, max_queued: int = 100) -> FrameStream:
        """This track's frames as aiortc decoded them (`MediaFrame`), at most `max_queued`
        queued for this reader (the oldest dropped)."""
        stream = FrameStream(self, max(1, max_queued))
        self._subscribe(self.kind, stream._feed)
        return stream
