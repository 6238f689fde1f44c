"""TCP forwarding into a side: a service of the caller's namespace, reachable from inside a side.

A side has no route out of the link, so a process in it cannot reach, say, a dev backend listening
on 127.0.0.1 in the caller's namespace. A `TcpForwarder` listens inside the side on the same
address and port (a socket made in `Side.netns()`) and copies every connection it accepts to the
real address, from the caller's own namespace. A URL then means the same thing on both sides of
the link and outside it; what the forwarder carries does not cross the link (it is not impaired).

    async with TcpForwarder(link.a, ("127.0.0.1", 8000)):
        await link.a.spawn(...)          # reaches http://127.0.0.1:8000 as the caller does

The address must be IPv4: a loopback address (127.0.0.0/8, up in every side), or another one that
the forwarder adds to the side's loopback device (never one of the link's own 192.0.2.0/24).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from types import TracebackType

from agent.network.link import ADDRESSES, PREFIX_LEN, LinkError, Side

CHUNK = 64 * 1024
LINK_NETWORK = ipaddress.IPv4Network(f"{ADDRESSES['a']}/{PREFIX_LEN}", strict=False)


class TcpForwarder:
    """Listens inside `side` on `address` (host, port); each connection is copied to `target`
    (the same address by default), which is dialled from the caller's namespace.

    An async context manager: leaving it stops listening and closes every open connection.
    `connections` counts the connections accepted so far.
    """

    def __init__(
        self,
        side: Side,
        address: tuple[str, int],
        target: tuple[str, int] | None = None,
    ) -> None:
        self.side = side
        self.address = address
        self.target = target or address
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TcpForwarder:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        host, port = self.address
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise LinkError(f"forwarder: {host!r} is not an IP address") from None
        if not isinstance(ip, ipaddress.IPv4Address):
            raise LinkError(f"forwarder: {host} is IPv6; the link is IPv4 only")
        if ip in LINK_NETWORK:
            raise LinkError(f"forwarder: {host} is in the link's own network {LINK_NETWORK}")
        if ip.is_unspecified:
            raise LinkError("forwarder: 0.0.0.0 is not an address to reach")
        if not ip.is_loopback:
            # The side's only way to this address is then its own loopback device.
            await self.side.command("ip", "addr", "replace", f"{host}/32", "dev", "lo")
        with self.side.netns():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(256)
            sock.setblocking(False)
            self._server = await asyncio.start_server(self._accepted, sock=sock)
        except BaseException:
            sock.close()
            raise

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # owned: close() cancels and awaits it
        self.connections += 1
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return  # the service is down: the side sees its connection closed, as it would
            try:
                async with asyncio.TaskGroup() as pipes:
                    pipes.create_task(_copy(reader, up_writer))
                    pipes.create_task(_copy(up_reader, writer))
            except* OSError:
                pass  # a reset on either end ends both
            finally:
                up_writer.close()
                with contextlib.suppress(OSError):
                    await up_writer.wait_closed()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._tasks.discard(task)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes from `reader` to `writer` until the end of the stream, which is passed on."""
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
