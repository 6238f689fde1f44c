"""aioice: the local addresses ICE gathers on, and how long it waits for STUN and TURN servers.

aioice looks both up when a connection gathers its candidates (inside aiortc's
`setLocalDescription`), by a module function and a method:

- `ice_host_addresses` replaces `aioice.ice.get_host_addresses` with one that returns the addresses
  given to `pin_host_addresses()` (the `--ice-host` setting), or aioice's own list while none are
  pinned. The setting is process-wide: it holds for every connection gathered after it is set.
- `ice_gather_timeout` replaces `aioice.ice.Connection.get_component_candidates` with one that
  waits no longer than the limit of the caller's context, set per session with
  `with gathering_timeout(seconds):` around `setLocalDescription`. aioice hands its 5 s timeout
  only to `asyncio.wait`, so a smaller one just stops waiting sooner; host candidates never wait.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import aioice
import aioice.ice

from agent.patches._patch import Patch

_saved: dict[str, Any] = {}

# --- host addresses ---------------------------------------------------------------------------

_pinned: tuple[str, ...] | None = None


def pin_host_addresses(addresses: Sequence[str] | None) -> None:
    """Gather host candidates only on `addresses` from now on (process-wide); None: aioice's choice.

    Raises ValueError if one is not an IP address. Takes effect while `ice_host_addresses` is
    installed; until then aioice offers every interface address but loopback.
    """
    global _pinned
    if addresses is None:
        _pinned = None
        return
    for address in addresses:
        ipaddress.ip_address(address)  # raises ValueError on a bad address
    _pinned = tuple(addresses)


def pinned_host_addresses() -> tuple[str, ...] | None:
    """The addresses set by `pin_host_addresses()`, or None."""
    return _pinned


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """aioice's `get_host_addresses`, limited to the pinned addresses when there are any."""
    if _pinned is None:
        original: Callable[[bool, bool], list[str]] = _saved["get_host_addresses"]
        return original(use_ipv4, use_ipv6)
    return [
        a
        for a in _pinned
        if (use_ipv4 and ipaddress.ip_address(a).version == 4)
        or (use_ipv6 and ipaddress.ip_address(a).version == 6)
    ]


def _apply_host_addresses() -> str | None:
    current = getattr(aioice.ice, "get_host_addresses", None)
    if not callable(current):
        return "aioice.ice has no get_host_addresses"
    _saved["get_host_addresses"] = current
    aioice.ice.get_host_addresses = _get_host_addresses
    return None


def _restore_host_addresses() -> None:
    aioice.ice.get_host_addresses = _saved.pop("get_host_addresses")


HOST_ADDRESSES = Patch(
    name="ice_host_addresses",
    replaces=("aioice.ice.get_host_addresses",),
    why=(
        "aioice has no setting for the addresses it gathers host candidates on: it offers every "
        "interface but loopback. Tests, the demo and load runs on one machine pin it to 127.0.0.1 "
        "so that no packet leaves loopback (`--ice-host`); a multi-homed host picks its media "
        "interface."
    ),
    fallback=(
        "aioice gathers on every interface address but loopback; `--ice-host` has no effect "
        "(a warning says so)."
    ),
    libraries=("aioice",),
    apply=_apply_host_addresses,
    restore=_restore_host_addresses,
)

# --- gathering timeout ------------------------------------------------------------------------

_gather_timeout: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "agent_ice_gather_timeout", default=None
)


@contextlib.contextmanager
def gathering_timeout(seconds: float | None) -> Iterator[None]:
    """Candidates gathered inside this block (and the tasks it starts) wait at most `seconds` for
    STUN/TURN servers; None: aioice's 5 s.

    Per context, so per session: the agent wraps each `setLocalDescription` of a session with its
    own `SessionSettings.gather_timeout`. Has no effect while `ice_gather_timeout` is not
    installed.
    """
    token = _gather_timeout.set(seconds)
    try:
        yield
    finally:
        _gather_timeout.reset(token)


async def _get_component_candidates(
    self: aioice.ice.Connection,
    component: int,
    addresses: list[str],
    timeout: int = 5,  # noqa: ASYNC109 - aioice's signature
) -> list[aioice.Candidate]:
    """aioice's `get_component_candidates`, waiting at most the context's gathering timeout."""
    original = _saved["get_component_candidates"]
    limit = _gather_timeout.get()
    # aioice annotates the timeout as int but only hands it to asyncio.wait
    bounded = timeout if limit is None else min(timeout, limit)
    result: list[aioice.Candidate] = await original(self, component, addresses, timeout=bounded)
    return result


def _apply_gather_timeout() -> str | None:
    current = aioice.ice.Connection.__dict__.get("get_component_candidates")
    if current is None:
        return "aioice.ice.Connection has no get_component_candidates"
    _saved["get_component_candidates"] = current
    setattr(aioice.ice.Connection, "get_component_candidates", _get_component_candidates)  # noqa: B010 - mypy forbids assigning a method
    return None


def _restore_gather_timeout() -> None:
    original = _saved.pop("get_component_candidates")
    setattr(aioice.ice.Connection, "get_component_candidates", original)  # noqa: B010


GATHER_TIMEOUT = Patch(
    name="ice_gather_timeout",
    replaces=("aioice.ice.Connection.get_component_candidates",),
    why=(
        "aiortc gathers every candidate inside setLocalDescription, and aioice waits 5 s for a "
        "STUN or TURN server that does not answer: one dead server in the meeting's ICE "
        "configuration would delay every offer and answer by 5 s. The agent caps the wait per "
        "session (`SessionSettings.gather_timeout`, 1 s); a server that answers later only loses "
        "its candidate for that connection."
    ),
    fallback="gathering waits aioice's 5 s for a STUN/TURN server that does not answer.",
    libraries=("aioice", "aiortc"),
    apply=_apply_gather_timeout,
    restore=_restore_gather_timeout,
)
