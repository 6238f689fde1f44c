"""ICE helpers: signal payloads <-> aiortc objects, and what the agent refuses to touch.

The agent only ever contacts addresses that ICE needs: IP literals from candidates. Candidates whose
address is a hostname are dropped, so nothing in an SDP or candidate can make it resolve a name or
open anything. mDNS `.local` candidates (browsers hide host addresses behind them) are dropped too:
aioice cannot resolve them here and waits about a second trying; the path still forms through
peer-reflexive candidates learnt from the browser's connectivity checks.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Sequence

from aiortc import RTCIceCandidate, RTCIceServer
from aiortc.sdp import candidate_from_sdp, candidate_to_sdp

from agent.patches.ice import HOST_ADDRESSES, pin_host_addresses
from agent.signaling.models import IceCandidate, IceServer

DEFAULT_GATHER_TIMEOUT_S = 1.0

log = logging.getLogger(__name__)


class CandidateError(ValueError):
    """A candidate the agent will not apply (unparsable, or not an IP address)."""


def restrict_host_addresses(addresses: Sequence[str] | None) -> None:
    """Gather host candidates only on these local addresses (process-wide); None restores all.

    aioice offers every interface address but loopback. Tests and load runs on one machine pin it to
    127.0.0.1 so that no packet leaves loopback; multi-homed hosts pick their media interface.
    Needs the patch `ice_host_addresses` (`agent.patches.install()`); without it, a warning.
    """
    pin_host_addresses(addresses)  # raises ValueError on a bad address
    if addresses is not None and not HOST_ADDRESSES.installed:
        log.warning(
            "ICE host addresses not restricted to %s: the patch ice_host_addresses is not "
            "installed (aioice gathers on every interface but loopback)",
            ", ".join(addresses),
        )


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_candidate(payload: IceCandidate) -> RTCIceCandidate:
    """A trickled candidate as an aiortc object; CandidateError when the agent will not apply it."""
    text = payload.candidate.strip()
    if text.startswith("a="):
        text = text[2:]
    if text.startswith("candidate:"):
        text = text[len("candidate:") :]
    try:
        candidate = candidate_from_sdp(text)
    except (AssertionError, ValueError, IndexError) as exc:
        raise CandidateError(f"unparsable candidate: {exc or 'too few fields'}") from None
    if candidate.protocol.lower() not in ("udp", "tcp"):
        raise CandidateError(f"unsupported transport {candidate.protocol!r}")
    if not is_ip_literal(candidate.ip):
        raise CandidateError("address is not an IP literal (mDNS or hostname)")
    if payload.sdpMid is None and payload.sdpMLineIndex is None:
        raise CandidateError("candidate has neither sdpMid nor sdpMLineIndex")
    candidate.sdpMid = payload.sdpMid
    candidate.sdpMLineIndex = payload.sdpMLineIndex
    return candidate


def candidate_payload(candidate: RTCIceCandidate) -> IceCandidate:
    return IceCandidate(
        candidate=f"candidate:{candidate_to_sdp(candidate)}",
        sdpMid=candidate.sdpMid,
        sdpMLineIndex=candidate.sdpMLineIndex,
    )


_CANDIDATE_LINE = re.compile(r"^a=candidate:(\S+\s+){4}(?P<host>\S+)\s", re.ASCII)


def sanitize_sdp(sdp: str) -> str:
    """Drop candidate lines whose address is not an IP literal (mDNS `.local`, hostnames)."""
    kept = []
    for line in sdp.splitlines():
        match = _CANDIDATE_LINE.match(line)
        if match and not is_ip_literal(match.group("host")):
            continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"


_MID = re.compile(r"^a=mid:(\S+)", re.MULTILINE)
_BUNDLE = re.compile(r"^a=group:BUNDLE((?: \S+)*)", re.MULTILINE)


def bundles_all_media(sdp: str) -> bool:
    """True when one BUNDLE group holds every m-line of the SDP (browsers and aiortc do this).

    Only then may the answerer put all media on one ICE transport from the start (aiortc's
    max-bundle policy); an offer without it expects a transport per m-line.
    """
    mids = set(_MID.findall(sdp))
    return bool(mids) and any(mids <= set(g.split()) for g in _BUNDLE.findall(sdp))


_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)", re.MULTILINE)


def ice_ufrags(sdp: str) -> tuple[str, ...]:
    """The ICE username fragments of an SDP; a change means the remote restarted ICE."""
    return tuple(_UFRAG.findall(sdp))


def is_ice_restart(previous_sdp: str, offer_sdp: str) -> bool:
    """True when an m-line present before got new ICE credentials (added m-lines do not count)."""
    before, after = ice_ufrags(previous_sdp), ice_ufrags(offer_sdp)
    return any(old != new for old, new in zip(before, after, strict=False))


_EXTMAP = re.compile(r"^a=extmap:(?P<id>\d+)(?P<direction>/\S+)? (?P<uri>\S+)(?P<rest>.*)$")
_MAX_ONE_BYTE_EXTENSION_ID = 14


def keep_extension_ids(offer_sdp: str, negotiated_sdp: str) -> str:
    """The offer with the RTP header-extension ids the remote negotiated before.

    aiortc numbers its extensions the same way in every offer (audio level 2, mid 1, ...). After a
    remote that offered first (Chromium: audio level 1) has negotiated its own ids, an offer from
    us with other ids is refused ("RTP extension ID reassignment not supported"), also on a fresh
    connection (ICE restart). URIs the remote knows keep its id; others get ids it does not use.
    """
    known: dict[str, int] = {}
    for line in negotiated_sdp.splitlines():
        if match := _EXTMAP.match(line):
            known.setdefault(match["uri"], int(match["id"]))
    if not known:
        return offer_sdp
    free = (i for i in range(1, _MAX_ONE_BYTE_EXTENSION_ID + 1) if i not in known.values())
    out = []
    for line in offer_sdp.splitlines():
        if match := _EXTMAP.match(line):
            uri = match["uri"]
            if uri not in known:
                known[uri] = next(free, int(match["id"]))
            line = f"a=extmap:{known[uri]}{match['direction'] or ''} {uri}{match['rest']}"
        out.append(line)
    return "\r\n".join(out) + "\r\n"


def to_rtc_ice_servers(servers: Sequence[IceServer]) -> list[RTCIceServer]:
    return [
        RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in servers
    ]
