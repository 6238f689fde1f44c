"""Every change the agent makes inside aiortc and aioice, installed explicitly, once per process.

Importing `agent`, or this package, changes nothing. A process's entry point calls
`agent.patches.install()` once, before it makes a connection: `connvo-agent run` (`run_role`), the
demo, each load worker, the benchmarks and the test suite do. `install()` is idempotent;
`install(skip={"name"})` or `install(only={"name", ...})` leaves patches out, `installed()` names
those in place, `PATCHES` describes each one, and `uninstall()` takes them out again (for tests:
a connection keeps what it was given while they were in).

Every patch has a fallback. While a patch is not installed (left out, or refused by `install()`
because an internal it relies on has moved, with a warning) the agent takes aiortc's or aioice's
own path: it still works, more slowly. Patches that act on single objects also check their
internals on each object and leave it alone if they moved.

All of them were checked against aiortc 1.16.0, aioice 0.13.0, av 18.1.0 and pylibsrtp 1.0.0
(`VERIFIED_VERSIONS`). `install()` warns when an installed version differs, and
`tests/patches/test_patch_versions.py` fails until the patches have been checked against it.

The patches, by name:

**`ice_host_addresses`** (`agent.patches.ice`; aioice 0.13.0)

- Replaces `aioice.ice.get_host_addresses`.
- Why: aioice has no setting for the addresses it gathers host candidates on; it offers every
  interface but loopback. `--ice-host` (`pin_host_addresses()`) pins them; tests, the demo and load
  runs on one machine pin 127.0.0.1 so that no packet leaves loopback.
- Process-wide: the pinned addresses hold for every connection gathered after they are set.
- Fallback: every interface address but loopback; `--ice-host` has no effect (a warning says so).

**`ice_gather_timeout`** (`agent.patches.ice`; aioice 0.13.0, aiortc 1.16.0)

- Replaces `aioice.ice.Connection.get_component_candidates`.
- Why: aiortc gathers every candidate inside setLocalDescription and aioice waits 5 s for a STUN
  or TURN server that does not answer, so one dead server in the meeting's ICE configuration
  would delay every offer and answer by 5 s.
- Per session: the wait is capped by the context the gathering runs in; each session wraps its
  setLocalDescription in `gathering_timeout(SessionSettings.gather_timeout)` (1 s by default). A
  server that answers later only loses its candidate for that connection.
- Fallback: aioice's 5 s.

**`remote_descriptions`** (`agent.patches.descriptions`; aiortc 1.16.0)

- Replaces `find_common_codecs`, `add_remote_candidates` and `asyncio` in
  `aiortc.rtcpeerconnection`.
- Why: with fifty answers in one poll, each answer was applied only after all the others:
  setRemoteDescription deep-copied codecs (half its cost before its first await) and waited
  several turns of the event loop for a task per candidate. Patched, it completes in the step
  that started it, with the same codecs and candidates.
- Fallback: aiortc's setRemoteDescription.

**`shared_certificate`** (`agent.patches.certificate`; aiortc 1.16.0)

- Replaces `aiortc.rtcpeerconnection.RTCCertificate` while `new_peer_connection()` constructs a
  connection, and `RTCCertificate._create_ssl_context` in a subclass.
- Why: aiortc makes a key, a certificate, three digests and an OpenSSL context for every
  connection, about 1 ms each, between the first answer of a 50-offer burst and the last. The
  agent's first connection to each remote uses one shared certificate (a replacement gets its own:
  a browser keeps its DTLS session when the fingerprint does not change).
- Fallback: every connection makes its own certificate, as aiortc does.

**`packet_pump`** (`agent.patches.sender`; aiortc 1.16.0, aioice 0.13.0)

- Replaces `aiortc.rtcrtpsender.RTCRtpSender._run_rtp`; reaches into the sender's mid,
  header-extension map (`HeaderExtensionsMap.__ids`), track and counters, the DTLS transport's
  SRTP session and counters, and the aioice connection's nominated pair.
- Why: aiortc runs a task per sender and a chain of five coroutines per 20 ms packet; with a
  hundred pre-encoded senders, 5,000 task wake-ups and 25,000 coroutine steps a second. A
  `PacketPump` sends the same bytes for every sender of one pre-encoded loop from one timer
  callback per frame time.
- Fallback: aiortc's sender loop, which packetizes the pre-encoded Opus packets without encoding.

**`counting_receivers`** (`agent.patches.receiver`; aiortc 1.16.0)

- Replaces `aiortc.rtcrtpreceiver.threading`, and per counting connection
  `RTCPeerConnection.__createTransceiver` and its receivers' `__decoder_queue` and
  `__jitter_buffer`.
- Why: a decoder thread per received track, woken (and taking the GIL from the event loop) for
  every frame, even when nobody reads the track. Connections that only count what they receive
  (the bot's default `--receive count`, load-test peers) neither reassemble nor decode.
- Fallback: receivers decode as aiortc's do, and the agent reads and discards what nobody
  consumes.

**`counting_path`** (`agent.patches.receiver`; aiortc 1.16.0, aioice 0.13.0, pylibsrtp 1.0.0)

- Replaces, per connected counting connection, `aioice.ice.Connection.data_received`; reaches into
  the DTLS transport's SRTP session, router and counters and the receiver's statistics.
- Why: even a counting receiver's audio RTP went through aioice's queue, the DTLS transport's
  reader task and a chain of coroutines per packet, only to be counted.
- Works on the receivers of `counting_receivers`: without that patch it is not at work either.
- Fallback: aiortc's receive path, where counting receivers count it.

**`one_stream_player`** (`agent.patches.player`; aiortc 1.16.0, av 18.1.0)

- Replaces, per player, `MediaPlayer.__streams` and the unplayed one of `__audio`/`__video`.
- Why: a MediaPlayer decodes and queues every stream of the file whether its track is read or
  not; the agent plays one kind per player, and the other's frames would pile up without bound.
- Fallback: both streams are decoded; the agent discards the other stream's frames as it plays.

**`audio_jitter_buffer`** (`agent.patches.recovery`; aiortc 1.16.0)

- Replaces `aiortc.rtcrtpreceiver.RTCRtpReceiver.__init__` (wrapped), and per audio receiver its
  `__jitter_buffer` with an `AudioJitterBuffer`.
- Why: aiortc's audio jitter buffer stops at a lost packet until it holds 16, then discards the
  four frames queued ahead of the hole: each lost packet costs five frames, and from the first
  loss on audio plays about 300 ms late. The agent's releases the oldest packet it holds once
  more than four are queued, stepping over holes: a loss costs its own frame, the delay stays
  80 ms (as aiortc's on a perfect link); a packet later than what was played is dropped.
- Fallback: aiortc's audio jitter buffer.

**`video_loss_recovery`** (`agent.patches.recovery`; aiortc 1.16.0)

- Replaces `aiortc.rtcrtpreceiver.RTCRtpReceiver.__init__` (wrapped), and per video receiver its
  `__nack_generator` and `__jitter_buffer` (a `RecoveringNackGenerator` and a
  `RecoveringJitterBuffer`, subclasses of aiortc's).
- Why: aiortc asks for a missing video packet again only when a later gap appears, so a hole
  whose NACK or retransmission was lost (a clean link after a loss burst) holds every later
  frame until 512 packets have arrived, 10 s or more, before a keyframe request restarts the
  video. The agent asks again for each packet still missing about once a round trip (up to four
  NACKs; the round trip is estimated from the answers to earlier ones, 150 ms until one came),
  and gives it up three round trips (at least 250 ms) after it went missing, or once the sender
  no longer keeps it (128 packets later). A hole given up at the head of the
  jitter buffer drops the frames it broke and sends a keyframe request (PLI) at once, at most
  one every 300 ms.
- Fallback: aiortc's NACKs and video jitter buffer.

**`video_nack_prompt`** (`agent.patches.nack_prompt`; aiortc 1.16.0)

- Replaces `aiortc.rtcrtpsender.RTCRtpSender._handle_rtcp_packet` and
  `aiortc.rtcdtlstransport.RTCDtlsTransport._send_rtp` (both wrapped: every packet still goes
  through aiortc's).
- Why: the remote end may be a plain aiortc receiver, which asks again for a missing video packet
  only when a later gap appears: after a lost NACK or retransmission on a link that then runs
  clean, its video stalls for 10 s or more. After a NACK, once the receiver has been quiet for
  250 ms, the agent's video sender sends two consecutive packets in swapped order; the gap makes
  the receiver list every packet it still misses, and those are retransmitted. A NACK naming only
  the swapped packet stops the prompts (the receiver misses nothing else), as does 2 s without a
  NACK naming a missing packet. The cost is one packet late per prompt (by a frame interval at
  most: it leaves right after the next one).
- Fallback: aiortc's sender; a plain aiortc receiver can stall after a loss burst.

Not a patch, and never installed: `agent.patches.observe.watch_jitter_buffer(receiver, ...)`
(aiortc 1.16.0) dates the frames one receiver's private jitter buffer takes in and releases,
changing nothing it does. Measurement code calls it per receiver (`JitterBufferWatch`).
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from agent.patches import (
    certificate,
    descriptions,
    ice,
    nack_prompt,
    player,
    receiver,
    recovery,
    sender,
)
from agent.patches._patch import VERIFIED_VERSIONS, Patch

__all__ = [
    "PATCHES",
    "VERIFIED_VERSIONS",
    "Patch",
    "install",
    "installed",
    "uninstall",
    "version_mismatches",
]

log = logging.getLogger(__name__)

# In the order they are installed (and the reverse of the order they are taken out).
PATCHES: Mapping[str, Patch] = MappingProxyType(
    {
        patch.name: patch
        for patch in (
            ice.HOST_ADDRESSES,
            ice.GATHER_TIMEOUT,
            descriptions.REMOTE_DESCRIPTIONS,
            certificate.SHARED_CERTIFICATE,
            sender.PACKET_PUMP,
            receiver.COUNTING_RECEIVERS,
            receiver.COUNTING_PATH,
            player.ONE_STREAM_PLAYER,
            recovery.AUDIO_JITTER_BUFFER,
            recovery.VIDEO_LOSS_RECOVERY,
            nack_prompt.VIDEO_NACK_PROMPT,
        )
    }
)

_versions_checked = False


def install(*, skip: Iterable[str] = (), only: Iterable[str] | None = None) -> frozenset[str]:
    """Install the patches (all of them, or `only` these) except `skip`; returns `installed()`.

    Idempotent: a patch already in place is left as it is, and one that refused (an internal it
    relies on has moved; a warning said so) is not tried again until `uninstall()`. Unknown names
    raise ValueError. Call it once at a process's entry point, before any connection is made.
    """
    global _versions_checked
    wanted = _names(only) if only is not None else set(PATCHES)
    wanted -= _names(skip)
    if not _versions_checked:
        _versions_checked = True
        for name, (found, verified) in version_mismatches().items():
            log.warning(
                "%s %s is installed; the aiortc/aioice patches were checked against %s",
                name,
                found or "(missing)",
                verified,
            )
    for patch in PATCHES.values():
        if patch.name not in wanted or patch.installed or patch.declined is not None:
            continue
        reason = patch.apply()
        if reason is None:
            patch.installed = True
        else:
            patch.declined = reason
            log.warning("patch %s not installed: %s; %s", patch.name, reason, patch.fallback)
    return installed()


def installed() -> frozenset[str]:
    """The names of the patches in place."""
    return frozenset(name for name, patch in PATCHES.items() if patch.installed)


def uninstall(names: Iterable[str] | None = None) -> None:
    """Take patches out again (all, or `names`): aiortc's and aioice's own code runs from then on.

    For tests. Objects a patch already changed (a connection, a player) keep that change.
    """
    wanted = _names(names) if names is not None else set(PATCHES)
    for patch in list(PATCHES.values())[::-1]:
        if patch.name not in wanted:
            continue
        if patch.installed:
            patch.restore()
            patch.installed = False
        patch.declined = None


def version_mismatches() -> dict[str, tuple[str | None, str]]:
    """{library: (installed version or None, verified version)} for every library that differs."""
    found: dict[str, tuple[str | None, str]] = {}
    for name, verified in VERIFIED_VERSIONS.items():
        try:
            version: str | None = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = None
        if version != verified:
            found[name] = (version, verified)
    return found


def _names(names: Iterable[str]) -> set[str]:
    if isinstance(names, str):
        names = {names}  # a single name, not its letters
    chosen = set(names)
    unknown = chosen - set(PATCHES)
    if unknown:
        raise ValueError(
            f"unknown patch: {', '.join(sorted(unknown))} (known: {', '.join(PATCHES)})"
        )
    return chosen
