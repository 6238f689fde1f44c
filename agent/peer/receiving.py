"""Receivers that count RTP without decoding it, chosen per connection.

Many participants only need to know that media arrived (the bot's default `--receive count`,
load-test peers), which getStats counts before any decoding. `count_only(pc)` makes the receivers
`pc` creates from then on count packets and stop there: no frame reassembly, no decoder thread, and
once the connection is up, audio RTP counted straight from the socket's callback (the patches
`counting_receivers` and `counting_path`, in `agent.patches.receiver`, which says how). Their
tracks yield nothing and end when the receiver stops, as aiortc's do; RTCP flows as usual.

Without `counting_receivers`, the receivers decode as aiortc's do, and `count_only` reads and
discards every frame of the connection's tracks instead (aiortc queues decoded frames without
bound for a track nobody reads). The counts are the same; the cost is the decoding.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from agent.patches import receiver as _patch

_draining: set[asyncio.Task[None]] = set()


def count_only(pc: RTCPeerConnection) -> None:
    """Receivers `pc` creates from now on count RTP (in getStats) but neither decode nor queue."""
    if _patch.count_only(pc):
        return

    @pc.on("track")
    def _drain_track(track: MediaStreamTrack) -> None:
        task = asyncio.ensure_future(_discard_frames(track))
        _draining.add(task)
        task.add_done_callback(_draining.discard)


async def _discard_frames(track: MediaStreamTrack) -> None:
    """Read a track to its end, keeping nothing (it ends when its receiver stops)."""
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
