"""Measure what a link does: UDP probe packets through one direction, and the figures they give.

A probe sends `count` numbered UDP packets at a steady `rate` from one side to the other, each
stamped with its send time, and takes each one's arrival time from the kernel (SO_TIMESTAMPNS):
both sides share one clock, so every packet's one-way delay is measured, not estimated. The relay's
counters say when every packet has left it (`ImpairedLink.settle`), so the probe knows how many to
wait for and never waits on a guess. The lane must carry nothing else meanwhile.

    scripts/isolated .venv/bin/python -m agent.network.probe            # every profile
    scripts/isolated .venv/bin/python -m agent.network.probe --profile bad --count 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from agent.network.link import LANE_ENDS, LANES, ImpairedLink, Lane, LaneStats
from agent.network.profiles import PROFILE_NAMES, Impairment, Profile, parse_profile

SO_TIMESTAMPNS = 35  # Linux's, absent from Python's socket module
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
TIMESPEC = struct.Struct("@qq")
# magic, run token, sequence number, send time (CLOCK_REALTIME, ns)
HEADER = struct.Struct("!4sIIq")
MAGIC = b"CVPR"
IP_UDP_BYTES = 28  # IPv4 and UDP headers
ETHERNET_BYTES = 14  # what the cap counts on top (its TBF sits on an Ethernet device)
RCVBUF = 4 * 1024 * 1024  # as far as net.core.rmem_max allows
MAX_LAG_S = 0.01


@dataclass(frozen=True)
class ProbeResult:
    """What `count` probe packets met on one direction of a link."""

    lane: Lane
    impairment: Impairment  # what the lane was set to do
    size: int  # UDP payload bytes of each packet
    tx_ns: Sequence[int]  # send time of packet i (CLOCK_REALTIME, ns)
    arrivals: Sequence[tuple[int, int]]  # (i, arrival time in ns), in arrival order
    relay: LaneStats  # the relay's counts for these packets
    sender_lag_ms: float = 0.0  # the longest the sender fell behind its schedule

    @property
    def sent(self) -> int:
        return len(self.tx_ns)

    @property
    def received(self) -> int:
        return len(self.arrivals)

    @property
    def loss(self) -> float:
        """The fraction of packets that did not arrive."""
        return 1 - self.received / self.sent if self.sent else 0.0

    @property
    def bursts(self) -> list[int]:
        """The lengths of the runs of consecutive lost packets, in sending order."""
        arrived = bytearray(self.sent)
        for seq, _ in self.arrivals:
            arrived[seq] = 1
        runs: list[int] = []
        run = 0
        for flag in arrived:
            if flag:
                if run:
                    runs.append(run)
                run = 0
            else:
                run += 1
        if run:
            runs.append(run)
        return runs

    @property
    def mean_burst(self) -> float:
        """The mean length of a loss burst, in packets (0 without loss)."""
        runs = self.bursts
        return sum(runs) / len(runs) if runs else 0.0

    @property
    def delays_ms(self) -> list[float]:
        """Each arrived packet's one-way delay, in ms, in arrival order."""
        return [(rx - self.tx_ns[seq]) / 1e6 for seq, rx in self.arrivals]

    @property
    def delay_mean_ms(self) -> float:
        return statistics.fmean(self.delays_ms) if self.arrivals else math.nan

    @property
    def jitter_ms(self) -> float:
        """The standard deviation of the one-way delay, in ms."""
        return statistics.pstdev(self.delays_ms) if self.received > 1 else math.nan

    def delay_quantile_ms(self, q: float) -> float:
        """The q-quantile of the one-way delay, in ms (0.5: the median; 1: the largest)."""
        delays = sorted(self.delays_ms)
        if not delays:
            return math.nan
        return delays[min(len(delays) - 1, int(q * len(delays)))]

    @property
    def jitter_robust_ms(self) -> float:
        """The delay's interquartile range / 1.349 (a normal distribution's standard deviation),
        in ms: `jitter_ms` unmoved by the few packets a busy machine delays by a scheduling slice
        (one packet held 100 ms longer adds 2 ms to the deviation of 2000)."""
        return (self.delay_quantile_ms(0.75) - self.delay_quantile_ms(0.25)) / 1.349

    @property
    def reordered(self) -> float:
        """The fraction of arrived packets that came after a later-sent one (RFC 4737's
        reordered packets)."""
        highest = -1
        late = 0
        for seq, _ in self.arrivals:
            if seq < highest:
                late += 1
            else:
                highest = seq
        return late / self.received if self.received else 0.0

    def _pairs(self) -> list[tuple[int, int, int]]:
        """(i, arrival of i, arrival of i + 1) for each pair of consecutive packets that arrived."""
        at = dict(self.arrivals)
        return [(i, at[i], at[i + 1]) for i in range(self.sent - 1) if i in at and i + 1 in at]

    @property
    def swapped(self) -> float:
        """The fraction of consecutive pairs (both arrived) that arrived the other way round."""
        pairs = self._pairs()
        return sum(1 for _, first, second in pairs if second < first) / len(pairs) if pairs else 0.0

    @property
    def expected_swapped(self) -> float:
        """`swapped` as the impairment predicts it for these send times: independent normal
        delays swap a pair sent g apart with probability P(N(0, 2 jitter^2) > g)."""
        pairs = self._pairs()
        jitter_ns = self.impairment.jitter_ms * 1e6
        if not pairs or not jitter_ns or self.impairment.in_order:
            return 0.0
        total = 0.0
        for i, _, _ in pairs:
            gap = self.tx_ns[i + 1] - self.tx_ns[i]
            total += 0.5 * math.erfc(gap / (2 * jitter_ns))
        return total / len(pairs)

    @property
    def throughput_kbit(self) -> float:
        """The arrival rate over the last 90 % of arrivals, in kbit/s counting Ethernet headers
        (as the cap does): the cap's rate when the probe sent faster than it."""
        times = sorted(rx for _, rx in self.arrivals)
        start = len(times) // 10
        if len(times) - start < 2 or times[-1] == times[start]:
            return math.nan
        frame_bits = (self.size + IP_UDP_BYTES + ETHERNET_BYTES) * 8
        return (len(times) - 1 - start) * frame_bits / ((times[-1] - times[start]) / 1e9) / 1000

    def summary(self) -> dict[str, Any]:
        """The figures, rounded, for a table or JSON."""
        return {
            "lane": self.lane,
            "sent": self.sent,
            "received": self.received,
            "loss": round(self.loss, 4),
            "mean_burst": round(self.mean_burst, 2),
            "delay_mean_ms": round(self.delay_mean_ms, 2),
            "jitter_ms": round(self.jitter_ms, 2),
            "delay_p50_ms": round(self.delay_quantile_ms(0.5), 2),
            "jitter_iqr_ms": round(self.jitter_robust_ms, 2),
            "delay_max_ms": round(self.delay_quantile_ms(1.0), 2),
            "swapped": round(self.swapped, 4),
            "expected_swapped": round(self.expected_swapped, 4),
            "reordered": round(self.reordered, 4),
            "throughput_kbit": round(self.throughput_kbit, 1),
            "sender_lag_ms": self.sender_lag_ms,
            "relay": {f.name: getattr(self.relay, f.name) for f in fields(LaneStats)},
        }


