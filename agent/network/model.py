"""The per-packet decisions of one direction of a link: lost or not, and when it leaves.

Pure and seedable: the relay process runs it on every packet, the unit tests run it on millions
without a network. The bandwidth cap is not here: the kernel's TBF qdisc does it after the relay.
"""

from __future__ import annotations

import random

from agent.network.profiles import Impairment


def lane_random(seed: int | None, lane: str) -> random.Random:
    """The random stream of one direction of a link (`lane`: "a_to_b" or "b_to_a"). With a seed,
    the same packets meet the same fate run after run, and a test can replay the draws."""
    return random.Random(None if seed is None else f"{seed}/{lane}")


class GilbertLoss:
    """Losses of the Gilbert model (see `Impairment.burst`): a two-state Markov chain stepped once
    per packet, which loses every packet in the bad state and none in the good one.

    Starts in the good state; the chain forgets its start within a few bursts.
    """

    def __init__(self, impairment: Impairment, rng: random.Random) -> None:
        self._p, self._r = impairment.gilbert
        self._random = rng.random
        self._bad = False

    def lost(self) -> bool:
        """Step the chain for the next packet; True if that packet is lost."""
        if self._p == 0:
            return False
        if self._bad:
            self._bad = self._random() >= self._r
        else:
            self._bad = self._random() < self._p
        return self._bad


class LaneModel:
    """One direction's impairment, packet by packet: `admit(now)` loses a packet (None) or gives
    the monotonic time at which it leaves."""

    def __init__(self, impairment: Impairment, rng: random.Random, after: float = 0.0) -> None:
        """`after`: with `in_order`, no packet leaves before this time (the last one's release
        under the previous impairment, so that a change of profile keeps the order too)."""
        self.impairment = impairment
        self._loss = GilbertLoss(impairment, rng)
        self._delay = impairment.delay_ms / 1000
        self._jitter = impairment.jitter_ms / 1000
        self._gauss = rng.gauss
        self._in_order = impairment.in_order
        self.last_release = after

    def admit(self, now: float) -> float | None:
        """The release time of a packet that arrived at `now`, or None if the link loses it."""
        if self._loss.lost():
            return None
        delay = self._delay
        if self._jitter:
            delay = max(0.0, self._gauss(delay, self._jitter))
        release = now + delay
        if self._in_order and release < self.last_release:
            release = self.last_release
        self.last_release = max(release, self.last_release)
        return release
