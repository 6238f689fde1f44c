"""What a session knows of its connection's quality, read from aiortc's getStats."""

from __future__ import annotations

from dataclasses import dataclass

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


async def read_stats(pc: RTCPeerConnection, stats: SessionStats) -> int:
    """Update `stats` from getStats; returns the transport's packets received (liveness)."""
    received = lost = rtp = 0
    jitters = []
    for report in (await pc.getStats()).values():
        kind = getattr(report, "type", "")
        if kind == "transport":
            received += report.packetsReceived
        elif kind == "remote-inbound-rtp":
            stats.rtt = report.roundTripTime
        elif kind == "inbound-rtp":
            lost += report.packetsLost
            rtp += report.packetsReceived
            # aiortc reports jitter in RTP timestamp units: 48 kHz audio, 90 kHz video
            jitters.append(report.jitter / (90_000 if report.kind == "video" else 48_000))
    stats.packets_lost = lost
    stats.rtp_received = rtp
    if jitters:
        stats.jitter = max(jitters)
    stats.packets_received = received
    return received