def _difference(after: LaneStats, before: LaneStats) -> LaneStats:
    return LaneStats(
        **{
            f.name: getattr(after, f.name)
            - (0 if f.name in ("held", "late_max_us") else getattr(before, f.name))
            for f in fields(LaneStats)
        }
    )


class _Receiver:
    """Collects one probe run's packets on the event loop, with kernel arrival times."""

    def __init__(self, sock: socket.socket, token: int) -> None:
        self.sock = sock
        self.token = token
        self.arrivals: list[tuple[int, int]] = []
        self.expected: int | None = None
        self.complete = asyncio.Event()

    def readable(self) -> None:
        space = socket.CMSG_SPACE(TIMESPEC.size)
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(65536, space)
            except BlockingIOError:
                break
            if len(data) < HEADER.size:
                continue
            magic, token, seq, _ = HEADER.unpack_from(data)
            if magic != MAGIC or token != self.token:
                continue
            rx = time.time_ns()
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                    seconds, nanoseconds = TIMESPEC.unpack(value[: TIMESPEC.size])
                    rx = seconds * 1_000_000_000 + nanoseconds
            self.arrivals.append((seq, rx))
        self.check()

    def check(self) -> None:
        if self.expected is not None and len(self.arrivals) >= self.expected:
            self.complete.set()


