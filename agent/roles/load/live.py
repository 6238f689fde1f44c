"""The live view of a load run: a rich progress bar for the ramp and a table of current figures.

When stderr is not a terminal (CI, logs), it prints one plain line every few seconds instead.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agent.roles.load.worker import percentile

PLAIN_EVERY_S = 5.0


class LiveView:
    def __init__(self, total: int, workers: int) -> None:
        self.total = total
        self.latest: dict[int, dict[str, Any]] = {}  # worker -> its last sample
        self.ttc: list[float] = []
        self.console = Console(stderr=True)
        self.interactive = self.console.is_terminal
        self.progress = Progress(
            TextColumn("ramp"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task("ramp", total=total)
        self._live: Live | None = None
        self._last_plain = 0.0
        self.workers = workers

    def __enter__(self) -> LiveView:
        if self.interactive:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(exc_type, exc, tb)

    def update(self, worker: int, sample: dict[str, Any]) -> None:
        self.latest[worker] = sample
        self.ttc.extend(sample["time_to_connected_s"])
        self.progress.update(self.task, completed=self.figures()["started"])
        if self._live is not None:
            self._live.update(self._render())
        elif time.monotonic() - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = time.monotonic()
            f = self.figures()
            print(
                f"load: started {f['started']}/{self.total} connected {f['connected']} "
                f"negotiating {f['negotiating']} failed {f['failed']} ttc p50 {f['ttc_p50']} "
                f"p95 {f['ttc_p95']} pkt/s {f['packets_per_s']:.0f} lag p99 {f['lag']:.0f} ms",
                file=sys.stderr,
                flush=True,
            )

    def figures(self) -> dict[str, Any]:
        rows = list(self.latest.values())

        def total(key: str) -> float:
            return float(sum(r[key] for r in rows))

        def ms(q: float) -> str:
            return f"{1000 * percentile(self.ttc, q):.0f} ms" if self.ttc else "-"

        return {
            "started": int(total("started")),
            "connected": int(total("connected")),
            "negotiating": int(total("negotiating")),
            "failed": int(total("failed")),
            "packets_per_s": total("packets_per_s"),
            "ttc_p50": ms(0.5),
            "ttc_p95": ms(0.95),
            "lag": max((r["loop_lag_p99_ms"] for r in rows), default=0.0),
        }

    def _render(self) -> Group:
        f = self.figures()
        table = Table(title=f"{self.workers} worker process(es)")
        for column in (
            "connected",
            "negotiating",
            "failed",
            "ttc p50",
            "ttc p95",
            "packets/s",
            "loop lag p99",
        ):
            table.add_column(column, justify="right")
        table.add_row(
            str(f["connected"]),
            str(f["negotiating"]),
            str(f["failed"]),
            f["ttc_p50"],
            f["ttc_p95"],
            f"{f['packets_per_s']:.0f}",
            f"{f['lag']:.0f} ms",
        )
        return Group(self.progress, table)
