"""Receivers that count RTP without decoding it, chosen per connection.

aiortc starts a decoder thread per received track, queues every reassembled frame to it, and the
thread hands each decoded frame back to the event loop. With a hundred tracks that is thousands
of thread wake-ups a second, each taking the GIL from the event loop; and a participant that
never reads a track still pays for decoding it (and the decoded frames pile up in the track).
Many participants only need to know that media arrived, which getStats counts before any of that.

`count_only(pc)` makes the receivers `pc` creates from then on count packets and stop there: no
frame reassembly (so no keyframe requests either), no decoder thread; their tracks yield nothing
and end when the receiver stops, as aiortc's do. RTCP (receiver reports, so RTT and loss) flows
as usual. Other connections are untouched.
"""

from __future__ import annotations

import asyncio
import threading
import types
from collections.abc import Callable
from typing import Any

import aiortc.rtcrtpreceiver as _receiver
from aiortc import RTCPeerConnection, RTCRtpTransceiver


class _DroppingQueue:
    """Stands in for a receiver's decoder queue: frames are dropped, None ends the track."""

    def __init__(self) -> None:
        self.end_track: Callable[[], None] = lambda: None

    def put(self, item: Any) -> None:
        if item is None:  # the receiver stops its decoder: end the track, as aiortc's worker does
            self.end_track()


class _NoJitterBuffer:
    """Stands in for a counting receiver's jitter buffer: no frame is ever reassembled."""

    def add(self, packet: Any) -> tuple[bool, None]:
        return False, None  # no picture loss to report, no frame to decode


class _NoDecoderThread:
    """Stands in for a counting receiver's decoder thread; starting it links queue and track."""

    def __init__(self, decoder_queue: _DroppingQueue, track_queue: asyncio.Queue[Any]) -> None:
        self._decoder_queue = decoder_queue
        self._track_queue = track_queue

    def start(self) -> None:
        # the receiver stops its decoder from the event loop's thread
        self._decoder_queue.end_track = lambda: self._track_queue.put_nowait(None)

    def join(self, timeout: float | None = None) -> None:
        pass


def _decoder_thread(target: Any, name: str, args: tuple[Any, ...]) -> Any:
    """aiortc's receivers create their decoder thread here: a real one unless counting."""
    _loop, decoder_queue, track_queue, _error = args
    if isinstance(decoder_queue, _DroppingQueue):
        return _NoDecoderThread(decoder_queue, track_queue)
    return threading.Thread(target=target, name=name, args=args)


# aiortc's receiver module looks `threading.Thread` up when a receiver starts; `threading.Event`
# (its only other use of the module) stays the real one.
_receiver.threading = types.SimpleNamespace(  # type: ignore[attr-defined,assignment]
    Thread=_decoder_thread, Event=threading.Event
)


def count_only(pc: RTCPeerConnection) -> None:
    """Receivers `pc` creates from now on count RTP (in getStats) but neither decode nor queue."""
    create = pc._RTCPeerConnection__createTransceiver  # type: ignore[attr-defined]

    def create_counting(*args: Any, **kwargs: Any) -> RTCRtpTransceiver:
        transceiver: RTCRtpTransceiver = create(*args, **kwargs)
        # in time: aiortc starts a receiver only once ICE and DTLS are up
        receiver: Any = transceiver.receiver
        receiver._RTCRtpReceiver__decoder_queue = _DroppingQueue()
        # nothing will decode: reassembling frames (and asking for keyframes) is wasted work
        receiver._RTCRtpReceiver__jitter_buffer = _NoJitterBuffer()
        return transceiver

    # the name-mangled `self.__createTransceiver(...)` finds the instance attribute first
    pc._RTCPeerConnection__createTransceiver = create_counting  # type: ignore[attr-defined]
