"""aiortc: setRemoteDescription without its deep copies and without waiting on the event loop.

When fifty answers arrive in one poll, each one's setRemoteDescription starts in the same turn of
the event loop, and each then waits several turns for tasks it made itself: every answer was
applied only after all the others, with their peers' ICE and DTLS work in between. The patch
`remote_descriptions` puts two functions, and a view of asyncio, in aiortc's peer-connection
module, for every connection of the process:

- Codec matching (`find_common_codecs`) deep-copied every matching codec and parsed H.264 profile
  strings again for every pair compared: half of what setRemoteDescription cost before its first
  await. The version here returns equal codecs (fresh objects, lists and dicts, as aiortc's) from a
  flat copy - codec parameters hold only strings and numbers - and remembers parsed profiles.
- Remote candidates (`add_remote_candidates`) were added by a task per transport and a task per
  candidate, gathered twice. Adding an address candidate never waits (aioice only waits to resolve
  an mDNS name, and the session drops those), so the version here runs the additions at once and
  hands setRemoteDescription an already-finished awaitable, which its `asyncio.gather` (the module's
  `asyncio` is replaced by a view whose `gather` passes finished additions straight through) then
  returns at once. setRemoteDescription then completes in the step that started it. A candidate
  whose addition does wait is finished by a task, as before.

tests/agent/test_remote_description.py and tests/browser/test_browser_codecs.py compare the codecs
with aiortc's on the SDP of aiortc and Chromium, and check that an answer is applied without a loop
turn and media then flows.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any

import aiortc.rtcpeerconnection as _peerconnection
from aiortc import RTCIceTransport, rtp, sdp
from aiortc.codecs import is_rtx
from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpCodecParameters

from agent.patches._patch import Patch

# aiortc's own matching, for comparison (read here, before anything can have replaced it)
aiortc_find_common_codecs = _peerconnection.find_common_codecs
_saved: dict[str, Any] = {}


def _apply() -> str | None:
    module: Any = _peerconnection
    if (
        module.asyncio is not asyncio
        or not callable(getattr(module, "add_remote_candidates", None))
        or not callable(getattr(module, "find_common_codecs", None))
    ):
        return "aiortc.rtcpeerconnection no longer looks as expected"
    for name in ("find_common_codecs", "add_remote_candidates", "asyncio"):
        _saved[name] = getattr(module, name)
    module.find_common_codecs = find_common_codecs
    module.add_remote_candidates = add_remote_candidates
    module.asyncio = _AsyncioWithPassThroughGather()
    return None


def _restore() -> None:
    for name, value in _saved.items():
        setattr(_peerconnection, name, value)
    _saved.clear()


REMOTE_DESCRIPTIONS = Patch(
    name="remote_descriptions",
    replaces=(
        "aiortc.rtcpeerconnection.find_common_codecs",
        "aiortc.rtcpeerconnection.add_remote_candidates",
        "aiortc.rtcpeerconnection.asyncio",
    ),
    why=(
        "With fifty answers in one poll, every answer was applied only after all the others: "
        "setRemoteDescription deep-copied codecs (half its cost before its first await) and "
        "waited several turns of the event loop for a task per candidate. Patched, it completes "
        "in the step that started it, with the same codecs and candidates."
    ),
    fallback="aiortc's own setRemoteDescription: the same result, later and at a higher cost.",
    libraries=("aiortc",),
    apply=_apply,
    restore=_restore,
)


# --- codecs -------------------------------------------------------------------------------------


def find_common_codecs(
    local_codecs: list[RTCRtpCodecParameters], remote_codecs: list[RTCRtpCodecParameters]
) -> list[RTCRtpCodecParameters]:
    """aiortc's `find_common_codecs`, same result."""
    common: list[RTCRtpCodecParameters] = []
    common_base: dict[int | None, RTCRtpCodecParameters] = {}
    for remote in remote_codecs:
        if is_rtx(remote):
            # RTX only for a base codec already accepted, at its clock rate
            apt = remote.parameters.get("apt")
            if isinstance(apt, int) and apt in common_base:
                if remote.clockRate == common_base[apt].clockRate:
                    common.append(_copy(remote, remote.rtcpFeedback))
            continue
        for local in local_codecs:
            if _compatible(local, remote):
                feedback = [f for f in local.rtcpFeedback if f in remote.rtcpFeedback]
                codec = _copy(local, feedback)
                if remote.payloadType in rtp.DYNAMIC_PAYLOAD_TYPES:
                    codec.payloadType = remote.payloadType
                common.append(codec)
                common_base[codec.payloadType] = codec
                break
    return common


