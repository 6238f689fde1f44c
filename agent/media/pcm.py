"""The agent's audio format (48 kHz, 20 ms frames) and the PCM loops it generates.

Shared by the generated tracks (agent.media.sources) and the pre-encoded audio
(agent.media.preencoded), which both build on it.
"""

from __future__ import annotations

import fractions
from typing import Any

import numpy as np

SAMPLE_RATE = 48_000
AUDIO_PTIME = 0.020
SAMPLES_PER_FRAME = int(SAMPLE_RATE * AUDIO_PTIME)  # 960
AUDIO_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
TONE_HZ = 440.0
TONE_AMPLITUDE = 0.25  # about -12 dBFS: audible without clipping after mixing


def tone_pcm(hz: float = TONE_HZ) -> np.ndarray[Any, np.dtype[np.int16]]:
    """One second of a sine: a whole number of 440 Hz periods, so the loop is seamless."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    return (np.sin(2 * np.pi * hz * t) * TONE_AMPLITUDE * 32767).astype(np.int16)


def silence_pcm() -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.zeros(SAMPLES_PER_FRAME, dtype=np.int16)
