"""ImpairedLink: two network namespaces joined by a veth pair whose two directions are impaired.

    async with ImpairedLink("mobile") as link:
        server = await link.b.spawn(sys.executable, "-m", "http.server", "--bind", link.b.address)
        ...                                   # side A reaches it at link.b.address
        await link.set_profile("bad")         # while traffic flows

Built from what a kernel without netem has (docs/network.md, "How the link is built"):

    side A namespace                                              side B namespace
    app -> route -> tun-a ==> relay (loss, delay, jitter) ==> veth-a [TBF cap] --> veth-b -> app
    app <- veth-a <-- [TBF cap] veth-b <== relay <== tun-b <- route <- app

Each side's only route, to the other side's address, leads into its TUN device; one relay process
(`agent.network._relay`) reads every packet from it, loses or holds it as the direction's
Impairment says, and writes it as an Ethernet frame onto that side's veth, whose egress qdisc (TBF)
is the bandwidth cap; the other side receives it from its veth end. The namespaces are made by
this process and held by file descriptors (`agent.network._ns`): they, their devices and their
addresses (192.0.2.0/24, a documentation range) exist nowhere else, and nothing in them has a
route out. Closing the link ends every process it started and closes the descriptors; the kernel
then removes the namespaces and their devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any, Literal, TypeVar

from agent.network import _ns
from agent.network.profiles import Impairment, Profile, parse_profile

log = logging.getLogger(__name__)

T = TypeVar("T")
SideName = Literal["a", "b"]
Lane = Literal["a_to_b", "b_to_a"]
LANES: tuple[Lane, Lane] = ("a_to_b", "b_to_a")
LANE_ENDS: dict[Lane, tuple[SideName, SideName]] = {"a_to_b": ("a", "b"), "b_to_a": ("b", "a")}

# TEST-NET-1 (RFC 5737): documentation only, routed nowhere; each link has its own namespaces, so
# links made at once (or the scripts/isolated namespace's 198.51.100.1) never meet.
PREFIX_LEN = 24
ADDRESSES: dict[SideName, str] = {"a": "192.0.2.1", "b": "192.0.2.2"}
MACS: dict[SideName, str] = {"a": "02:00:c0:00:02:01", "b": "02:00:c0:00:02:02"}  # local admin.
VETHS: dict[SideName, str] = {"a": "veth-a", "b": "veth-b"}
TUNS: dict[SideName, str] = {"a": "tun-a", "b": "tun-b"}
# What the relay holds per direction at most (beyond it drops, counted as overflow): 10 000
# packets is 150 ms at 67 000 packets/s, several times what the relay can carry.
HOLD_LIMIT = 10_000
# Packets a TUN device queues for the relay to read (its default is 500): what the relay may fall
# behind by (a stall of 50 ms at 20 000 packets/s) before packets are dropped there (`unread`).
TUN_QUEUE = 1000
START_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class LinkError(RuntimeError):
    """The link could not be built, changed or asked (the message says which command failed)."""


@dataclass(frozen=True)
class LaneStats:
    """One direction's packet counts since the link was built (see `ImpairedLink.stats`).

    What the sending side sent over the link = unread + taken, and
    taken = lost + overflow + capped + errors + sent + held, at every moment.
    """

    unread: int  # dropped before the relay read them (it was too slow: its TUN queue was full)
    taken: int  # read by the relay from the sending side
    lost: int  # lost by the loss model
    overflow: int  # dropped because the relay held its maximum (HOLD_LIMIT) already
    capped: int  # dropped by the bandwidth cap's full queue
    errors: int  # failed to be written onto the veth for another reason
    sent: int  # written onto the veth: they reach the other side
    sent_bytes: int  # the IP bytes of those
    held: int  # held by the relay for their delay right now
    late_max_us: int  # the longest a held packet left after its time (the relay's timing error)


@dataclass(frozen=True)
class LinkStats:
    """Both directions' counts, and the relay's CPU time (user + system) so far."""

    a_to_b: LaneStats
    b_to_a: LaneStats
    relay_cpu_s: float

    def lane(self, lane: Lane) -> LaneStats:
        return self.a_to_b if lane == "a_to_b" else self.b_to_a

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> LinkStats:
        names = {f.name for f in fields(LaneStats)}
        lanes = {
            lane: LaneStats(**{k: v for k, v in reply["stats"][lane].items() if k in names})
            for lane in LANES
        }
        return cls(lanes["a_to_b"], lanes["b_to_a"], float(reply["cpu_s"]))


class Side:
    """One end of the link: its namespace, its address, and ways to run things in it."""

    def __init__(self, link: ImpairedLink, name: SideName) -> None:
        self._link = link
        self.name: SideName = name
        self.address = ADDRESSES[name]
        self.peer_address = ADDRESSES["b" if name == "a" else "a"]
        self.interface = VETHS[name]
        self.fd = -1  # the namespace's fd while the link is up

    def __repr__(self) -> str:
        return f"<Side {self.name} {self.address}>"

    def _nsenter(self, argv: Sequence[str]) -> list[str]:
        if self.fd < 0:
            raise LinkError(f"side {self.name}: the link is not up")
        return ["nsenter", f"--net=/proc/self/fd/{self.fd}", "--", *argv]

    @contextlib.contextmanager
    def netns(self) -> Iterator[None]:
        """The calling thread inside this side's namespace for the block (and back after it).

        Sockets made in the block belong to the side and keep working after it:

            with link.a.netns():
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.sendto(b"hi", (link.b.address, 9))

        Never `await` inside the block: the whole event loop's thread is in the namespace, and
        every task that runs meanwhile would make its sockets there.
        """
        if self.fd < 0:
            raise LinkError(f"side {self.name}: the link is not up")
        with _ns.entered(self.fd):
            yield

    async def spawn(self, *argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
        """Start `argv` in this side's namespace, as asyncio.create_subprocess_exec would.

        `kwargs` go to create_subprocess_exec (stdin, stdout, env, cwd, pass_fds...). The process
        gets a session (and process group) of its own, and SIGKILL when the thread that started
        it ends (PR_SET_PDEATHSIG: when this process dies, for one started from its event loop).
        Closing the link ends the group (SIGTERM, SIGKILL after `stop_timeout`), then anything
        still in the namespaces, so nothing a process started keeps them alive.
        """
        pass_fds = (self.fd, *kwargs.pop("pass_fds", ()))
        full = self._nsenter(["setpriv", "--pdeathsig", "KILL", "--", *argv])
        process = await asyncio.create_subprocess_exec(
            *full, pass_fds=pass_fds, start_new_session=True, **kwargs
        )
        self._link._processes.append(process)
        return process

    async def python(self, *args: str, **kwargs: Any) -> asyncio.subprocess.Process:
        """`spawn` of this interpreter (sys.executable) with `args`: `-m module` or a script."""
        return await self.spawn(sys.executable, *args, **kwargs)

    async def command(self, *argv: str, input: str | None = None) -> str:
        """Run a short command in the namespace to its end; its stdout, or LinkError on failure."""
        return await self._link._command(self._nsenter(argv), (self.fd,), input)

    async def run(self, factory: Callable[[], Awaitable[T]]) -> T:
        """Run `factory()` on an event loop of its own, in a thread inside this side's namespace.

        Everything it makes (sockets, connections, servers, executor threads) lives on side
        `name`. Cancelling the caller cancels it; closing the link cancels it too. It shares this
        process's GIL: for CPU-heavy peers (aiortc calls) prefer a `spawn`ed process.
        """
        if self.fd < 0:
            raise LinkError(f"side {self.name}: the link is not up")
        outer = asyncio.get_running_loop()
        finished = asyncio.Event()
        started = threading.Event()
        inner: dict[str, Any] = {}
        outcome: list[tuple[bool, Any]] = []

        async def main() -> T:
            inner["loop"] = asyncio.get_running_loop()
            inner["task"] = asyncio.current_task()
            started.set()
            return await factory()

        def thread() -> None:
            try:
                with _ns.entered(self.fd):
                    outcome.append((True, asyncio.run(main())))
            except BaseException as exc:
                outcome.append((False, exc))
            finally:
                started.set()
                with contextlib.suppress(RuntimeError):  # the caller's loop is closed already
                    outer.call_soon_threadsafe(finished.set)

        def cancel() -> None:
            started.wait()
            loop, task = inner.get("loop"), inner.get("task")
            if loop is not None and task is not None:
                with contextlib.suppress(RuntimeError):  # it finished and closed meanwhile
                    loop.call_soon_threadsafe(task.cancel)

        worker = threading.Thread(target=thread, name=f"netns-{self.name}", daemon=True)
        self._link._threads.append((worker, cancel))
        worker.start()
        try:
            await finished.wait()
        except asyncio.CancelledError:
            cancel()
            await asyncio.to_thread(worker.join)
            raise
        ok, value = outcome[0]
        if not ok:
            if isinstance(value, asyncio.CancelledError) and self._link._closed:
                raise LinkError(f"side {self.name}: the link closed while the coroutine ran")
            raise value
        result: T = value
        return result


class ImpairedLink:
    """Two network namespaces, side A and side B, joined by a veth pair whose directions are
    impaired as `profile` says (a Profile or a name of `agent.network.PROFILES`).

    An async context manager: entering builds the namespaces, the veth pair (A 192.0.2.1, B
    192.0.2.2), the TUN devices, the caps and the relay; leaving (also on an exception) ends
    every process and thread it ran in them and removes everything. Needs CAP_SYS_ADMIN and
    CAP_NET_ADMIN over the caller's user namespace: root, or any user under `scripts/isolated`.

    `seed` makes the random draws (losses, delays) repeat from run to run; `hold_limit` bounds
    what the relay holds per direction; `stop_timeout` is the grace (seconds) a process gets
    between SIGTERM and SIGKILL when the link closes. Each side routes only the other side's
    address over the link; with `default_route`, everything (a browser picks its address by the
    default route): packets for other addresses then end on the other side, which forwards
    nothing, and a name lookup waits for its DNS timeout instead of failing at once.
    """

    def __init__(
        self,
        profile: Profile | str = "good",
        *,
        seed: int | None = None,
        hold_limit: int = HOLD_LIMIT,
        default_route: bool = False,
        stop_timeout: float = STOP_TIMEOUT_S,
    ) -> None:
        self.default_route = default_route
        self.stop_timeout = stop_timeout
        self.profile = parse_profile(profile) if isinstance(profile, str) else profile
        self.seed = seed
        self.hold_limit = hold_limit
        self.a = Side(self, "a")
        self.b = Side(self, "b")
        self._impairments: dict[Lane, Impairment] = {
            "a_to_b": self.profile.a_to_b,
            "b_to_a": self.profile.b_to_a,
        }
        self._processes: list[asyncio.subprocess.Process] = []
        self._threads: list[tuple[threading.Thread, Callable[[], None]]] = []
        self._relay: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._lock = asyncio.Lock()
        self._closed = False

    def side(self, name: SideName) -> Side:
        return self.a if name == "a" else self.b

    def impairment(self, lane: Lane) -> Impairment:
        """What `lane` does now."""
        return self._impairments[lane]

    @property
    def relay_pid(self) -> int | None:
        return self._relay.pid if self._relay is not None else None

    async def __aenter__(self) -> ImpairedLink:
        if self.a.fd >= 0 or self._closed:
            raise LinkError("an ImpairedLink is entered once")
        try:
            await self._build()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- building --------------------------------------------------------------------------------

    async def _build(self) -> None:
        try:
            self.a.fd = _ns.create()
            self.b.fd = _ns.create()
        except PermissionError as exc:
            raise LinkError(
                f"cannot create a network namespace ({exc}): run as root, or under "
                "scripts/isolated (unshare --user --map-root-user --net)"
            ) from exc
        for side in (self.a, self.b):
            _disable_ipv6(side.fd)
        await self._command(
            self.a._nsenter(
                [
                    *("ip", "link", "add", VETHS["a"], "address", MACS["a"], "type", "veth"),
                    *("peer", "name", VETHS["b"], "address", MACS["b"]),
                    *("netns", f"/proc/self/fd/{self.b.fd}"),
                ]
            ),
            (self.a.fd, self.b.fd),
            None,
        )
        for side in (self.a, self.b):
            name = side.name
            # The address without its prefix route (noprefixroute): the only way to the other side
            # is the route into the TUN device, and so through the relay.
            route = "default" if self.default_route else f"{side.peer_address}/32"
            await side.command(
                "ip",
                "-batch",
                "-",
                input="\n".join(
                    [
                        "link set lo up",
                        f"link set {VETHS[name]} up",
                        f"addr add {side.address}/{PREFIX_LEN} dev {VETHS[name]} noprefixroute",
                        f"tuntap add dev {TUNS[name]} mode tun",
                        f"link set {TUNS[name]} txqueuelen {TUN_QUEUE} up",
                        f"route add {route} dev {TUNS[name]} src {side.address}",
                        "",
                    ]
                ),
            )
        for lane in LANES:
            await self._apply_cap(lane, None, self._impairments[lane])
        await self._start_relay()

    async def _start_relay(self) -> None:
        lanes = {}
        for lane, (src, dst) in LANE_ENDS.items():
            lanes[lane] = {
                "netns": self.side(src).fd,
                "tun": TUNS[src],
                "veth": VETHS[src],
                "src_mac": MACS[src],
                "dst_mac": MACS[dst],
            }
        config = {
            "lanes": lanes,
            "impairments": {lane: imp.to_dict() for lane, imp in self._impairments.items()},
            "seed": self.seed,
            "hold_limit": self.hold_limit,
        }
        self._relay = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.network._relay",
            json.dumps(config),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            pass_fds=(self.a.fd, self.b.fd),
            start_new_session=True,  # a Ctrl-C to the caller's group is the caller's to handle
        )
        assert self._relay.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                line = await self._relay.stdout.readline()
        except TimeoutError:
            raise LinkError(f"the relay did not start in {START_TIMEOUT_S:g} s") from None
        if not line:
            code = await self._relay.wait()
            raise LinkError(f"the relay exited at start (code {code}; its stderr says why)")
        self._reader = asyncio.create_task(self._read_replies(), name="impaired-link-relay")

    async def _read_replies(self) -> None:
        assert self._relay is not None and self._relay.stdout is not None
        stdout = self._relay.stdout
        while line := await stdout.readline():
            reply = json.loads(line)
            future = self._replies.pop(reply.get("id"), None)
            if future is not None and not future.done():
                future.set_result(reply)
        code = await self._relay.wait()
        error = LinkError(f"the relay exited (code {code})")
        for future in self._replies.values():
            if not future.done():
                future.set_exception(error)
        self._replies.clear()

    async def _request(self, op: str, wait_s: float, **fields: Any) -> dict[str, Any]:
        relay = self._relay
        if relay is None or relay.stdin is None or self._closed or relay.returncode is not None:
            raise LinkError("the link is not up")
        self._next_id += 1
        ident = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[ident] = future
        relay.stdin.write(json.dumps({"id": ident, "op": op, **fields}).encode() + b"\n")
        try:
            await relay.stdin.drain()
            async with asyncio.timeout(wait_s):
                reply = await future
        except TimeoutError:
            raise LinkError(f"the relay did not answer {op!r} in {wait_s:g} s") from None
        finally:
            self._replies.pop(ident, None)
        if not reply.get("ok"):
            raise LinkError(f"the relay answered {op!r}: {reply.get('error')}")
        return reply

    async def _command(self, argv: list[str], fds: tuple[int, ...], input: str | None) -> str:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=fds,
        )
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                out, err = await process.communicate(input.encode() if input is not None else None)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise LinkError(f"{' '.join(argv)}: no answer in {COMMAND_TIMEOUT_S:g} s") from None
        if process.returncode != 0:
            what = " ".join(argv[3:] if argv[0] == "nsenter" else argv)
            detail = err.decode(errors="replace").strip() or f"exit code {process.returncode}"
            raise LinkError(f"{what}: {detail}")
        return out.decode(errors="replace")

    async def _apply_cap(self, lane: Lane, old: Impairment | None, new: Impairment) -> None:
        """The direction's bandwidth cap: TBF on the sending side's veth (its egress)."""
        old_cap = None if old is None else (old.rate_kbit, old.bucket_bytes, old.queue_bytes)
        new_cap = (new.rate_kbit, new.bucket_bytes, new.queue_bytes)
        if old_cap == new_cap:
            return
        side = self.side(LANE_ENDS[lane][0])
        if new.rate_kbit is None:
            if old is not None and old.rate_kbit is not None:
                await side.command("tc", "qdisc", "del", "dev", side.interface, "root")
            return
        # `replace` changes a TBF in place (its queue kept) or installs one.
        await side.command(
            *("tc", "qdisc", "replace", "dev", side.interface, "root", "tbf"),
            *("rate", f"{round(new.rate_kbit * 1000)}bit"),
            *("burst", str(new.bucket_bytes), "limit", str(new.queue_bytes)),
        )

    # -- changing and asking ---------------------------------------------------------------------

    async def set_profile(self, profile: Profile | str) -> None:
        """Impair both directions as `profile` says, from the next packet on (packets held for an
        earlier delay still leave at their time, so a shorter delay lets new packets overtake)."""
        new = parse_profile(profile) if isinstance(profile, str) else profile
        await self.set_impairment("a_to_b", new.a_to_b)
        await self.set_impairment("b_to_a", new.b_to_a)
        self.profile = new

    async def set_impairment(self, lane: Lane, impairment: Impairment) -> None:
        """Impair one direction as `impairment` says, from the next packet on."""
        async with self._lock:
            old = self._impairments[lane]
            await self._request(
                "set", COMMAND_TIMEOUT_S, lane=lane, impairment=impairment.to_dict()
            )
            self._impairments[lane] = impairment
            await self._apply_cap(lane, old, impairment)
        if self.profile.a_to_b != self._impairments["a_to_b"] or (
            self.profile.b_to_a != self._impairments["b_to_a"]
        ):
            self.profile = Profile(
                "custom", self._impairments["a_to_b"], self._impairments["b_to_a"]
            )
        log.debug("link %s: %s", lane, impairment.describe())

    async def stats(self) -> LinkStats:
        """Packet counts of both directions so far, from the relay."""
        return LinkStats.from_reply(await self._request("stats", COMMAND_TIMEOUT_S))

    async def settle(self, lane: Lane, *, sent: int, timeout_s: float = 10.0) -> LinkStats:
        """Wait until `sent` packets in all have entered `lane` (unread + taken) and the relay
        holds none of them: each has then been lost, dropped or written onto the veth, whence it
        arrives (after at most the cap's queue). Raises LinkError after `timeout_s` seconds."""
        reply = await self._request(
            "idle", timeout_s + COMMAND_TIMEOUT_S, lane=lane, sent=sent, timeout_s=timeout_s
        )
        return LinkStats.from_reply(reply)

    # -- closing ---------------------------------------------------------------------------------

    async def close(self) -> None:
        """End the link's coroutines and processes, stop the relay, release the namespaces.

        The kernel then removes the namespaces and their devices, as soon as nothing else holds
        them: a socket the caller made in `Side.netns()` and still has open keeps its namespace
        (only that, without the relay: no packet crosses) until it is closed.
        """
        if self._closed:
            return
        self._closed = True
        try:
            for worker, cancel in self._threads:
                if worker.is_alive():
                    cancel()
            for worker, _ in self._threads:
                await asyncio.to_thread(worker.join, self.stop_timeout)
            await asyncio.gather(
                *(_stop(p, self.stop_timeout) for p in self._processes if p.returncode is None)
            )
            if self._relay is not None:
                if self._relay.stdin is not None:
                    self._relay.stdin.close()
                await _stop(self._relay, self.stop_timeout, first=None)
            if self._reader is not None:
                await self._reader
        finally:
            # Whatever happened above (even a cancellation), nothing of the link survives it:
            # not the relay, not a process that any of its processes left in a namespace.
            if self._relay is not None and self._relay.returncode is None:
                _kill_group(self._relay.pid, signal.SIGKILL)
            fds = [side.fd for side in (self.a, self.b) if side.fd >= 0]
            _kill_inside({os.fstat(fd).st_ino for fd in fds})
            for side in (self.a, self.b):
                if side.fd >= 0:
                    os.close(side.fd)
                    side.fd = -1


def _kill_inside(namespaces: set[int]) -> None:
    """SIGKILL every process (but this one) whose network namespace is one of `namespaces`
    (nsfs inode numbers), until none is left: what keeps a namespace alive goes."""
    me = os.getpid()
    for _ in range(100):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                inside = os.stat(f"/proc/{entry}/ns/net").st_ino in namespaces
            except OSError:  # gone, a zombie, or not ours to look at
                continue
            if inside:
                found = True
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(entry), signal.SIGKILL)
        if not found:
            return
        time.sleep(0.005)  # let the killed ones exit before looking again
    log.warning("processes left in the link's namespaces survived SIGKILL")


def _disable_ipv6(netns: int) -> None:
    """No IPv6 on the devices made in `netns` from now on: every packet between the sides is IPv4
    through the relay (a link-local address on the veth would be a way around it)."""
    with _ns.entered(netns), open("/proc/sys/net/ipv6/conf/default/disable_ipv6", "w") as f:
        f.write("1")


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _stop(
    process: asyncio.subprocess.Process,
    grace: float,
    first: signal.Signals | None = signal.SIGTERM,
) -> None:
    """End a process and its group: `first` (None: wait for it to go by itself), SIGKILL after
    `grace` seconds."""
    if process.returncode is None and first is not None:
        _kill_group(process.pid, first)
    try:
        async with asyncio.timeout(grace):
            await process.wait()
    except TimeoutError:
        _kill_group(process.pid, signal.SIGKILL)
        await process.wait()
    # What the process left behind in its group (a shell's children) goes too.
    _kill_group(process.pid, signal.SIGKILL)
