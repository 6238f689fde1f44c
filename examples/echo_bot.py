"""Echo bot: each participant hears what they say, back from the bot.

    CONNVO_URL=https://... CONNVO_TOKEN=... CONNVO_MEETING=... python examples/echo_bot.py

Every participant's audio goes into the one output everybody hears: meant for one person
testing their microphone; with several, their echoes take turns.
"""

from __future__ import annotations

import asyncio
from typing import Any

import agent


async def echo(meeting: agent.Meeting, participant: agent.RemoteParticipant) -> None:
    async for frame in participant.audio(sample_rate=48_000):
        await meeting.audio_out.play_pcm(frame.pcm, frame.sample_rate)


async def main(**options: Any) -> None:
    """Run until the meeting ends; `options` are join()'s (settings keys)."""
    async with agent.join(**options) as meeting, asyncio.TaskGroup() as tasks:
        async for event in meeting.events():
            if isinstance(event, agent.ParticipantJoined):
                tasks.create_task(echo(meeting, event.participant))


if __name__ == "__main__":
    asyncio.run(main())
