"""The public Python API: join a meeting, hear each participant, speak and show video into it.

    async with agent.join(url, token, meeting_id) as meeting:
        async for event in meeting.events():
            ...

`agent` re-exports every name here; docs/api.md describes them.
"""

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
from agent.meeting.meeting import Meeting, join
from agent.meeting.output import AudioOutput, VideoOutput
from agent.meeting.remote import (
    AudioFrame,
    AudioStream,
    FrameStream,
    MediaFrame,
    RemoteParticipant,
    RemoteTrack,
    VideoFrame,
    VideoStream,
)

__all__ = [
    "AudioFrame",
    "AudioOutput",
    "AudioStream",
    "ConnectionQuality",
    "ConnectionStateChanged",
    "Event",
    "FrameStream",
    "JoinRefused",
    "MediaFrame",
    "Meeting",
    "MeetingEnded",
    "MeetingEndedError",
    "ParticipantJoined",
    "ParticipantLeft",
    "RemoteParticipant",
    "RemoteTrack",
    "TrackAdded",
    "VideoFrame",
    "VideoOutput",
    "VideoStream",
    "join",
]
