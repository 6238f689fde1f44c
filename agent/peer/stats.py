"""What a session knows of its connection's packets, read from aiortc's getStats."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection


@dataclass
class SessionStats:
    rtt: float | None = None
    packets_received: int = 0  # by the transport: RTP, RTCP and DTLS
    rtp_received: int = 0  # RTP packets of the inbound streams
    packets_lost: int = 0
    jitter: float | None = None
    ice_restarts: int = 0
    replaced_connections: int = 0


def apply_stats(report: Mapping[str, Any], stats: SessionStats) -> int:
    """Update `stats` from one getStats report; returns the transport's packets received
    (liveness)."""
    received = lost = rtp = 0
    jitters = []
    for entry in report.values():
        kind = getattr(entry, "type", "")
        if kind == "transport":
            received += entry.packetsReceived
        elif kind == "remote-inbound-rtp":
            stats.rtt = entry.roundTripTime
        elif kind == "inbound-rtp":
            lost += entry.packetsLost
            rtp += entry.packetsReceived
            # aiortc reports jitter in RTP timestamp units: 48 kHz audio, 90 kHz video
            jitters.append(entry.jitter / (90_000 if entry.kind == "video" else 48_000))
    stats.packets_lost = lost
    stats.rtp_received = rtp
    if jitters:
        stats.jitter = max(jitters)
    stats.packets_received = received
    return received


async def read_stats(pc: RTCPeerConnection, stats: SessionStats) -> int:
    """Update `stats` from a fresh getStats; returns the transport's packets received."""
    return apply_stats(await pc.getStats(), stats)