def _copy(codec: RTCRtpCodecParameters, feedback: list[RTCRtcpFeedback]) -> RTCRtpCodecParameters:
    return RTCRtpCodecParameters(
        mimeType=codec.mimeType,
        clockRate=codec.clockRate,
        channels=codec.channels,
        payloadType=codec.payloadType,
        rtcpFeedback=[RTCRtcpFeedback(type=f.type, parameter=f.parameter) for f in feedback],
        parameters=dict(codec.parameters),
    )


def _compatible(a: RTCRtpCodecParameters, b: RTCRtpCodecParameters) -> bool:
    if a.mimeType.lower() != b.mimeType.lower() or a.clockRate != b.clockRate:
        return False
    if a.mimeType.lower() != "video/h264":
        return True
    try:
        return _packetization(a) == _packetization(b) and _profile(a) == _profile(b)
    except ValueError:
        return False


def _packetization(codec: RTCRtpCodecParameters) -> int:
    return int(str(codec.parameters.get("packetization-mode", "0")))


def _profile(codec: RTCRtpCodecParameters) -> sdp.H264Profile:
    # no profile-level-id means constrained baseline level 3.1 (as aiortc and older WebRTC read it)
    return _parse_profile(str(codec.parameters.get("profile-level-id", "42E01F")))


@functools.lru_cache(maxsize=256)
def _parse_profile(profile_level_id: str) -> sdp.H264Profile:
    return sdp.parse_h264_profile_level_id(profile_level_id)[0]


# --- candidates ---------------------------------------------------------------------------------


class _Added:
    """What `add_remote_candidates` returns when everything was added: awaiting it returns None."""

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()


def add_remote_candidates(
    transport: RTCIceTransport, media: sdp.MediaDescription
) -> Awaitable[None]:
    """aiortc's `add_remote_candidates`, done at once where adding a candidate does not wait."""
    waiting = [
        rest
        for candidate in media.ice_candidates
        if (rest := _start(transport.addRemoteCandidate(candidate))) is not None
    ]
    if waiting:
        return asyncio.ensure_future(_finish(transport, media, waiting))
    if media.ice_candidates_complete:
        rest = _start(transport.addRemoteCandidate(None))
        if rest is not None:
            return rest
    return _Added()


async def _finish(
    transport: RTCIceTransport, media: sdp.MediaDescription, waiting: list[asyncio.Future[Any]]
) -> None:
    await asyncio.gather(*waiting)
    if media.ice_candidates_complete:
        await transport.addRemoteCandidate(None)


def _start(coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any] | None:
    """Run `coro` up to its first wait: None when it finished, else a task running the rest."""
    try:
        waits_for = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_rest_of(coro, waits_for))


async def _rest_of(coro: Coroutine[Any, Any, Any], waits_for: Any) -> Any:
    return await _Continue(coro, waits_for)


class _Continue:
    """Awaits the rest of a coroutine that was started by hand and now waits for `waits_for`."""

    def __init__(self, coro: Coroutine[Any, Any, Any], waits_for: Any) -> None:
        self._coro = coro
        self._waits_for = waits_for

    def __await__(self) -> Generator[Any, Any, Any]:
        waits_for = self._waits_for
        while True:
            try:
                value = yield waits_for
            except BaseException as exc:  # thrown in by the task (cancellation): pass it on
                try:
                    waits_for = self._coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    waits_for = self._coro.send(value)
                except StopIteration as stop:
                    return stop.value


class _AsyncioWithPassThroughGather:
    """The asyncio module as aiortc's peer-connection module sees it: `gather` of candidate
    additions that are all done is already done (asyncio's would wait two turns for it)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    def gather(*awaitables: Any, return_exceptions: bool = False) -> asyncio.Future[list[Any]]:
        if awaitables and all(isinstance(a, _Added) for a in awaitables):
            done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
            done.set_result([None] * len(awaitables))
            return done
        return asyncio.gather(*awaitables, return_exceptions=return_exceptions)