def _send(
    sock: socket.socket,
    token: int,
    count: int,
    rate: float,
    size: int,
    on_sent: Callable[[int], object] | None,
) -> tuple[list[int], float]:
    """Send the packets at `rate` per second (a thread: time.sleep paces finer than the loop).

    Returns the send times and the longest the sender fell behind its schedule (s). Behind by
    more than MAX_LAG_S (the thread was not scheduled), it moves its schedule on rather than
    sending the missed packets in a burst that the link never saw from the application.
    """
    padding = bytes(max(0, size - HEADER.size))
    tx: list[int] = []
    start = time.perf_counter()
    lag = 0.0
    for seq in range(count):
        due = start + seq / rate
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        elif wait < -MAX_LAG_S:
            start -= wait
        lag = max(lag, -wait)
        now = time.time_ns()
        tx.append(now)
        sock.send(HEADER.pack(MAGIC, token, seq, now) + padding)
        if on_sent is not None:
            on_sent(seq)
    return tx, lag


async def probe(
    link: ImpairedLink,
    lane: Lane,
    *,
    count: int = 2000,
    rate: float = 500.0,
    size: int = 64,
    timeout_s: float = 30.0,
    on_sent: Callable[[int], object] | None = None,
) -> ProbeResult:
    """Send `count` UDP packets of `size` payload bytes at `rate` per second over `lane`.

    `on_sent(i)` is called (in the sending thread) right after packet i is sent: a test changes
    the link midway with it. Raises TimeoutError if the probe takes over `timeout_s` seconds.
    """
    if size < HEADER.size:
        raise ValueError(f"size must be at least {HEADER.size} bytes")
    src, dst = (link.side(name) for name in LANE_ENDS[lane])
    token = secrets.randbits(32)
    with dst.netns():
        rx_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with src.netns():
        tx_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    with rx_sock, tx_sock:
        rx_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        rx_sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        rx_sock.bind((dst.address, 0))
        rx_sock.setblocking(False)
        tx_sock.connect(rx_sock.getsockname())
        receiver = _Receiver(rx_sock, token)
        loop.add_reader(rx_sock.fileno(), receiver.readable)
        try:
            async with asyncio.timeout(timeout_s):
                before = (await link.stats()).lane(lane)
                tx, lag = await asyncio.to_thread(_send, tx_sock, token, count, rate, size, on_sent)
                entered = before.unread + before.taken + count
                after = (await link.settle(lane, sent=entered)).lane(lane)
                # Every packet written onto the veth arrives (after the cap's queue at most).
                receiver.expected = after.sent - before.sent
                receiver.check()
                await receiver.complete.wait()
        finally:
            loop.remove_reader(rx_sock.fileno())
    return ProbeResult(
        lane,
        link.impairment(lane),
        size,
        tx,
        receiver.arrivals,
        _difference(after, before),
        round(lag * 1000, 3),
    )


async def probe_both(link: ImpairedLink, **kwargs: Any) -> dict[Lane, ProbeResult]:
    """`probe` both directions at once (same arguments)."""
    results = await asyncio.gather(*(probe(link, lane, **kwargs) for lane in LANES))
    return dict(zip(LANES, results, strict=True))


