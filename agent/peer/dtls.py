"""One DTLS certificate, with its fingerprints and OpenSSL context, for every connection.

aiortc makes a new ECDSA key and self-signed certificate for every RTCPeerConnection, digests it
three ways for every SDP it writes, and converts it into a new OpenSSL context for every DTLS
transport. Browsers let an application reuse a certificate across connections
(`RTCPeerConnection.generateCertificate`); aiortc has no such option. When fifty offers arrive
at once, that work (about 1 ms a connection) sits between the first answer and the last one.

`new_peer_connection()` makes an RTCPeerConnection that uses the process's shared certificate,
renewed a day before it expires (aiortc's are valid for 30 days; a connection keeps the
certificate it started with); `new_peer_connection(configuration, certificate)` uses the given one
instead (the benchmarks' simulated browsers each have their own, `prepare()`d before the call, as
a browser has made its certificate before anyone calls). Connections made otherwise are
unaffected.
Each connection still runs its own DTLS handshake and derives its own SRTP keys; only the
long-term identity is shared. A connection that replaces another for the same remote (ICE
restart, glare) must not use it: a browser that sees the same fingerprint after an ICE restart
keeps its DTLS session and never answers the new connection's handshake.
"""

from __future__ import annotations

import datetime
from typing import Any

import aiortc.rtcpeerconnection as _peerconnection
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCCertificate, RTCDtlsFingerprint

RENEW_BEFORE = datetime.timedelta(days=1)


class SharedCertificate(RTCCertificate):
    """An RTCCertificate that computes its fingerprints and OpenSSL contexts once."""

    def __init__(self, key: Any, cert: Any) -> None:
        super().__init__(key, cert)
        self._fingerprints: list[RTCDtlsFingerprint] | None = None
        self._contexts: dict[tuple[Any, ...], Any] = {}

    def getFingerprints(self) -> list[RTCDtlsFingerprint]:
        if self._fingerprints is None:
            self._fingerprints = super().getFingerprints()
        return list(self._fingerprints)

    def prepare(self) -> SharedCertificate:
        """Make the fingerprints and the OpenSSL context now, not in the first connection."""
        self.getFingerprints()
        self._create_ssl_context(SRTP_PROFILES)  # what aiortc's DTLS transports pass
        return self

    def _create_ssl_context(self, srtp_profiles: list[Any]) -> Any:
        # An OpenSSL context serves any number of connections; nothing here changes it after
        # it is made (the verify callback accepts any certificate: aiortc checks fingerprints).
        key = tuple(srtp_profiles)
        if key not in self._contexts:
            self._contexts[key] = super()._create_ssl_context(srtp_profiles)
        return self._contexts[key]


class _CertificateFactory:
    """Stands in for RTCCertificate in aiortc's peer-connection module: hands out the shared one."""

    def __init__(self, certificate: SharedCertificate | None = None) -> None:
        self._current = certificate
        self._renew = certificate is None

    def generateCertificate(self) -> SharedCertificate:
        if not self._renew:
            assert self._current is not None
            return self._current
        now = datetime.datetime.now(tz=datetime.UTC)
        if self._current is None or self._current.expires - RENEW_BEFORE <= now:
            self._current = SharedCertificate.generateCertificate()
        return self._current


_factory = _CertificateFactory()


def new_peer_connection(
    configuration: RTCConfiguration, certificate: SharedCertificate | None = None
) -> RTCPeerConnection:
    """An RTCPeerConnection with the process's shared certificate, or with `certificate`."""
    factory = _factory if certificate is None else _CertificateFactory(certificate)
    # RTCPeerConnection.__init__ calls `RTCCertificate.generateCertificate()`, looked up in its
    # module: that name points at the factory for the (synchronous) constructor call only.
    _peerconnection.RTCCertificate = factory  # type: ignore[attr-defined,assignment]
    try:
        return RTCPeerConnection(configuration)
    finally:
        _peerconnection.RTCCertificate = RTCCertificate  # type: ignore[attr-defined]


def shared_certificate() -> SharedCertificate:
    """The certificate new connections get (for tests and diagnostics)."""
    return _factory.generateCertificate()
