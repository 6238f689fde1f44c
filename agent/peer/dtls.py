"""The DTLS certificate of the agent's connections: one for the first connection to each remote.

The agent's first connection to a remote uses the process's shared certificate
(`new_peer_connection()`, the patch `shared_certificate` in `agent.patches.certificate`, where the
mechanism and its reasons are described). A connection that replaces another for the same remote
(ICE restart, glare) is made with a certificate of its own: a browser that sees the same
fingerprint after an ICE restart keeps its DTLS session and never answers the new connection's
handshake. Without the patch, every connection has its own certificate.
"""

from __future__ import annotations

from agent.patches.certificate import (
    RENEW_BEFORE,
    CertificateFactory,
    SharedCertificate,
    new_peer_connection,
    shared_certificate,
)

__all__ = [
    "RENEW_BEFORE",
    "CertificateFactory",
    "SharedCertificate",
    "new_peer_connection",
    "shared_certificate",
]
