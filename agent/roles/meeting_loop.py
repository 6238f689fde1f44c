"""How every role runs: join, hand each event of the meeting to the role, leave.

The roles are built on the public API (agent.meeting) alone; this is the loop they share.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agent.meeting import Event, Meeting, MeetingEnded, MeetingEndedError

EventHandler = Callable[[Event, asyncio.TaskGroup], None]


async def run_meeting(meeting: Meeting, stop: asyncio.Event, on_event: EventHandler) -> None:
    """Join `meeting` and give every event to `on_event` (with a TaskGroup for the work it
    starts, awaited before this returns) until the meeting ends or `stop` is set; then leave.

    Raises MeetingEndedError if this identity was removed from the meeting (`connvo-agent run`
    exits 3), and what `Meeting.join` raises.
    """
    await meeting.join()
    removed: MeetingEnded | None = None
    try:
        async with asyncio.TaskGroup() as tasks:
            leaver = tasks.create_task(_leave_when_set(stop, meeting))
            async for event in meeting.events():
                on_event(event, tasks)
                if isinstance(event, MeetingEnded) and event.removed:
                    removed = event
            leaver.cancel()
    finally:
        await meeting.leave()
    if removed is not None:
        raise MeetingEndedError(removed.reason)


async def _leave_when_set(stop: asyncio.Event, meeting: Meeting) -> None:
    await stop.wait()
    await meeting.leave()
