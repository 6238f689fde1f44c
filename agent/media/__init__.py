"""Local media sources (tone, silence, test pattern, looped files) and counters for remote media."""

from agent.media.sinks import FrameCounter, ReceivedMedia
from agent.media.sources import (
    MediaSources,
    MediaSpecError,
    open_audio_source,
    open_video_source,
)

__all__ = [
    "FrameCounter",
    "MediaSources",
    "MediaSpecError",
    "ReceivedMedia",
    "open_audio_source",
    "open_video_source",
]
