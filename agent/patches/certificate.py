"""aiortc: one DTLS certificate, with its fingerprints and OpenSSL context, for many connections.

aiortc makes a new ECDSA key and self-signed certificate for every RTCPeerConnection, digests it
three ways for every SDP it writes, and converts it into a new OpenSSL context for every DTLS
transport. Browsers let an application reuse a certificate across connections
(`RTCPeerConnection.generateCertificate`); aiortc has no such option. When fifty offers arrive
at once, that work (about 1 ms a connection) sits between the first answer and the last one.

With the patch `shared_certificate` installed, `new_peer_connection(configuration)` makes an
RTCPeerConnection that uses the process's shared certificate, renewed a day before it expires
(aiortc's are valid for 30 days; a connection keeps the certificate it started with), and
`new_peer_connection(configuration, certificate)` uses the given one instead (the benchmarks'
simulated browsers each have their own, `prepare()`d before the call, as a browser has made its
certificate before anyone calls). aiortc's constructor looks `RTCCertificate.generateCertificate()`
up in its module: for that synchronous call only, the name points at a factory handing out the
shared certificate. Connections made otherwise are unaffected.

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

from agent.patches._patch import Patch

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


class CertificateFactory:
    """Stands in for RTCCertificate in aiortc's peer-connection module: hands out one certificate.

    Without a certificate it makes one, and a new one a day before that one expires.
    """

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


_factory = CertificateFactory()


def new_peer_connection(
    configuration: RTCConfiguration, certificate: SharedCertificate | None = None
) -> RTCPeerConnection:
    """An RTCPeerConnection with the process's shared certificate, or with `certificate`.

    While `shared_certificate` is not installed: a plain RTCPeerConnection, with a certificate of
    its own made by aiortc (`certificate` is not used).
    """
    if not SHARED_CERTIFICATE.installed:
        return RTCPeerConnection(configuration)
    factory = _factory if certificate is None else CertificateFactory(certificate)
    _peerconnection.RTCCertificate = factory  # type: ignore[attr-defined,assignment]
    try:
        return RTCPeerConnection(configuration)
    finally:
        _peerconnection.RTCCertificate = RTCCertificate  # type: ignore[attr-defined]


def shared_certificate() -> SharedCertificate:
    """The certificate new connections get (for tests and diagnostics)."""
    return _factory.generateCertificate()


def _apply() -> str | None:
    if getattr(_peerconnection, "RTCCertificate", None) is not RTCCertificate:
        return "aiortc.rtcpeerconnection no longer makes certificates with RTCCertificate"
    if not callable(getattr(RTCCertificate, "_create_ssl_context", None)):
        return "RTCCertificate has no _create_ssl_context"
    return None  # the name is pointed at the factory only inside new_peer_connection()


def _restore() -> None:
    pass


SHARED_CERTIFICATE = Patch(
    name="shared_certificate",
    replaces=(
        "aiortc.rtcpeerconnection.RTCCertificate (during new_peer_connection() only)",
        "aiortc.RTCCertificate._create_ssl_context (in the SharedCertificate subclass)",
    ),
    why=(
        "A new key, certificate, three digests and an OpenSSL context for every connection: "
        "about 1 ms each, between the first answer of a 50-offer burst and the last."
    ),
    fallback="new_peer_connection() makes plain RTCPeerConnections, each with its own certificate.",
    libraries=("aiortc",),
    apply=_apply,
    restore=_restore,
)
