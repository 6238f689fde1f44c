"""The states of a PeerSession and the transitions between them, written down once.

`PeerSession` changes state only through one method that checks `TRANSITIONS`; a change the table
does not allow is a bug, logged as an error and refused, so the table stays true. The architecture
docs draw the state diagram from `TRANSITIONS` and `REASONS`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType


class PeerState(enum.StrEnum):
    NEW = "new"  # created by a first signal or a call; no negotiation yet
    NEGOTIATING = "negotiating"  # an offer/answer exchange or an ICE restart is under way
    CONNECTED = "connected"  # the connection is up and packets arrive
    DISCONNECTED = "disconnected"  # it was up; silent for media_timeout, or it failed
    FAILED = "failed"  # given up; the session closes next
    CLOSED = "closed"  # the connection is closed; final


INITIAL = PeerState.NEW
FINAL = PeerState.CLOSED

# Why each allowed transition happens: (from, to) -> reason. The only place edges are written.
REASONS: Mapping[tuple[PeerState, PeerState], str] = MappingProxyType(
    {
        (PeerState.NEW, PeerState.NEGOTIATING): "an offer is made, or a remote offer answered",
        (PeerState.NEW, PeerState.FAILED): "nothing negotiated within session_timeout",
        (PeerState.NEW, PeerState.CLOSED): "closed before negotiating",
        (PeerState.NEGOTIATING, PeerState.CONNECTED): "the peer connection connected",
        (PeerState.NEGOTIATING, PeerState.FAILED): (
            "not connected within session_timeout, or ICE restarts exhausted"
        ),
        (PeerState.NEGOTIATING, PeerState.CLOSED): "closed while negotiating",
        (PeerState.CONNECTED, PeerState.DISCONNECTED): (
            "no packet for media_timeout, or the connection failed"
        ),
        (PeerState.CONNECTED, PeerState.CLOSED): "closed (the remote left, or the agent stops)",
        (PeerState.DISCONNECTED, PeerState.NEGOTIATING): (
            "an ICE restart after ice_restart_after, or a remote offer"
        ),
        (PeerState.DISCONNECTED, PeerState.FAILED): "ICE restarts exhausted",
        (PeerState.DISCONNECTED, PeerState.CLOSED): "closed while disconnected",
        (PeerState.FAILED, PeerState.CLOSED): "a failed session always closes",
    }
)

# state -> the states it may change to
TRANSITIONS: Mapping[PeerState, frozenset[PeerState]] = MappingProxyType(
    {
        state: frozenset(target for (source, target) in REASONS if source is state)
        for state in PeerState
    }
)


def allowed(source: PeerState, target: PeerState) -> bool:
    """Whether a session may change from `source` to `target`."""
    return target in TRANSITIONS[source]
