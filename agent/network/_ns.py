"""Network namespaces held by file descriptors.

`ip netns add` names a namespace by bind-mounting it under /run/netns, which needs a mount
namespace of one's own (inside `scripts/isolated` there is none). A namespace made with
unshare(CLONE_NEWNET) in a short-lived thread and kept by an open /proc/thread-self/ns/net needs
nothing of the kind, and can never outlive the process by accident: it lives while that fd, a
process in it or a socket made in it does, and the kernel removes it and its devices with the last.

Python 3.11 has neither os.unshare nor os.setns (3.12 has): libc through ctypes.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
_CURRENT = "/proc/thread-self/ns/net"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def current() -> int:
    """An fd (close-on-exec) of the calling thread's network namespace."""
    return os.open(_CURRENT, os.O_RDONLY | os.O_CLOEXEC)


def setns(fd: int) -> None:
    """Move the calling thread (only it) into the network namespace `fd`."""
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def create() -> int:
    """A new, empty network namespace (only a loopback, down), as an fd (close-on-exec).

    Needs CAP_SYS_ADMIN over the caller's user namespace: root, or inside `unshare --user
    --map-root-user` as `scripts/isolated` runs everything.
    """
    result: list[int | BaseException] = []

    def unshare() -> None:
        # This thread alone moves into the new namespace, and ends: the fd keeps the namespace.
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            result.append(current())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=unshare, name="netns-create")
    thread.start()
    thread.join()
    (outcome,) = result
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


@contextmanager
def entered(fd: int) -> Iterator[None]:
    """The calling thread inside namespace `fd` for the block, back where it was after."""
    home = current()
    try:
        setns(fd)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


def die_with_parent(signal: int) -> None:
    """Have the kernel send `signal` to this process when its parent (thread) ends."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
