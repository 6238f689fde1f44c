"""What a meeting tells its bot: participants coming and going, their tracks, connections, the end.

Plain frozen dataclasses; `Meeting.events()` yields them in the order they happened. Match on the
type (`match event: case ParticipantJoined(participant=p): ...`).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.meeting.remote import RemoteParticipant, RemoteTrack, TrackKind


@dataclass(frozen=True)
class ParticipantJoined:
    """A remote participant opened a connection with the agent (its first one)."""

    participant: RemoteParticipant


@dataclass(frozen=True)
class ParticipantLeft:
    """The participant's last connection closed; `reason` says why (e.g. "remote left")."""

    participant: RemoteParticipant
    reason: str


@dataclass(frozen=True)
class TrackAdded:
    """The participant's audio or video arrived: `participant.audio()` / `.video()` now flow;
    `track` reads this one track alone."""

    participant: RemoteParticipant
    kind: TrackKind
    track: RemoteTrack


@dataclass(frozen=True)
class ConnectionStateChanged:
    """The participant's connection changed state: new, negotiating, connected, disconnected,
    failed or closed (the states of `agent.peer.states.PeerState`)."""

    participant: RemoteParticipant
    state: str


@dataclass(frozen=True)
class ConnectionQuality:
    """The connection's figures from getStats, every `quality_interval` while it is connected."""

    participant: RemoteParticipant
    rtt_ms: float | None  # round-trip time, from RTCP; None until measured
    packets_lost: int  # inbound RTP packets lost, since the connection started
    packets_received: int  # inbound RTP packets received, since the connection started


@dataclass(frozen=True)
class MeetingEnded:
    """The agent is out of the meeting: it ended, this identity was removed, or `leave()` was
    called. The last event; `events()` stops after it. `removed`: this identity was taken out
    of the meeting (it can no longer read it), rather than the meeting ending or the bot leaving."""

    reason: str
    removed: bool = False


Event = (
    ParticipantJoined
    | ParticipantLeft
    | TrackAdded
    | ConnectionStateChanged
    | ConnectionQuality
    | MeetingEnded
)
