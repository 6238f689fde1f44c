"""connvo-agent: a headless WebRTC participant for Connvo meetings.

The public Python API (docs/api.md):

    import agent

    async with agent.join(url, token, meeting_id) as meeting:
        async for event in meeting.events():
            ...

Names are imported on first use, so `import agent` (and the CLI's start-up) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from agent.config import AgentSettings, ConfigError
    from agent.convex import AuthError, ConvexError, TransientError
    from agent.meeting import (
        AudioFrame,
        AudioOutput,
        AudioStream,
        ConnectionQuality,
        ConnectionStateChanged,
        Event,
        FrameStream,
        JoinRefused,
        MediaFrame,
        Meeting,
        MeetingEnded,
        MeetingEndedError,
        ParticipantJoined,
        ParticipantLeft,
        RemoteParticipant,
        RemoteTrack,
        TrackAdded,
        VideoFrame,
        VideoOutput,
        VideoStream,
        join,
    )

__all__ = [
    "AgentSettings",
    "AudioFrame",
    "AudioOutput",
    "AudioStream",
    "AuthError",
    "ConfigError",
    "ConnectionQuality",
    "ConnectionStateChanged",
    "ConvexError",
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
    "TransientError",
    "VideoFrame",
    "VideoOutput",
    "VideoStream",
    "join",
]

# the modules that define the public names other than agent.meeting's
_ELSEWHERE = {
    "AgentSettings": "agent.config",
    "ConfigError": "agent.config",
    "AuthError": "agent.convex",
    "ConvexError": "agent.convex",
    "TransientError": "agent.convex",
}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(_ELSEWHERE.get(name, "agent.meeting")), name)
    globals()[name] = value
    return value
