"""The shared DTLS certificate: one identity for the agent's connections, own handshakes."""

from __future__ import annotations

import asyncio
import datetime
import re

from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtcdtlstransport import RTCCertificate
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from agent.media.preencoded import PreencodedAudio
from agent.peer import dtls
from agent.peer.dtls import SharedCertificate, new_peer_connection
from agent.peer.ice import restrict_host_addresses
from tests.support.waiting import poll_until

FINGERPRINT = re.compile(r"^a=fingerprint:sha-256 (\S+)", re.MULTILINE)


def _fingerprint(sdp: str) -> str:
    found = FINGERPRINT.search(sdp)
    assert found is not None, sdp
    return found.group(1)


async def test_agent_connections_share_one_certificate_and_each_connects_with_media() -> None:
    restrict_host_addresses(["127.0.0.1"])
    tone = PreencodedAudio("tone")
    pairs: list[tuple[RTCPeerConnection, RTCPeerConnection]] = []
    try:
        # two of the agent's connections, each answered by a plain aiortc peer, at the same time
        for _ in range(2):
            agent_pc = new_peer_connection(RTCConfiguration(iceServers=[]))
            remote = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            agent_pc.addTrack(tone.track())
            remote.addTrack(tone.track())
            pairs.append((agent_pc, remote))
        for agent_pc, remote in pairs:
            await agent_pc.setLocalDescription(await agent_pc.createOffer())
            await remote.setRemoteDescription(agent_pc.localDescription)
            await remote.setLocalDescription(await remote.createAnswer())
            await agent_pc.setRemoteDescription(remote.localDescription)
        agent_prints = {_fingerprint(a.localDescription.sdp) for a, _ in pairs}
        remote_prints = {_fingerprint(r.localDescription.sdp) for _, r in pairs}
        assert len(agent_prints) == 1  # one identity for the agent's connections
        assert len(remote_prints) == 2 and not agent_prints & remote_prints  # plain ones differ
        async with asyncio.timeout(15):
            for agent_pc, remote in pairs:
                # media both ways: each handshake completed and keyed its own SRTP session
                await poll_until(lambda a=agent_pc: _at_least(a, 25))
                await poll_until(lambda r=remote: _at_least(r, 25))
                assert agent_pc.connectionState == remote.connectionState == "connected"
    finally:
        for agent_pc, remote in pairs:
            await agent_pc.close()
            await remote.close()
        tone.stop()
        restrict_host_addresses(None)


async def test_a_connection_can_be_given_its_own_prepared_certificate() -> None:
    """As the benchmarks' simulated browsers: one certificate each, its DTLS context made early."""
    restrict_host_addresses(["127.0.0.1"])
    tone = PreencodedAudio("tone")
    certificate = SharedCertificate.generateCertificate().prepare()
    assert len(certificate._contexts) == 1
    given = new_peer_connection(RTCConfiguration(iceServers=[]), certificate)
    remote = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        given.addTrack(tone.track())
        remote.addTrack(tone.track())
        await given.setLocalDescription(await given.createOffer())
        expected = certificate.getFingerprints()[0].value
        assert _fingerprint(given.localDescription.sdp).lower() == expected.lower()
        assert dtls.shared_certificate().getFingerprints()[0].value != expected  # not the agent's
        await remote.setRemoteDescription(given.localDescription)
        await remote.setLocalDescription(await remote.createAnswer())
        await given.setRemoteDescription(remote.localDescription)
        async with asyncio.timeout(15):
            await poll_until(lambda: _at_least(given, 25))
            await poll_until(lambda: _at_least(remote, 25))
        assert len(certificate._contexts) == 1  # the handshake used the prepared context
    finally:
        for pc in (given, remote):
            await pc.close()
        tone.stop()
        restrict_host_addresses(None)


async def _at_least(pc: RTCPeerConnection, packets: int) -> bool:
    stats = await pc.getStats()
    return sum(s.packetsReceived for s in stats.values() if s.type == "inbound-rtp") >= packets


def _certificate_expiring_in(delta: datetime.timedelta) -> SharedCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "soon")])
    now = datetime.datetime.now(tz=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + delta)
        .sign(key, hashes.SHA256())
    )
    return SharedCertificate(key, cert)


def test_the_certificate_is_renewed_a_day_before_it_expires() -> None:
    factory = dtls.CertificateFactory()
    fresh = factory.generateCertificate()
    assert factory.generateCertificate() is fresh  # reused while valid
    factory._current = _certificate_expiring_in(datetime.timedelta(days=2))
    assert factory.generateCertificate() is factory._current  # still more than a day left
    expiring = _certificate_expiring_in(datetime.timedelta(hours=23))
    factory._current = expiring
    renewed = factory.generateCertificate()
    assert renewed is not expiring
    assert renewed.expires - datetime.datetime.now(tz=datetime.UTC) > datetime.timedelta(days=29)


def test_other_connections_keep_their_own_certificates() -> None:
    new_peer_connection(RTCConfiguration(iceServers=[]))
    # the constructor's lookup is restored: plain connections generate as aiortc does
    import aiortc.rtcpeerconnection as peerconnection

    assert peerconnection.RTCCertificate is RTCCertificate  # type: ignore[attr-defined]
    plain = [RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(2)]
    certificates = {id(pc._RTCPeerConnection__certificates[0]) for pc in plain}  # type: ignore[attr-defined]
    assert len(certificates) == 2


def test_fingerprints_and_contexts_are_computed_once() -> None:
    certificate = dtls.shared_certificate()
    assert certificate.getFingerprints() == RTCCertificate.getFingerprints(certificate)
    from aiortc.rtcdtlstransport import SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80

    profiles = [SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80]
    first = certificate._create_ssl_context(profiles)
    assert certificate._create_ssl_context(list(profiles)) is first
    assert certificate._create_ssl_context(profiles[1:]) is not first
