"""Prometheus metrics of one agent.

Metrics are always collected (incrementing a counter is cheap) and exported only when a port is
given. Each AgentMetrics has its own CollectorRegistry rather than the process-wide default, so
several agents in one process, and tests, never collide on metric names.

Connection quality (`observe_quality`, docs/quality.md) is labelled by `direction` (inbound,
outbound) and, for jitter, `kind` (audio, video): never by session, participant or meeting. A
long meeting sees an unbounded number of sessions come and go, and a label per session would make
a time series per session that outlives it. Per-connection figures are histograms instead: each
connection's each quality interval is one observation, so `histogram_quantile` gives the
distribution over connections and time, and the bucket at MOS 4.03 how many were below G.107's
"satisfied". The figures of one connection are in the exit summary and the session API.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol
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
# Audio MOS: the lower ends of G.107's bands (2.58 nearly all dissatisfied ... 4.34 very
# satisfied), with finer steps where good calls differ (4.2, 4.4) and the model's ceiling, 4.5.
MOS_BUCKETS = (1.0, 1.5, 2.0, 2.58, 3.1, 3.6, 4.03, 4.2, 4.34, 4.4, 4.5)
# Jitter: a LAN has about a millisecond, Wi-Fi tens, a bad mobile link 50 to 100.
JITTER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5)
# Round trip: loopback well under 5 ms; continents 100 to 300 ms; beyond 400 ms talk suffers.
RTT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 1.0)
# Frames per second of received video: senders use 15 or 30, a struggling one fewer.
FPS_BUCKETS = (1.0, 5.0, 10.0, 14.0, 20.0, 25.0, 29.0, 40.0, 60.0)


class QualityFigures(Protocol):
    """One direction of one connection over one interval (agent.peer.quality.QualitySnapshot,
    which this leaf module cannot import)."""

    @property
    def direction(self) -> str: ...
    @property
    def interval_s(self) -> float | None: ...
    @property
    def packets(self) -> int: ...
    @property
    def packets_lost(self) -> int: ...
    @property
    def packets_late(self) -> int | None: ...
    @property
    def audio_jitter_ms(self) -> float | None: ...
    @property
    def video_jitter_ms(self) -> float | None: ...
    @property
    def rtt_ms(self) -> float | None: ...
    @property
    def bitrate_kbps(self) -> float | None: ...
    @property
    def audio_mos(self) -> float | None: ...
    @property
    def video_frames(self) -> int | None: ...
    @property
    def fps(self) -> float | None: ...
    @property
    def freeze_count(self) -> int | None: ...
    @property
    def freeze_duration_s(self) -> float | None: ...
    @property
    def pli_count(self) -> int | None: ...
    @property
    def fir_count(self) -> int | None: ...


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

        # --- connection quality (observe_quality), by direction --------------------------------
        self.audio_mos = Histogram(
            "audio_mos",
            "Estimated audio MOS (ITU-T G.107 E-model, 1 to 4.5) of each connection over each"
            " quality interval.",
            ["direction"],
            namespace=NAMESPACE,
            registry=r,
            buckets=MOS_BUCKETS,
        )
        self.rtp_packets = Counter(
            "rtp_packets",
            "RTP packets received (inbound) or sent (outbound).",
            ["direction"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.rtp_packets_lost = Counter(
            "rtp_packets_lost",
            "RTP packets lost: counted by the agent (inbound), reported by the far end (outbound).",
            ["direction"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.rtp_packets_late = Counter(
            "rtp_packets_late",
            "RTP packets discarded by a jitter buffer for arriving late, where the receiver"
            " reports them (aiortc does not).",
            ["direction"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.jitter_seconds = Histogram(
            "jitter_seconds",
            "RTP interarrival jitter (RFC 3550) of each connection over each quality interval.",
            ["direction", "kind"],
            namespace=NAMESPACE,
            registry=r,
            buckets=JITTER_BUCKETS,
        )
        self.rtt_seconds = Histogram(
            "rtt_seconds",
            "Round-trip time of each connection over each quality interval.",
            namespace=NAMESPACE,
            registry=r,
            buckets=RTT_BUCKETS,
        )
        self.transport_bytes = Counter(
            "transport_bytes",
            "Bytes the connections' DTLS transports carried (RTP, RTCP, DTLS): rate() is the"
            " bitrate.",
            ["direction"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.video_frames = Counter(
            "video_frames",
            "Video frames received and decoded.",
            ["direction"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.video_fps = Histogram(
            "video_fps",
            "Frames per second of each received video over each quality interval.",
            ["direction"],
            namespace=NAMESPACE,
            registry=r,
            buckets=FPS_BUCKETS,
        )
        self.video_freezes = Counter(
            "video_freezes",
            "Video freezes (libwebrtc's rule: a gap of 3 x the mean frame gap and 150 ms more).",
            ["direction"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.video_freeze_seconds = Counter(
            "video_freeze_seconds",
            "Total time of the video freezes.",
            ["direction"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.keyframe_requests = Counter(
            "keyframe_requests",
            "Keyframe requests (PLI, FIR) sent (inbound) or received (outbound), where counted"
            " (aiortc does not).",
            ["direction", "type"],
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

    def observe_quality(self, *figures: QualityFigures) -> None:
        """Count one quality interval of one connection, each direction's figures."""
        for f in figures:
            direction = f.direction
            self.rtp_packets.labels(direction).inc(f.packets)
            self.rtp_packets_lost.labels(direction).inc(f.packets_lost)
            if f.packets_late is not None:
                self.rtp_packets_late.labels(direction).inc(f.packets_late)
            if f.audio_mos is not None:
                self.audio_mos.labels(direction).observe(f.audio_mos)
            for kind, jitter_ms in (("audio", f.audio_jitter_ms), ("video", f.video_jitter_ms)):
                if jitter_ms is not None:
                    self.jitter_seconds.labels(direction, kind).observe(jitter_ms / 1000.0)
            if f.rtt_ms is not None and direction == "outbound":  # one path: counted once
                self.rtt_seconds.observe(f.rtt_ms / 1000.0)
            if f.bitrate_kbps is not None and f.interval_s:
                self.transport_bytes.labels(direction).inc(f.bitrate_kbps * 125.0 * f.interval_s)
            if f.video_frames is not None:
                self.video_frames.labels(direction).inc(f.video_frames)
            if f.fps is not None:
                self.video_fps.labels(direction).observe(f.fps)
            if f.freeze_count is not None:
                self.video_freezes.labels(direction).inc(f.freeze_count)
            if f.freeze_duration_s is not None:
                self.video_freeze_seconds.labels(direction).inc(f.freeze_duration_s)
            for kind, count in (("pli", f.pli_count), ("fir", f.fir_count)):
                if count is not None:
                    self.keyframe_requests.labels(direction, kind).inc(count)

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
