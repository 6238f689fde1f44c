"""Audio encoded once, sent by any number of peer connections without encoding again.

aiortc's sender encodes every frame of every connection (in a thread pool hop per frame). A bot
that plays the same tone to fifty people would run fifty Opus encoders for identical output. A
`PreencodedAudio` encodes its loop once; each `track()` replays those Opus packets, paced in real
time, and aiortc's sender only packetizes them.
"""

from __future__ import annotations

import fractions
import weakref
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.packet import Packet

from agent.media.sources import (
    AUDIO_TIME_BASE,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    Pacer,
    silence_pcm,
    tone_pcm,
)

OPUS_BITRATE = 32_000


def encode_opus_loop(pcm: np.ndarray[Any, np.dtype[np.int16]]) -> list[bytes]:
    """Opus packets (20 ms each) of a mono s16 48 kHz loop, encoded as stereo like aiortc does."""
    codec = av.CodecContext.create("libopus", "w")
    codec.bit_rate = OPUS_BITRATE
    codec.sample_rate = SAMPLE_RATE
    codec.layout = "stereo"
    codec.format = "s16"
    codec.time_base = fractions.Fraction(1, SAMPLE_RATE)
    stereo = np.repeat(pcm, 2)
    payloads: list[bytes] = []
    for start in range(0, len(pcm), SAMPLES_PER_FRAME):
        chunk = stereo[2 * start : 2 * (start + SAMPLES_PER_FRAME)]
        frame = av.AudioFrame(format="s16", layout="stereo", samples=SAMPLES_PER_FRAME)
        frame.planes[0].update(chunk.tobytes())
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start
        frame.time_base = AUDIO_TIME_BASE
        payloads.extend(bytes(p) for p in codec.encode(frame))
    payloads.extend(bytes(p) for p in codec.encode(None))
    # The encoder's look-ahead adds a packet at the end; the loop is exactly len(pcm) long.
    return payloads[: len(pcm) // SAMPLES_PER_FRAME]


class PreencodedAudio:
    """`tone` or `silence`, encoded once; `track()` gives a new sender-ready track each call."""

    def __init__(self, spec: str) -> None:
        if spec == "tone":
            pcm = tone_pcm()
        elif spec == "silence":
            pcm = silence_pcm()
        else:
            raise ValueError(f"pre-encoded audio is tone or silence, not {spec!r}")
        self.spec = spec
        self.payloads = encode_opus_loop(pcm)
        self._tracks: weakref.WeakSet[PreencodedAudioTrack] = weakref.WeakSet()

    def track(self) -> MediaStreamTrack:
        track = PreencodedAudioTrack(self.payloads)
        self._tracks.add(track)
        return track

    def stop(self) -> None:
        """End every track handed out (their senders then stop)."""
        for track in list(self._tracks):
            track.stop()


class PreencodedAudioTrack(MediaStreamTrack):
    """Yields `av.Packet`s (Opus, 20 ms) from a shared list, paced in real time."""

    kind = "audio"

    def __init__(self, payloads: list[bytes]) -> None:
        super().__init__()
        self._payloads = payloads
        self._pacer = Pacer(SAMPLES_PER_FRAME, SAMPLE_RATE)

    async def recv(self) -> Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        pts = await self._pacer.next_pts()
        packet = Packet(self._payloads[(pts // SAMPLES_PER_FRAME) % len(self._payloads)])
        packet.pts = pts
        packet.time_base = AUDIO_TIME_BASE
        return packet
