"""Fault injection for `/api/run`, switched at run time through `/admin/faults`.

Every rate is an independent draw per matching request, so faults combine (e.g. latency plus 500s).
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Rate = float


class FaultConfig(BaseModel):
    """The whole fault configuration; POSTing one replaces the previous one."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(default=0, ge=0, le=600_000)
    error_rate: Rate = Field(default=0, ge=0, le=1)
    rate_limit_rate: Rate = Field(default=0, ge=0, le=1)
    retry_after_s: int = Field(default=1, ge=0, le=86_400)
    drop_rate: Rate = Field(default=0, ge=0, le=1)
    timeout_rate: Rate = Field(default=0, ge=0, le=1)
    timeout_s: float = Field(default=30, ge=0, le=3600)
    slow_body_ms: float = Field(default=0, ge=0, le=600_000)
    ack_fail_rate: Rate = Field(default=0, ge=0, le=1)
    ack_fail_mode: Literal["before", "after"] = "before"
    duplicate_rate: Rate = Field(default=0, ge=0, le=1)
    functions: list[str] | None = Field(default=None, max_length=1000)
    seed: int | None = None


class Faults:
    """The current config plus its random stream (re-seeded on every replacement)."""

    def __init__(self) -> None:
        self.config = FaultConfig()
        self.rng = random.Random()

    def replace(self, config: FaultConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)

    def clear(self) -> None:
        self.replace(FaultConfig())

    def applies_to(self, function_path: str) -> bool:
        wanted = self.config.functions
        return wanted is None or function_path in wanted

    def roll(self, rate: float) -> bool:
        # Draw only for enabled faults so a seeded run is reproducible per enabled fault set.
        return rate > 0 and self.rng.random() < rate

    def duplicate(self, page: list[Any], cap: int) -> list[Any]:
        """The page with some entries repeated right after themselves, kept within `cap`."""
        if self.config.duplicate_rate <= 0:
            return page
        out: list[Any] = []
        for item in page:
            out.append(item)
            if self.roll(self.config.duplicate_rate):
                out.append(item)
        return out[: max(cap, len(page))]
