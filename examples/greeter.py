"""Greeter: plays a WAV file to each participant once their connection is up.

CONNVO_URL=... CONNVO_TOKEN=... CONNVO_MEETING=... python examples/greeter.py hello.wav
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import agent


async def main(greeting: Path, **options: Any) -> None:
    """Run until the meeting ends; `options` are join()'s (settings keys)."""
    greeted: set[str] = set()
    async with agent.join(**options) as meeting:
        async for event in meeting.events():
            match event:
                case agent.ConnectionStateChanged(participant=p, state="connected"):
                    if p.user_id not in greeted:
                        greeted.add(p.user_id)
                        print(f"greeting {p.display_name or p.user_id}")
                        await meeting.audio_out.play_file(greeting)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
