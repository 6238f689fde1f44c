"""The public API (`agent.join`, Meeting, RemoteParticipant, outputs) against the dev backend, with
real aiortc remote peers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

import agent
from agent.media.sources import tone_track
from tests.agent.conftest import Meeting
from tests.examples.test_examples import SPEECH_RMS, Listener, rms
from tests.meeting.conftest import JoinFactory

TIMEOUT = 30


async def call_bot(meeting: Meeting, peer: Any) -> None:
    await peer.offer(meeting.users["bot"])
    await peer.connected.wait()


@contextlib.asynccontextmanager
async def alice_speaking(
    meeting: Meeting, join: JoinFactory
) -> AsyncIterator[tuple[Any, agent.RemoteParticipant]]:
    """The agent in the meeting, alice connected to it and sending a tone."""
    async with join() as m, meeting.peer("alice", video=False, audio_track=tone_track) as alice:
        async with asyncio.timeout(TIMEOUT):
            await call_bot(meeting, alice)
            p = await m.wait_for_participant(meeting.users["alice"])
        yield alice, p


async def test_events_follow_a_participant_from_joining_to_the_meeting_end(
    meeting: Meeting, join: JoinFactory
) -> None:
    async with join(quality_interval=0.2, discovery_interval=0.5) as m:
        seen: list[agent.Event] = []
        async with asyncio.timeout(TIMEOUT):
            async with meeting.peer("alice", video=False) as alice:
                await call_bot(meeting, alice)
                async for event in m.events():
                    seen.append(event)
                    if isinstance(event, agent.ConnectionQuality) and event.packets_received:
                        break
            async for event in m.events():  # alice closed her session; then the host ends
                seen.append(event)
                if isinstance(event, agent.ParticipantLeft):
                    await asyncio.to_thread(meeting.server.end_meeting, meeting.id, "bot")
        kinds = [type(e).__name__ for e in seen]
        joined = seen[0]
        assert isinstance(joined, agent.ParticipantJoined)
        assert joined.participant.user_id == meeting.users["alice"]
        assert joined.participant.display_name == "alice"
        states = [e.state for e in seen if isinstance(e, agent.ConnectionStateChanged)]
        assert states[:2] == ["negotiating", "connected"] and states[-1] == "closed"
        assert any(isinstance(e, agent.TrackAdded) and e.kind == "audio" for e in seen)
        quality = [e for e in seen if isinstance(e, agent.ConnectionQuality)]
        assert quality[-1].packets_received > 0 and quality[-1].packets_lost == 0
        assert kinds[-2:] == ["ParticipantLeft", "MeetingEnded"]
        assert seen[-1] == agent.MeetingEnded("meeting concluded")
        assert m.participants == {} and joined.participant.left.is_set()


async def test_audio_in_is_pcm_at_the_asked_format_with_capture_times(
    meeting: Meeting, join: JoinFactory
) -> None:
    async with alice_speaking(meeting, join) as (alice, p):
        async with asyncio.timeout(TIMEOUT):
            mono, stereo = p.audio(sample_rate=16_000), p.audio(sample_rate=24_000, channels=2)
            got = [f async for f in _take(mono, 50)]
            two = [f async for f in _take(stereo, 5)]
    now_ms = time.time() * 1000
    assert all(f.sample_rate == 16_000 and f.channels == 1 for f in got)
    assert all(len(f.pcm) == 2 * f.samples for f in got)
    assert all(len(f.pcm) == 4 * f.samples and f.channels == 2 for f in two)
    assert sum(f.samples for f in got[1:]) >= 49 * 300  # about 20 ms a frame
    # capture times: this machine's epoch ms, advancing by each frame's duration
    assert now_ms - 5_000 < got[0].capture_time_ms < now_ms
    steps = np.diff([f.capture_time_ms for f in got[1:]])
    assert np.all(np.abs(steps - 20) < 2), steps
    assert {f.session_id for f in got} == {alice.session_id}
    loud = np.frombuffer(b"".join(f.pcm for f in got[-10:]), dtype=np.int16)
    assert np.sqrt(np.mean(loud.astype(np.float64) ** 2)) > SPEECH_RMS


async def test_a_slow_reader_loses_its_oldest_frames_and_slows_nobody(
    meeting: Meeting, join: JoinFactory
) -> None:
    async with alice_speaking(meeting, join) as (_, p):
        async with asyncio.timeout(TIMEOUT):
            slow = p.audio(max_queued_ms=200)  # not read while the fast reader takes 1 s
            fast = [f async for f in _take(p.audio(), 50)]
            late = [f async for f in _take(slow, 1)]
    assert slow.dropped >= 30  # ~50 frames arrived, 10 kept
    steps = np.diff([f.capture_time_ms for f in fast[1:]])
    assert np.all(steps < 25), steps  # the fast reader lost nothing
    # what the slow reader gets next is recent: its oldest frames were the ones dropped
    assert late[0].capture_time_ms >= fast[-1].capture_time_ms - 250


async def test_audio_out_is_heard_by_everyone_and_clear_stops_it(
    meeting: Meeting, join: JoinFactory
) -> None:
    listeners = {name: Listener() for name in ("alice", "bob")}
    async with join() as m:
        async with (
            meeting.peer("alice", video=False, on_audio=listeners["alice"]) as alice,
            meeting.peer("bob", video=False, on_audio=listeners["bob"]) as bob,
        ):
            async with asyncio.timeout(TIMEOUT):
                await call_bot(meeting, alice)
                await call_bot(meeting, bob)
                pcm = _tone(seconds=8.0, rate=24_000, channels=2)
                await m.audio_out.play_pcm(pcm, sample_rate=24_000, channels=2)
                await listeners["alice"].heard.wait()
                await listeners["bob"].heard.wait()
                dropped = m.audio_out.clear()
                quiet = _QuietFrames(alice_listener := listeners["alice"])
                alice.on_audio = quiet
                await quiet.enough.wait()  # 25 quiet frames in a row: silence again
        assert dropped > 5.0  # most of the 8 s were still queued
        assert m.audio_out.cleared_seconds == dropped
        assert alice_listener.loud_frames > 0


async def test_play_pcm_waits_while_the_queue_is_full() -> None:
    out = agent.AudioOutput(max_queued_seconds=1.0)
    first = await out.recv()  # nothing queued: 20 ms of silence at 48 kHz mono
    assert (first.sample_rate, first.samples) == (48_000, 960)
    assert not np.frombuffer(bytes(first.planes[0]), dtype=np.int16)[:960].any()
    async with asyncio.timeout(TIMEOUT):
        playing = asyncio.create_task(out.play_pcm(_tone(2.0, 48_000, 1), 48_000))
        consumed = 0
        while not playing.done():
            frame = await out.recv()  # the connection's sender, pacing at real time
            consumed += 1
            assert rms(frame) > SPEECH_RMS
        # 2 s into a 1 s queue: it returned only once about 1 s had been played
        assert consumed >= 45
    assert out.queued_seconds <= 1.0
    with pytest.raises(ValueError, match="whole 16-bit samples"):
        await out.play_pcm(b"\0\0\0", 48_000, channels=2)


async def test_video_in_and_out(meeting: Meeting, join: JoinFactory) -> None:
    async with join(video_out=True) as m, meeting.peer("alice") as alice:
        red = av.VideoFrame.from_ndarray(np.full((120, 160, 3), (255, 0, 0), np.uint8), "rgb24")
        m.video_out.push_frame(red)
        async with asyncio.timeout(TIMEOUT):
            await call_bot(meeting, alice)
            p = await m.wait_for_participant()
            (frame,) = [f async for f in _take(p.video(), 1)]
            await alice.received.video.wait()  # the agent's video reached alice
    assert isinstance(frame.frame, av.VideoFrame) and frame.frame.width > 0
    assert frame.session_id == alice.session_id


async def test_a_listening_bot_sends_no_audio(meeting: Meeting, join: JoinFactory) -> None:
    async with join(audio_out=False) as m, meeting.peer("alice", video=False) as alice:
        async with asyncio.timeout(TIMEOUT):
            await call_bot(meeting, alice)
            p = await m.wait_for_participant()
            [heard] = [f async for f in _take(p.audio(), 1)]  # it still hears alice
        answer = next(s["data"]["sdp"] for s in alice.signals if s["data"].get("type") == "answer")
    assert "a=recvonly" in answer and "a=sendrecv" not in answer
    assert heard.samples > 0
    with pytest.raises(RuntimeError, match="audio_out=False"):
        m.audio_out.clear()


async def test_join_refusals_are_typed(
    meeting: Meeting, join: JoinFactory, devserver: Any, tmp_path: Path
) -> None:
    outsider = agent.join(devserver.url, devserver.token("mallory"), meeting.id, state_dir=tmp_path)
    with pytest.raises(agent.JoinRefused) as refused:
        await outsider.join()
    assert refused.value.reason == "not_a_participant"
    bad_token = agent.join(
        devserver.url, "not-a-token", meeting.id, max_retries=0, state_dir=tmp_path
    )
    with pytest.raises(agent.AuthError) as auth:
        await bad_token.join()
    assert "not-a-token" not in str(auth.value)
    await asyncio.to_thread(devserver.end_meeting, meeting.id, "bot")
    with pytest.raises(agent.JoinRefused) as ended:
        await join().join()
    assert ended.value.reason == "meeting_not_active"


async def test_leave_closes_the_own_session_and_ends_the_events(
    meeting: Meeting, join: JoinFactory
) -> None:
    m = join()
    await m.join()
    async with meeting.peer("alice", video=False) as alice:

        async def listed() -> bool:
            active = await alice.call(
                "meetings/webrtc/signaling/getActiveSessions", meetingId=meeting.id
            )
            return any(a["sessionId"] == m.session_id for a in active)

        async with asyncio.timeout(TIMEOUT):
            assert await listed()
            await m.leave()
            assert not await listed()
            events = [e async for e in m.events()]
    assert events == [agent.MeetingEnded("left")]
    with pytest.raises(agent.MeetingEndedError):
        await m.wait_for_participant()
    await m.leave()  # twice is harmless


async def test_a_cancelled_bot_still_leaves(meeting: Meeting, join: JoinFactory) -> None:
    m = join()
    inside = asyncio.Event()

    async def bot() -> None:
        async with m:
            inside.set()
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(bot())
    async with asyncio.timeout(TIMEOUT), meeting.peer("alice", video=False) as alice:
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        active = await alice.call(
            "meetings/webrtc/signaling/getActiveSessions", meetingId=meeting.id
        )
    assert m.session_id not in {a["sessionId"] for a in active}
    assert m.ended_because == "left"


async def _take(stream: Any, n: int) -> Any:
    count = 0
    async for item in stream:
        yield item
        count += 1
        if count == n:
            return


def _tone(seconds: float, rate: int, channels: int) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    mono = (np.sin(2 * np.pi * 440 * t) * 0.3 * 32767).astype(np.int16)
    return np.repeat(mono, channels).tobytes()


class _QuietFrames:
    def __init__(self, chained: Listener, needed: int = 25) -> None:
        self.enough = asyncio.Event()
        self._chained, self._needed, self._run = chained, needed, 0

    def __call__(self, frame: Any) -> None:
        self._chained(frame)
        self._run = self._run + 1 if rms(frame) < SPEECH_RMS / 10 else 0
        if self._run >= self._needed:
            self.enough.set()
