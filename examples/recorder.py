"""Recorder: a 16 kHz mono WAV file per participant, into an existing directory; pauses in their
audio stay in the file. `CONNVO_URL=... CONNVO_TOKEN=... CONNVO_MEETING=... python recorder.py out/`
"""

from __future__ import annotations

import asyncio
import sys
import wave
from pathlib import Path
from typing import Any

import agent

RATE = 16_000


async def record(participant: agent.RemoteParticipant, path: Path) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setparams((1, 2, RATE, 0, "NONE", "not compressed"))
        next_ms = None  # where the next frame belongs, by capture time
        async for frame in participant.audio(sample_rate=RATE):
            if next_ms is not None and frame.capture_time_ms - next_ms > 100:  # a gap: fill it
                wav.writeframes(bytes(2 * round((frame.capture_time_ms - next_ms) * RATE / 1000)))
            wav.writeframes(frame.pcm)
            next_ms = frame.capture_time_ms + 1000 * frame.samples / RATE


async def main(out: Path, **options: Any) -> None:
    """Run until the meeting ends; `options` are join()'s (settings keys)."""
    async with agent.join(**options) as meeting, asyncio.TaskGroup() as tasks:
        async for event in meeting.events():
            if isinstance(event, agent.ParticipantJoined):
                p = event.participant
                tasks.create_task(record(p, out / f"{p.user_id}-{p.session_id}.wav"))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