def probe_rate(impairment: Impairment, size: int, load: float, ceiling: float) -> float:
    """Packets per second that fill `load` of the cap (at most `ceiling`; uncapped: `ceiling`)."""
    if impairment.rate_kbit is None:
        return ceiling
    frame_bits = (size + IP_UDP_BYTES + ETHERNET_BYTES) * 8
    return min(ceiling, load * impairment.rate_kbit * 1000 / frame_bits)


# -- the command ---------------------------------------------------------------------------------


PROBE_SIZE = 20  # the smallest probe (its header alone): 62-byte frames
FLOOD_SIZE = 1000


async def _measure(profile: Profile, count: int, seed: int | None) -> list[dict[str, Any]]:
    """What tests/network/test_impaired_link.py measures: `count` probes each way at half the cap
    (at most 1000/s), then 3 s at twice the cap for a capped profile."""
    rows: list[dict[str, Any]] = []
    async with ImpairedLink(profile, seed=seed) as link:
        impairment = profile.a_to_b
        rate = probe_rate(impairment, PROBE_SIZE, 0.5, 1000.0)
        for result in (await probe_both(link, count=count, rate=rate, size=PROBE_SIZE)).values():
            rows.append({"profile": profile.name, "kind": f"{rate:.0f}/s", **result.summary()})
        if impairment.rate_kbit is not None:
            flood = probe_rate(impairment, FLOOD_SIZE, 2.0, 10_000.0)
            result = await probe(
                link, "a_to_b", count=round(flood * 3), rate=flood, size=FLOOD_SIZE
            )
            rows.append({"profile": profile.name, "kind": "2x cap", **result.summary()})
    return rows


async def _capacity(rate: float, seconds: float) -> dict[str, Any]:
    """Relay CPU per packet at `rate` packets/s, with a 30 ms delay and no loss (each packet
    held, then released: the relay's whole path)."""
    impairment = Impairment(delay_ms=30)
    async with ImpairedLink(Profile("capacity", impairment, impairment)) as link:
        count = round(rate * seconds)
        before = await link.stats()
        result = await probe(link, "a_to_b", count=count, rate=rate, size=PROBE_SIZE)
        after = await link.stats()
        cpu = after.relay_cpu_s - before.relay_cpu_s
        return {
            "rate_pps": rate,
            "packets": count,
            "received": result.received,
            "relay_cpu_us_per_packet": round(cpu / count * 1e6, 2),
            "relay_cpu_share": round(cpu / seconds, 3),
            "unread": result.relay.unread,
            "delay_mean_ms": round(result.delay_mean_ms, 3),
            "jitter_ms": round(result.jitter_ms, 3),
        }


def _table(rows: list[dict[str, Any]]) -> str:
    columns = [
        "profile",
        "kind",
        "lane",
        "sent",
        "loss",
        "mean_burst",
        "delay_mean_ms",
        "jitter_ms",
        "delay_p50_ms",
        "jitter_iqr_ms",
        "delay_max_ms",
        "swapped",
        "expected_swapped",
        "throughput_kbit",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent.network.probe",
        description="Measure what each network profile's link does (run under scripts/isolated).",
    )
    parser.add_argument("--profile", action="append", choices=PROFILE_NAMES, dest="profiles")
    parser.add_argument("--count", type=int, default=2000, help="probe packets per direction")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--capacity", type=float, metavar="PPS", action="append", default=[])
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    args = parser.parse_args(argv)

    async def run() -> None:
        rows: list[dict[str, Any]] = []
        if not args.capacity or args.profiles:
            for name in args.profiles or PROFILE_NAMES:
                rows += await _measure(parse_profile(name), args.count, args.seed)
        capacity = [await _capacity(rate, 2.0) for rate in args.capacity]
        if args.json:
            for row in [*rows, *capacity]:
                print(json.dumps(row))
            return
        if rows:
            print(_table(rows))
        for row in capacity:
            print(", ".join(f"{key} {value}" for key, value in row.items()))

    print(
        f"# {time.strftime('%Y-%m-%d', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"python {sys.version.split()[0]}",
        file=sys.stderr,
    )
    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
