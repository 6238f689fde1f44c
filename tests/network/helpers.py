"""What tests/network asks the kernel directly: network namespace ids (rtnetlink), which prove
that a namespace is gone (the kernel drops a namespace's id everywhere when it removes it)."""

from __future__ import annotations

import os
import socket
import struct

RTM_NEWNSID = 88
RTM_GETNSID = 90
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NETNSA_NSID = 1
NETNSA_FD = 3
NLMSG = struct.Struct("=IHHII")
NLA = struct.Struct("=HH")


def _attr(kind: int, value: bytes) -> bytes:
    data = NLA.pack(NLA.size + len(value), kind) + value
    return data + bytes(-len(data) % 4)


def _attrs(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while len(data) >= NLA.size:
        length, kind = NLA.unpack_from(data)
        found[kind & 0x3FFF] = data[NLA.size : length]
        data = data[(length + 3) & ~3 :]
    return found


def _ask(kind: int, flags: int, attrs: bytes) -> list[dict[int, bytes]]:
    """One rtnetlink request (rtgenmsg + attrs); the attributes of each reply message."""
    body = struct.pack("=B3x", socket.AF_UNSPEC) + attrs
    replies: list[dict[int, bytes]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.send(NLMSG.pack(NLMSG.size + len(body), kind, NLM_F_REQUEST | flags, 1, 0) + body)
        while True:
            data = sock.recv(65536)
            while data:
                length, msg_type, _, _, _ = NLMSG.unpack_from(data)
                payload = data[NLMSG.size : length]
                data = data[(length + 3) & ~3 :]
                if msg_type == NLMSG_DONE:
                    return replies
                if msg_type == NLMSG_ERROR:
                    (error,) = struct.unpack_from("=i", payload)
                    if error:
                        raise OSError(-error, os.strerror(-error))
                    return replies
                replies.append(_attrs(payload[4:]))
                if not flags & NLM_F_DUMP:
                    return replies


def assign_nsid(netns_fd: int) -> int:
    """Give the namespace `netns_fd` an id in the caller's namespace, and return it."""
    fd = _attr(NETNSA_FD, struct.pack("=I", netns_fd))
    _ask(RTM_NEWNSID, NLM_F_ACK, fd + _attr(NETNSA_NSID, struct.pack("=i", -1)))
    (reply,) = _ask(RTM_GETNSID, 0, fd)
    (nsid,) = struct.unpack("=i", reply[NETNSA_NSID])
    return int(nsid)


def nsids() -> set[int]:
    """The ids the caller's namespace holds for namespaces that still exist."""
    return {struct.unpack("=i", r[NETNSA_NSID])[0] for r in _ask(RTM_GETNSID, NLM_F_DUMP, b"")}


def netns_fds() -> set[str]:
    """The network namespaces this process holds open fds of ('net:[inode]')."""
    held = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("net:"):
            held.add(target)
    return held
