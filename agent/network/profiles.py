"""Network profiles: what a link does to the packets of each direction, and the named ones.

An `Impairment` describes one direction; a `Profile` gives one to each direction of an
`ImpairedLink` (side A to side B, and back). The named profiles (`PROFILES`) impair both
directions alike. `docs/network.md` says how each figure is produced and what a link measured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

# A TBF bucket must hold at least one whole frame, or frames larger than it are dropped; two
# Ethernet frames let a packet through right behind another at line rate.
MIN_BUCKET_BYTES = 2 * 1514
# The bucket also holds this much traffic at the rate (a short burst passes at line rate).
BUCKET_MS = 10.0


class UnknownProfileError(ValueError):
    """A profile name that is not one of `PROFILE_NAMES`."""


@dataclass(frozen=True)
class Impairment:
    """What one direction of a link does to its packets. The defaults are a perfect link.

    Attributes:
        loss: The mean fraction of packets lost, 0 <= loss < 1.
        burst: The mean length, in packets, of a run of consecutive losses (a loss burst), or
            None for independent losses: each packet is then lost with probability `loss`
            whatever happened to the one before it, and bursts average 1 / (1 - loss) packets.
            With a number, losses follow the Gilbert model (the two-state Gilbert-Elliott model
            whose bad state loses every packet and whose good state loses none): from the good
            state a packet moves the link to the bad one with probability
            p = loss / (burst * (1 - loss)), from the bad state back with r = 1 / burst, so
            that a fraction `loss` of the packets is lost in bursts of `burst` packets on
            average (geometrically distributed). None is the same model with burst = 1 / (1 - loss).
        delay_ms: The mean one-way delay added to each packet, in milliseconds.
        jitter_ms: The standard deviation of that delay, in milliseconds: each packet's delay
            is drawn from a normal distribution of mean `delay_ms` and this deviation,
            independently of the others, and clipped at zero (which moves the mean and the
            deviation by less than 0.1 % while jitter_ms <= delay_ms / 3). Packets spaced less
            than the spread of their delays apart therefore overtake each other: reordering
            follows from jitter, as with netem (unless `in_order`).
        in_order: If True, a packet never overtakes an earlier one: it leaves no sooner than the
            packet before it (a FIFO after the delay line). Packets closer together than the
            jitter then wait for each other, which raises the mean delay and lowers the spread.
        rate_kbit: The bandwidth cap in kilobits (1000 bits) per second, counting each packet
            with its Ethernet header, or None for no cap. The cap is a token bucket (Linux's
            TBF qdisc) that passes a short burst at line rate (`bucket_bytes`), then `rate_kbit`.
        queue_ms: The cap's queue, in milliseconds of traffic at the capped rate: a packet that
            finds the queue full is dropped (tail drop), so a sender above the cap sees loss
            and at most this much queueing delay, never a queue that grows without bound.
    """

    loss: float = 0.0
    burst: float | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    in_order: bool = False
    rate_kbit: float | None = None
    queue_ms: float = 200.0

    def __post_init__(self) -> None:
        for name in ("loss", "delay_ms", "jitter_ms", "queue_ms"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        if self.loss >= 1:
            raise ValueError(f"loss must be below 1, not {self.loss!r}")
        if self.burst is not None:
            if not math.isfinite(self.burst) or self.burst < 1:
                raise ValueError(f"burst must be >= 1 packet, not {self.burst!r}")
            if self.loss > self.burst * (1 - self.loss):
                raise ValueError(f"loss {self.loss} cannot come in bursts of {self.burst}")
        if self.rate_kbit is not None and (
            not math.isfinite(self.rate_kbit) or self.rate_kbit <= 0
        ):
            raise ValueError(f"rate_kbit must be a number > 0 or None, not {self.rate_kbit!r}")

    @property
    def mean_burst(self) -> float:
        """The mean length of a loss burst, in packets (1 / (1 - loss) for independent losses)."""
        return self.burst if self.burst is not None else 1 / (1 - self.loss)

    @property
    def gilbert(self) -> tuple[float, float]:
        """(p, r): the Gilbert model's probabilities good -> bad and bad -> good, per packet."""
        r = 1 / self.mean_burst
        return self.loss * r / (1 - self.loss), r

    @property
    def bucket_bytes(self) -> int:
        """The cap's token bucket: what passes at line rate after an idle moment, in bytes."""
        if self.rate_kbit is None:
            return 0
        return max(MIN_BUCKET_BYTES, round(self.rate_kbit * BUCKET_MS / 8))

    @property
    def queue_bytes(self) -> int:
        """The cap's queue limit in bytes: the bucket plus `queue_ms` of traffic at the rate."""
        if self.rate_kbit is None:
            return 0
        return self.bucket_bytes + round(self.rate_kbit * self.queue_ms / 8)

    @property
    def is_perfect(self) -> bool:
        """True if this direction loses, delays and caps nothing."""
        return (
            self.loss == 0 and self.delay_ms == 0 and self.jitter_ms == 0 and self.rate_kbit is None
        )

    def describe(self) -> str:
        """One line, as the docs write it: '10 % loss in bursts of 3, 150±50 ms, 500 kbit/s'."""
        parts: list[str] = []
        if self.loss:
            parts.append(f"{self.loss * 100:g} % loss")
            if self.burst is not None:
                parts[-1] += f" in bursts of {self.burst:g}"
        if self.delay_ms or self.jitter_ms:
            jitter = f"±{self.jitter_ms:g}" if self.jitter_ms else ""
            parts.append(f"{self.delay_ms:g}{jitter} ms" + (" in order" if self.in_order else ""))
        if self.rate_kbit is not None:
            rate = self.rate_kbit
            parts.append(f"{rate / 1000:g} Mbit/s" if rate >= 1000 else f"{rate:g} kbit/s")
        return ", ".join(parts) or "no impairment"

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values (the relay's wire format)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> Impairment:
        """The inverse of `to_dict`."""
        return cls(**fields)


@dataclass(frozen=True)
class Profile:
    """A name and an impairment for each direction of a link: side A to side B and back."""

    name: str
    a_to_b: Impairment = field(default_factory=Impairment)
    b_to_a: Impairment = field(default_factory=Impairment)
    description: str = ""

    @classmethod
    def symmetric(cls, name: str, impairment: Impairment, description: str = "") -> Profile:
        """A profile that impairs both directions alike (each independently: its own draws)."""
        return cls(name, impairment, impairment, description)

    def describe(self) -> str:
        """One line: the impairment, or both ('a→b: ...; b→a: ...') when they differ."""
        if self.a_to_b == self.b_to_a:
            return self.a_to_b.describe()
        return f"a→b: {self.a_to_b.describe()}; b→a: {self.b_to_a.describe()}"


PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile.symmetric("good", Impairment(), "a perfect link (loopback-like)"),
        Profile.symmetric(
            "wifi",
            Impairment(loss=0.01, delay_ms=30, jitter_ms=10),
            "a home Wi-Fi hop and a short path: light random loss, some jitter",
        ),
        Profile.symmetric(
            "mobile",
            Impairment(loss=0.03, delay_ms=80, jitter_ms=30, rate_kbit=1000),
            "a loaded 4G link: loss, large jitter, 1 Mbit/s each way",
        ),
        Profile.symmetric(
            "bad",
            Impairment(loss=0.10, burst=3, delay_ms=150, jitter_ms=50, rate_kbit=500),
            "a poor mobile or congested link: losses in bursts, long and variable delay, "
            "500 kbit/s each way",
        ),
    )
}
PROFILE_NAMES: tuple[str, ...] = tuple(PROFILES)


def parse_profile(name: str) -> Profile:
    """The named profile (`--network NAME`), case and surrounding blanks ignored.

    Raises UnknownProfileError (a ValueError) with a one-line message naming the choices.
    """
    key = name.strip().lower()
    try:
        return PROFILES[key]
    except KeyError:
        raise UnknownProfileError(
            f"unknown network profile {name!r}; choose one of: {', '.join(PROFILE_NAMES)}"
        ) from None
