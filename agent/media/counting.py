"""Receiving without decoding, for load runs.

aiortc decodes every received frame in a thread per track and hands each decoded frame to the event
loop (one cross-thread wakeup per frame). A load-test peer only needs to know that RTP arrived,
which getStats already counts before decoding. `skip_decoding()` swaps aiortc's decoder worker for
one that discards encoded frames, process-wide: only load worker processes call it.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

import aiortc.rtcrtpreceiver as _receiver

_decoder_worker = _receiver.decoder_worker


def _discarding_worker(
    loop: asyncio.AbstractEventLoop,
    input_q: queue.Queue[Any],
    output_q: asyncio.Queue[Any],
    decode_error: threading.Event,
) -> None:
    while input_q.get() is not None:
        pass
    # as aiortc's worker does at the end: tell the track it has ended
    asyncio.run_coroutine_threadsafe(output_q.put(None), loop)


def skip_decoding(enabled: bool = True) -> None:
    """Receivers created from now on count RTP (in getStats) but decode nothing."""
    _receiver.decoder_worker = _discarding_worker if enabled else _decoder_worker
