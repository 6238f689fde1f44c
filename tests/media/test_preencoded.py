"""Pre-encoded audio over a real aiortc connection, decoded (a 440 Hz tone) and merely counted."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from agent.media.preencoded import FrameClock, PreencodedAudio
from agent.peer.ice import restrict_host_addresses
from agent.peer.receiving import count_only
from tests.support.waiting import poll_until


@contextlib.asynccontextmanager
async def tone_call(
    *, counting: bool = False
) -> AsyncIterator[tuple[RTCPeerConnection, asyncio.Queue[MediaStreamTrack], RTCPeerConnection]]:
    """A pre-encoded tone over a loopback connection: (receiving pc, its tracks, sending pc)."""
    restrict_host_addresses(["127.0.0.1"])
    tone = PreencodedAudio("tone")
    sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if counting:
        count_only(receiver)
    sender.addTrack(tone.track())
    got: asyncio.Queue[MediaStreamTrack] = asyncio.Queue()
    receiver.on("track", got.put_nowait)
    try:
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        yield receiver, got, sender
    finally:
        await sender.close()
        await receiver.close()
        tone.stop()
        restrict_host_addresses(None)


async def test_preencoded_tone_arrives_as_a_tone() -> None:
    async with tone_call() as (_, got, _), asyncio.timeout(15):
        track = await got.get()
        samples = []
        while sum(len(s) for s in samples) < 48_000:  # one second of decoded audio
            frame = await track.recv()
            samples.append(frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0])
    pcm = np.concatenate(samples)[-24_000:].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(pcm))
    peak_hz = np.argmax(spectrum) * 48_000 / len(pcm)
    assert abs(peak_hz - 440) < 5
    assert np.sqrt(np.mean(pcm**2)) > 1000  # a tone, not silence


async def _stats_after(pc: RTCPeerConnection, packets: int) -> Any:
    stats = await pc.getStats()
    got = sum(s.packetsReceived for s in stats.values() if s.type == "inbound-rtp")
    return stats if got >= packets else None


async def _enough_rtp(pc: RTCPeerConnection) -> bool:
    stats = await pc.getStats()
    return sum(s.packetsReceived for s in stats.values() if s.type == "inbound-rtp") >= 50


async def test_a_counting_connection_counts_rtp_with_no_decoder_thread() -> None:
    async with tone_call(counting=True) as (receiver, got, _), asyncio.timeout(15):
        track = await got.get()
        await poll_until(lambda: _enough_rtp(receiver))  # one second of 20 ms packets
        # a plain receiver would have one (the sender's transceiver is send-only)
        assert not [t for t in threading.enumerate() if t.name == "audio-decoder"]
        assert track._queue.empty()  # type: ignore[attr-defined]  # nothing decoded
        await receiver.close()
        with pytest.raises(MediaStreamError):  # the track ends with its receiver, like aiortc's
            while True:
                await track.recv()


async def test_counted_rtp_skips_the_receivers_task_and_keeps_its_statistics() -> None:
    """Once connected, a counting receiver's audio is counted as it comes off the socket; what
    getStats and the RTCP receiver reports say is what aiortc's own path would say."""
    async with tone_call(counting=True) as (receiver, got, sender), asyncio.timeout(15):
        await got.get()
        rtp_receiver = receiver.getTransceivers()[0].receiver
        handled = 0
        handle = rtp_receiver._handle_rtp_packet

        async def counting_calls(packet: Any, arrival_time_ms: int) -> None:
            nonlocal handled
            handled += 1
            await handle(packet, arrival_time_ms)

        rtp_receiver._handle_rtp_packet = counting_calls  # type: ignore[method-assign]
        stats = await poll_until(lambda: _stats_after(receiver, 100))
        inbound = next(s for s in stats.values() if s.type == "inbound-rtp")
        transport = next(s for s in stats.values() if s.type == "transport")
        assert inbound.packetsLost == 0
        assert 0 <= inbound.jitter < 48 * 20  # under a frame time, in 48 kHz units
        assert transport.packetsReceived >= inbound.packetsReceived >= 100
        assert handled <= 1  # aiortc's per-packet path no more (its first packets went there)
        assert rtp_receiver.getSynchronizationSources()

        async def round_trip_measured() -> bool:
            remote = (await sender.getStats()).values()
            return any(s.type == "remote-inbound-rtp" and s.roundTripTime for s in remote)

        await poll_until(round_trip_measured)  # the sender read our receiver reports


async def test_tracks_of_one_source_share_one_frame_clock() -> None:
    """Twenty tracks send each frame in the same turn of the loop: one timer per frame time for
    all of them, frames paced in real time, each track's timestamps its own."""
    tone = PreencodedAudio("tone")
    tracks = [tone.track() for _ in range(20)]
    loop = asyncio.get_running_loop()
    timers = 0
    real_call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal timers
        timers += 1
        return real_call_at(when, callback, *args, **kwargs)

    async def pull(track: MediaStreamTrack, frames: int) -> list[int]:
        return [(await track.recv()).pts for _ in range(frames)]

    loop.call_at = counting_call_at  # type: ignore[method-assign]  # counts, then calls the real one
    try:
        started = time.monotonic()
        async with asyncio.timeout(10):
            got = await asyncio.gather(*(pull(t, 26) for t in tracks))
        elapsed = time.monotonic() - started
    finally:
        loop.call_at = real_call_at  # type: ignore[method-assign]
        tone.stop()
    assert all(pts == [960 * k for k in range(26)] for pts in got)
    assert 0.45 <= elapsed < 1.5  # 25 frame times of 20 ms after the first frame
    # one timer per frame time for all twenty (a timer per track would be 500), plus the timeout's
    assert timers <= 27


async def test_a_cancelled_wait_on_the_frame_clock_leaves_the_others_waiting() -> None:
    clock = FrameClock(0.05)
    tick = clock.next_tick() + 2
    first = asyncio.create_task(clock.wait(tick))
    second = asyncio.create_task(clock.wait(tick))
    await asyncio.sleep(0)
    first.cancel()
    async with asyncio.timeout(5):
        await second  # still released at the tick's time
    assert first.cancelled()
    await clock.wait(tick)  # a tick in the past: no wait
