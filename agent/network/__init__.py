"""Impaired networks for tests and benchmarks: two network namespaces joined by a veth pair
whose directions lose, delay, reorder and cap packets as a named profile says (docs/network.md).

A leaf: it imports no other agent module, so any layer, test or benchmark can use it.
"""

from agent.network.forward import TcpForwarder
from agent.network.link import (
    LANES,
    ImpairedLink,
    Lane,
    LaneStats,
    LinkError,
    LinkStats,
    Side,
    SideName,
)
from agent.network.profiles import (
    PROFILE_NAMES,
    PROFILES,
    Impairment,
    Profile,
    UnknownProfileError,
    parse_profile,
)

__all__ = [
    "LANES",
    "PROFILES",
    "PROFILE_NAMES",
    "ImpairedLink",
    "Impairment",
    "Lane",
    "LaneStats",
    "LinkError",
    "LinkStats",
    "Profile",
    "Side",
    "SideName",
    "TcpForwarder",
    "UnknownProfileError",
    "parse_profile",
]
