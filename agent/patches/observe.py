"""Observing aiortc from outside, for measurement: a receiver's own jitter-buffer delay.

aiortc's getStats has no jitter-buffer figures (no `jitterBufferDelay`), and its jitter buffer is
private (`RTCRtpReceiver.__jitter_buffer`). `watch_jitter_buffer` wraps that one object's `add`
to date each frame's first packet in and the frame out; it changes nothing the receiver does.
Per object, not installed: whoever measures calls it (agent.media.marks.JitterBufferWatch, for
tests and benchmarks). Checked against aiortc 1.16.0, with or without the patch
`audio_jitter_buffer` (whose buffer has the same `add`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

KEEP_PENDING = 64  # first-packet times kept for frames not released yet (lost, dropped)


def watch_jitter_buffer(
    receiver: Any,
    on_release: Callable[[float, float], None],
    *,
    clock: Callable[[], float] = time.time,
) -> bool:
    """Call `on_release(released_at, delay_s)` for each frame `receiver`'s jitter buffer releases,
    `delay_s` from its first packet's arrival, both by `clock`. False where aiortc's internals
    moved: nothing is watched."""
    buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
    add = getattr(buffer, "add", None)
    if buffer is None or not callable(add):
        return False
    arrived: dict[int, float] = {}  # RTP timestamp -> first packet's arrival

    def timed_add(packet: Any) -> Any:
        now = clock()
        arrived.setdefault(packet.timestamp, now)
        result = add(packet)
        released = result[1]
        if released is not None:
            since = arrived.pop(released.timestamp, None)
            if since is not None:
                on_release(now, now - since)
        while len(arrived) > KEEP_PENDING:
            del arrived[next(iter(arrived))]
        return result

    buffer.add = timed_add
    return True
