"""CaptureClock: epoch capture times of remote frames from their RTP timestamps."""

from __future__ import annotations

from fractions import Fraction

import av
import pytest

from agent.meeting.remote import CaptureClock


def audio_frame(pts: int) -> av.AudioFrame:
    frame = av.AudioFrame(format="s16", layout="mono", samples=960)
    frame.sample_rate = 48_000
    frame.pts = pts
    frame.time_base = Fraction(1, 48_000)
    return frame


def test_frames_are_placed_by_their_timestamps_not_their_arrival() -> None:
    clock = CaptureClock()
    first = clock.stamp(audio_frame(1_000), now=100.02)
    assert first == pytest.approx(100_000.0)  # arrival less the frame's 20 ms
    # a frame that waited 300 ms in a jitter buffer keeps its place
    assert clock.stamp(audio_frame(1_960), now=100.34) == pytest.approx(100_020.0)
    # a 2 s pause in the sender's stream stays a 2 s gap
    assert clock.stamp(audio_frame(1_000 + 48_000 * 2), now=102.03) == pytest.approx(102_000.0)


def test_timestamps_wrap_at_32_bits() -> None:
    clock = CaptureClock()
    clock.stamp(audio_frame(2**32 - 960), now=50.02)
    assert clock.stamp(audio_frame(0), now=50.04) == pytest.approx(50_020.0)


def test_a_restarted_stream_is_anchored_again() -> None:
    clock = CaptureClock()
    clock.stamp(audio_frame(5_000_000), now=10.02)
    # new timestamps far from the old ones: placed by arrival again, then followed
    assert clock.stamp(audio_frame(0), now=30.02) == pytest.approx(30_000.0)
    assert clock.stamp(audio_frame(960), now=30.05) == pytest.approx(30_020.0)
