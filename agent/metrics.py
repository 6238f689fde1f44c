"""Prometheus metrics of one agent.

Metrics are always collected (incrementing a counter is cheap) and exported only when a port is
given. Each AgentMetrics has its own CollectorRegistry rather than the process-wide default, so
several agents in one process, and tests, never collide on metric names.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import start_http_server as _start_http_server

NAMESPACE = "connvo_agent"

# Signal polling: a fast poll is ~tens of ms; idle polls and slow backends reach seconds.
POLL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Time to connect: ICE + DTLS on a LAN is well under a second, TURN or retries take several.
CONNECT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)


@dataclass
class MetricsServer:
    """A running /metrics HTTP server; `stop()` shuts it down and frees the port."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.signals_received = Counter(
            "signals_received", "Signals read from the backend.", namespace=NAMESPACE, registry=r
        )
        self.signals_applied = Counter(
            "signals_applied",
            "Signals applied to a peer connection.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.signals_acknowledged = Counter(
            "signals_acknowledged",
            "Signals acknowledged to the backend.",
            namespace=NAMESPACE,
            registry=r,
        )
        self.signals_rejected = Counter(
            "signals_rejected",
            "Signals not applied, by reason.",
            ["reason"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.poll_latency_seconds = Histogram(
            "poll_latency_seconds",
            "Duration of one signal poll request.",
            namespace=NAMESPACE,
            registry=r,
            buckets=POLL_BUCKETS,
        )
        self.sessions = Gauge(
            "sessions", "Peer sessions, by state.", ["state"], namespace=NAMESPACE, registry=r
        )
        self.time_to_connected_seconds = Histogram(
            "time_to_connected_seconds",
            "From the start of a session to its first connected state.",
            namespace=NAMESPACE,
            registry=r,
            buckets=CONNECT_BUCKETS,
        )
        self.backend_requests = Counter(
            "backend_requests",
            "Backend function calls, by function and outcome.",
            ["function", "outcome"],
            namespace=NAMESPACE,
            registry=r,
        )

    def set_sessions(self, counts: Mapping[str, int]) -> None:
        """Set the sessions gauge from a full count by state (states absent from `counts` are 0)."""
        known = {labels[0] for labels in _label_values(self.sessions)}
        for state in known - counts.keys():
            self.sessions.labels(state=state).set(0)
        for state, count in counts.items():
            self.sessions.labels(state=state).set(count)

    # --- the signal poller's observer hooks (agent.signaling.poller.PollerObserver) -----------

    def polled(self, seconds: float) -> None:
        self.poll_latency_seconds.observe(seconds)

    def received(self, count: int) -> None:
        self.signals_received.inc(count)

    def handled(self, outcome: str) -> None:
        if outcome == "applied":
            self.signals_applied.inc()
        else:
            self.signals_rejected.labels(reason=outcome).inc()

    def acked(self, count: int) -> None:
        self.signals_acknowledged.inc(count)

    def request(self, function: str, outcome: str, seconds: float) -> None:
        """The Convex client's request observer."""
        self.backend_requests.labels(function=function, outcome=outcome).inc()

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)

    def start_http_server(self, port: int, addr: str = "127.0.0.1") -> MetricsServer:
        """Serve the registry on http://addr:port/ (any path) from a daemon thread.

        Loopback by default: metrics name meetings' activity and need not leave the host.
        """
        server, thread = _start_http_server(port, addr=addr, registry=self.registry)
        return MetricsServer(server, thread)


def _label_values(metric: Gauge) -> list[tuple[str, ...]]:
    # prometheus_client keeps no public list of the label sets a metric has seen.
    return [
        tuple(sample.labels.values()) for family in metric.collect() for sample in family.samples
    ]
