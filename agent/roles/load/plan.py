"""What a load run does: the command's flags, checked, plus who is who."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from agent.network import PROFILE_NAMES, UnknownProfileError, parse_profile

Topology = Literal["mesh", "star"]
MediaMode = Literal["full", "preencoded", "none"]
LinkSide = Literal["a", "b"]


class PlanError(ValueError):
    """A bad combination of flags; str() is one line."""


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
        if not match:
            raise PlanError(f"--shard: expected I/N (e.g. 0/4), got {text!r}")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or not 0 <= index < count:
            raise PlanError(f"--shard: need 0 <= I < N, got {text!r}")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class LoadPlan:
    url: str
    meetings: int
    peers_per_meeting: int
    duration: float
    report_dir: Path
    ramp: float = 10.0  # participants started per second (whole run)
    topology: Topology = "mesh"
    media: MediaMode = "preencoded"
    tokens_file: Path | None = None
    admin_key: str | None = None  # dev backend: mint identities with /admin/tokens
    procs: int = 1
    shard: Shard = field(default_factory=Shard)
    ice_host_addresses: tuple[str, ...] = ()
    connect_timeout: float = 30.0
    # a profile of agent.network: participants on the two sides of an ImpairedLink
    network: str | None = None
    # mouth-to-ear: each participant measures up to this many of the audio streams it receives
    # (senders mark their audio while it is above 0; agent.media.marks)
    mouth_to_ear: int = 1

    def __post_init__(self) -> None:
        if self.meetings < 1 or self.peers_per_meeting < 2:
            raise PlanError("--meetings must be >= 1 and --peers-per-meeting >= 2")
        if self.duration <= 0 or self.ramp <= 0:
            raise PlanError("--duration and --ramp must be positive")
        if self.procs < 1:
            raise PlanError("--procs must be >= 1")
        if self.mouth_to_ear < 0:
            raise PlanError("--mouth-to-ear must be >= 0 (0: not measured)")
        if self.tokens_file is None and not self.admin_key:
            raise PlanError(
                "identities: give --tokens FILE, or the dev backend's admin key "
                "(--admin-key or CONNVO_DEVSERVER_ADMIN_KEY) to create them"
            )
        if self.network is not None:
            try:
                parse_profile(self.network)
            except UnknownProfileError:
                raise PlanError(
                    f"--network: unknown profile {self.network!r}; "
                    f"choose one of {', '.join(PROFILE_NAMES)}"
                ) from None
            if self.ice_host_addresses:
                raise PlanError("--network gathers ICE on each side's address: drop --ice-host")
            backend_address(self.url)

    @property
    def workers_per_side(self) -> tuple[int, int]:
        """With --network: worker processes on side A and on side B (at least one each)."""
        return max(1, (self.procs + 1) // 2), max(1, self.procs // 2)

    @property
    def marks(self) -> bool:
        """Whether participants mark the audio they send and measure what they receive."""
        return self.mouth_to_ear > 0 and self.media != "none"

    def expected_sessions(self, identity: Identity) -> int:
        """The connections `identity` should end up with."""
        if self.topology == "star" and not identity.hub:
            return 1
        return self.peers_per_meeting - 1

    @property
    def participants(self) -> int:
        return self.meetings * self.peers_per_meeting

    def describe(self) -> dict[str, Any]:
        """The plan as reported (never the admin key)."""
        data = asdict(self)
        data.pop("admin_key")
        data["report_dir"] = str(self.report_dir)
        data["tokens_file"] = str(self.tokens_file) if self.tokens_file else None
        data["shard"] = str(self.shard)
        return data


@dataclass(frozen=True)
class Identity:
    """One simulated participant: a real user with its own token, in one meeting."""

    name: str
    token: str
    user_id: str
    meeting_id: str = ""
    hub: bool = False  # star topology: the participant everyone else calls
    hub_user_id: str | None = None  # star topology: whom this participant calls
    side: LinkSide | None = None  # --network: the side of the link it runs on

    def __repr__(self) -> str:  # never show the token
        return f"Identity({self.name}, user={self.user_id}, meeting={self.meeting_id})"


def link_side(position: int, topology: Topology) -> LinkSide:
    """The side of the link of a meeting's `position`-th participant (0: its host).

    Star: the hub on side A, everyone else on side B, so every connection crosses the link.
    Mesh: alternately A and B, so a connection crosses it when its two ends differ in parity
    (all of them in meetings of two).
    """
    if topology == "star":
        return "a" if position == 0 else "b"
    return "a" if position % 2 == 0 else "b"


def backend_address(url: str) -> tuple[str, int]:
    """The IPv4 address and port of a backend URL that a side of the link can be given (a
    forwarder listens there inside each side): an IP literal or localhost, http only."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise PlanError(
            f"--network: the backend URL must name an IPv4 address or localhost, not {host!r} "
            "(the link's sides cannot resolve names)"
        ) from None
    if parts.scheme != "http" or not isinstance(ip, ipaddress.IPv4Address):
        raise PlanError(f"--network: needs an http:// URL with an IPv4 address, not {url!r}")
    return host, port
