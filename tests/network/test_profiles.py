"""The profiles and the per-packet model, without a network: names, validation, and the loss and
delay statistics the relay will produce (seeded, so exact figures repeat)."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest

from agent.network import PROFILE_NAMES, PROFILES, Impairment, UnknownProfileError, parse_profile
from agent.network.model import GilbertLoss, LaneModel


def test_the_named_profiles_are_the_issues() -> None:
    assert PROFILE_NAMES == ("good", "wifi", "mobile", "bad")
    assert PROFILES["good"].a_to_b.is_perfect
    described = {name: profile.describe() for name, profile in PROFILES.items()}
    assert described == {
        "good": "no impairment",
        "wifi": "1 % loss, 30±10 ms",
        "mobile": "3 % loss, 80±30 ms, 1 Mbit/s",
        "bad": "10 % loss in bursts of 3, 150±50 ms, 500 kbit/s",
    }
    for profile in PROFILES.values():
        assert profile.a_to_b == profile.b_to_a


def test_parse_profile_names_the_choices_in_one_line() -> None:
    assert parse_profile(" Mobile ") is PROFILES["mobile"]
    with pytest.raises(UnknownProfileError) as caught:
        parse_profile("3g")
    message = str(caught.value)
    assert message == "unknown network profile '3g'; choose one of: good, wifi, mobile, bad"
    assert "\n" not in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"loss": 1.0}, "loss must be below 1"),
        ({"loss": -0.1}, "loss must be a finite number >= 0"),
        ({"delay_ms": float("nan")}, "delay_ms must be a finite number >= 0"),
        ({"burst": 0.5}, "burst must be >= 1 packet"),
        ({"loss": 0.9, "burst": 1}, "cannot come in bursts"),
        ({"rate_kbit": 0}, "rate_kbit must be a number > 0"),
    ],
)
def test_impossible_impairments_are_refused(fields: dict[str, float], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Impairment(**fields)  # type: ignore[arg-type]


def test_the_cap_holds_a_bucket_and_its_queue() -> None:
    bad = PROFILES["bad"].a_to_b
    assert bad.bucket_bytes == 2 * 1514  # 10 ms at 500 kbit/s is less than two frames
    assert bad.queue_bytes == 3028 + 12_500  # + 200 ms at 500 kbit/s
    fast = Impairment(rate_kbit=100_000)
    assert fast.bucket_bytes == 125_000  # 10 ms at 100 Mbit/s
    assert Impairment().queue_bytes == 0


def _losses(impairment: Impairment, n: int, seed: int = 7) -> list[bool]:
    model = GilbertLoss(impairment, random.Random(seed))
    return [model.lost() for _ in range(n)]


def _bursts(losses: list[bool]) -> list[int]:
    runs, run = [], 0
    for lost in losses:
        if lost:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    return runs


def test_burst_loss_has_its_rate_and_its_mean_burst() -> None:
    bad = PROFILES["bad"].a_to_b
    losses = _losses(bad, 300_000)
    assert sum(losses) / len(losses) == pytest.approx(0.10, abs=0.004)
    runs = _bursts(losses)
    assert statistics.fmean(runs) == pytest.approx(3.0, abs=0.08)
    # geometric bursts: as many of one packet as 1 / burst of them
    assert runs.count(1) / len(runs) == pytest.approx(1 / 3, abs=0.02)


def test_independent_loss_has_no_memory() -> None:
    mobile = PROFILES["mobile"].a_to_b
    losses = _losses(mobile, 300_000)
    assert sum(losses) / len(losses) == pytest.approx(0.03, abs=0.002)
    after_loss = [b for a, b in itertools.pairwise(losses) if a]
    assert sum(after_loss) / len(after_loss) == pytest.approx(0.03, abs=0.01)
    assert statistics.fmean(_bursts(losses)) == pytest.approx(1 / 0.97, abs=0.02)


def test_no_loss_draws_nothing() -> None:
    rng = random.Random(1)
    model = GilbertLoss(Impairment(delay_ms=5), rng)
    assert not any(model.lost() for _ in range(1000))
    assert rng.random() == random.Random(1).random()  # the stream was not touched


def test_delays_are_normal_around_the_profile() -> None:
    mobile = PROFILES["mobile"].a_to_b
    model = LaneModel(Impairment(delay_ms=80, jitter_ms=30), random.Random(3))
    delays = [model.admit(now=float(i)) for i in range(100_000)]  # 1 s apart: no interaction
    ms = [(release - i) * 1000 for i, release in enumerate(delays) if release is not None]
    assert statistics.fmean(ms) == pytest.approx(mobile.delay_ms, abs=0.5)
    assert statistics.pstdev(ms) == pytest.approx(mobile.jitter_ms, abs=0.5)
    assert min(ms) >= 0


def test_in_order_never_lets_a_packet_overtake() -> None:
    model = LaneModel(Impairment(delay_ms=30, jitter_ms=10, in_order=True), random.Random(5))
    releases = [model.admit(now=i * 0.001) for i in range(10_000)]
    assert all(r is not None for r in releases)
    assert releases == sorted(releases)  # type: ignore[type-var]
    free = LaneModel(Impairment(delay_ms=30, jitter_ms=10), random.Random(5))
    free_releases = [free.admit(now=i * 0.001) for i in range(10_000)]
    assert free_releases != sorted(free_releases)  # type: ignore[type-var]
