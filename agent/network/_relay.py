"""The relay of an ImpairedLink: the process that carries each side's packets to the other side,
losing, delaying and reordering them as the direction's Impairment says.

Each side's namespace routes everything it sends over the link into a TUN device. The relay
reads a packet from side A's TUN device, decides its fate (`agent.network.model`), holds it until
its release time, and writes it as an Ethernet frame onto side A's veth, whose other end is side
B's: side B receives it from the veth like any frame. On the way out of the veth the frame passes
the direction's bandwidth cap (a TBF qdisc); a frame the cap's full queue refuses comes back as
ENOBUFS and is counted as `capped`.

Started by ImpairedLink as `python -m agent.network._relay CONFIG` with both namespaces' fds
inherited; CONFIG is JSON: {"lanes": {LANE: {"netns": fd, "tun": name, "veth": name, "src_mac":
mac, "dst_mac": mac}}, "impairments": {LANE: Impairment.to_dict()}, "seed": int | null,
"hold_limit": packets}, LANE being "a_to_b" or "b_to_a".

Protocol, one JSON object per line: first {"ready": true, "pid": pid} on stdout, then a reply
{"id": ID, "ok": true, ...} or {"id": ID, "ok": false, "error": text} per command on stdin:
  {"id": ID, "op": "set", "lane": LANE, "impairment": {...}}  new packets follow it from now on
  {"id": ID, "op": "stats"}                   -> "stats": {LANE: counters}, "cpu_s": seconds
  {"id": ID, "op": "idle", "lane": LANE, "sent": N, "timeout_s": T}
                                              answered once N packets in all have entered the
                                              lane (unread + taken) and it holds none -> "stats"
                                              as above; or after T seconds, refused
End of stdin (the link closing, or its process dying): the relay exits. It also dies with its
parent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import itertools
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass
from random import Random
from typing import Any

from agent.network import _ns
from agent.network.model import LaneModel, lane_random
from agent.network.profiles import Impairment

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
ETH_P_IP = b"\x08\x00"
ETH_P_IPV6 = b"\x86\xdd"
# Packets read from one TUN device per wakeup before the other side and the timers get a turn.
READ_BATCH = 64
# The socket buffer of the veth writer: what the bandwidth cap's queue may hold of the relay's
# frames (skbs in a qdisc count against their socket), as far as net.core.wmem_max allows.
SNDBUF = 4 * 1024 * 1024


@dataclass
class Counters:
    """One direction's packets so far: what the side sent = unread + taken, and
    taken = lost + overflow + capped + errors + sent + held."""

    unread: int = 0  # dropped by the TUN device, full because the relay did not read in time
    taken: int = 0  # read from the sending side's TUN device
    lost: int = 0  # lost by the loss model
    overflow: int = 0  # dropped because the relay already held hold_limit packets
    capped: int = 0  # refused by the bandwidth cap's full queue (ENOBUFS)
    errors: int = 0  # failed to write for another reason
    sent: int = 0  # written onto the veth (they reach the other side)
    sent_bytes: int = 0  # their IP bytes
    held: int = 0  # waiting for their release time now
    late_max_us: int = 0  # the longest a held packet left after its release time, in us


class Lane:
    """One direction: a TUN device to read, a veth to write, a model and counters."""

    def __init__(self, name: str, spec: dict[str, Any], model: LaneModel) -> None:
        self.name = name
        self.model = model
        self.counters = Counters()
        # Both are made inside the side's namespace: a TUN fd attaches to the device of that name
        # in the namespace it was opened in, a packet socket binds to an interface of its own.
        with _ns.entered(spec["netns"]):
            self.tun = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            flags = IFF_TUN | IFF_NO_PI
            fcntl.ioctl(self.tun, TUNSETIFF, struct.pack("16sH22x", spec["tun"].encode(), flags))
            self.out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # sends, never receives
            self.out.bind((spec["veth"], 0))
            self.out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            # The namespace's device counters (/proc/net/dev of the namespace it is opened in):
            # the TUN device's transmit drops are the packets the relay was too slow to read.
            self.devices = open("/proc/thread-self/net/dev", "rb", buffering=0)
        self.tun_name = spec["tun"].encode()
        self.out.setblocking(False)
        macs = bytes.fromhex(spec["dst_mac"].replace(":", "") + spec["src_mac"].replace(":", ""))
        self.frame_v4 = macs + ETH_P_IP
        self.frame_v6 = macs + ETH_P_IPV6

    def update_unread(self) -> None:
        self.devices.seek(0)
        for line in self.devices.read().split(b"\n"):
            name, _, values = line.partition(b":")
            if name.strip() == self.tun_name:
                self.counters.unread = int(values.split()[11])  # transmit: drop

    def send(self, packet: bytes) -> None:
        header = self.frame_v4 if packet[0] >> 4 == 4 else self.frame_v6
        counters = self.counters
        try:
            self.out.send(header + packet)
        except OSError as exc:
            if exc.errno in (errno.ENOBUFS, errno.EAGAIN):
                counters.capped += 1
            else:
                counters.errors += 1
        else:
            counters.sent += 1
            counters.sent_bytes += len(packet)


class Relay:
    """Both directions' lanes, the heap of held packets, and the command channel."""

    def __init__(self, config: dict[str, Any]) -> None:
        seed = config.get("seed")
        self.hold_limit: int = config["hold_limit"]
        self.lanes: dict[str, Lane] = {}
        # One random stream per direction, shared by its successive impairments: with a seed, the
        # same packets meet the same fate run after run.
        self.rngs: dict[str, Random] = {}
        for name, spec in sorted(config["lanes"].items()):
            self.rngs[name] = lane_random(seed, name)
            impairment = Impairment.from_dict(config["impairments"][name])
            self.lanes[name] = Lane(name, spec, LaneModel(impairment, self.rngs[name]))
        self.by_fd = {lane.tun: lane for lane in self.lanes.values()}
        # (release time, arrival order, lane, packet)
        self.held: list[tuple[float, int, Lane, bytes]] = []
        self.order = itertools.count()
        # "idle" commands not answered yet: (id, lane, packets, deadline)
        self.waiting: list[tuple[Any, Lane, int, float]] = []
        self.pending = b""

    def run(self) -> int:
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)
        self.reply({"ready": True, "pid": os.getpid()})
        fds = [stdin, *self.by_fd]
        held = self.held
        monotonic = time.monotonic
        while True:
            # select() (not poll or epoll, whose timeouts are whole milliseconds): microseconds,
            # so a packet leaves within the timer slack (~50 us) of its release time.
            wake = held[0][0] if held else None
            if self.waiting:  # an "idle" command's deadline
                first = min(deadline for *_, deadline in self.waiting)
                wake = first if wake is None else min(wake, first)
            timeout = None if wake is None else max(0.0, wake - monotonic())
            readable, _, _ = select.select(fds, [], [], timeout)
            for fd in readable:
                if fd == stdin:
                    if not self.command_input(stdin):
                        return 0
                else:
                    self.take(self.by_fd[fd])
            now = monotonic()
            while held and held[0][0] <= now:
                release, _, lane, packet = heapq.heappop(held)
                counters = lane.counters
                counters.held -= 1
                late = int((now - release) * 1e6)
                if late > counters.late_max_us:
                    counters.late_max_us = late
                lane.send(packet)
            if self.waiting:
                self.answer_idle()

    def take(self, lane: Lane) -> None:
        """Read what the lane's TUN device has (a batch at most) and send, hold or drop each."""
        counters = lane.counters
        admit = lane.model.admit
        monotonic = time.monotonic
        for _ in range(READ_BATCH):
            try:
                packet = os.read(lane.tun, 65536)
            except BlockingIOError:
                return
            # Each packet's own time: one read while the sender goes on may take a while.
            now = monotonic()
            counters.taken += 1
            release = admit(now)
            if release is None:
                counters.lost += 1
            elif release <= now:
                lane.send(packet)
            elif counters.held >= self.hold_limit:
                counters.overflow += 1
            else:
                counters.held += 1
                heapq.heappush(self.held, (release, next(self.order), lane, packet))

    def command_input(self, stdin: int) -> bool:
        """Handle the complete command lines available; False at end of input."""
        try:
            chunk = os.read(stdin, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                self.command(line)
        return True

    def command(self, line: bytes) -> None:
        ident: Any = None
        try:
            request = json.loads(line)
            ident = request.get("id")
            op = request["op"]
            if op == "stats":
                self.reply({"id": ident, "ok": True, **self.stats()})
            elif op == "set":
                lane = self.lanes[request["lane"]]
                impairment = Impairment.from_dict(request["impairment"])
                lane.model = LaneModel(
                    impairment, self.rngs[lane.name], after=lane.model.last_release
                )
                self.reply({"id": ident, "ok": True})
            elif op == "idle":
                deadline = time.monotonic() + float(request["timeout_s"])
                lane = self.lanes[request["lane"]]
                self.waiting.append((ident, lane, int(request["sent"]), deadline))
                self.answer_idle()
            else:
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, KeyError, TypeError) as exc:
            self.reply({"id": ident, "ok": False, "error": f"{type(exc).__name__}: {exc}"})

    def answer_idle(self) -> None:
        still: list[tuple[Any, Lane, int, float]] = []
        now = time.monotonic()
        for ident, lane, sent, deadline in self.waiting:
            counters = lane.counters
            if counters.held == 0 and counters.taken + counters.unread < sent:
                lane.update_unread()
            entered = counters.taken + counters.unread
            if counters.held == 0 and entered >= sent:
                self.reply({"id": ident, "ok": True, **self.stats()})
            elif now >= deadline:
                error = (
                    f"not settled in time: {entered} of {sent} packets entered {lane.name}, "
                    f"{counters.held} held"
                )
                self.reply({"id": ident, "ok": False, "error": error})
            else:
                still.append((ident, lane, sent, deadline))
        self.waiting = still

    def stats(self) -> dict[str, Any]:
        for lane in self.lanes.values():
            lane.update_unread()
        return {
            "stats": {name: asdict(lane.counters) for name, lane in self.lanes.items()},
            "cpu_s": time.process_time(),
        }

    @staticmethod
    def reply(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def main(argv: list[str]) -> int:
    _ns.die_with_parent(signal.SIGKILL)
    config = json.loads(argv[1])
    return Relay(config).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
