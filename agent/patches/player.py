"""aiortc's MediaPlayer: decode only the stream that is played.

A MediaPlayer decodes every audio and video stream it found in the file and queues the frames
for each of its tracks whether anyone reads them or not. The agent plays one kind per player
(`--audio FILE`, `--video FILE`), so the other kind's frames would pile up, decoded, without
bound. MediaPlayer has no option to pick streams; `keep_only(player, kind)` (patch
`one_stream_player`) removes the other stream from the player's private stream list and track
before the player starts, so it is neither decoded nor queued.
"""

from __future__ import annotations

import logging

from aiortc.contrib.media import MediaPlayer

from agent.patches._patch import Patch

log = logging.getLogger(__name__)

_warned = False


def keep_only(player: MediaPlayer, kind: str) -> bool:
    """Make a player that has not started decode and queue only its `kind` stream.

    False when nothing was changed (the patch is not installed, or MediaPlayer keeps its streams
    elsewhere in this version): the other stream is then decoded too, and its frames must be
    discarded by the caller.
    """
    global _warned
    if not ONE_STREAM_PLAYER.installed:
        return False
    other = "video" if kind == "audio" else "audio"
    streams = getattr(player, "_MediaPlayer__streams", None)
    if not isinstance(streams, list) or not hasattr(player, f"_MediaPlayer__{other}"):
        if not _warned:
            _warned = True
            log.warning("aiortc's MediaPlayer changed: files are decoded whole (patch skipped)")
        return False
    streams[:] = [s for s in streams if s.type == kind]
    setattr(player, f"_MediaPlayer__{other}", None)
    return True


def _apply() -> str | None:
    return None  # per player, checked in keep_only()


def _restore() -> None:
    pass


ONE_STREAM_PLAYER = Patch(
    name="one_stream_player",
    replaces=("aiortc.contrib.media.MediaPlayer.__streams, .__audio, .__video (per player)",),
    why=(
        "An unread track of a MediaPlayer buffers decoded frames without bound: a looped file "
        "with audio and video played as audio only would grow by the whole video, decoded."
    ),
    fallback=(
        "the player decodes both streams; the agent discards the other stream's frames as it "
        "plays (more CPU, bounded memory)."
    ),
    libraries=("aiortc", "av"),
    apply=_apply,
    restore=_restore,
)
