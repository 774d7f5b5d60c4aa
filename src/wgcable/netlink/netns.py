"""Open sockets inside another network namespace without moving the whole process.

A socket belongs to the namespace it was created in, and setns(2) for a network namespace
affects only the calling thread. So we create the socket in a short-lived thread that
entered the namespace, and hand it back to the caller.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"


def netns_path(netns: str) -> str:
    """``ip netns`` names live in /run/netns; absolute paths (e.g. /proc/PID/ns/net) pass."""
    return netns if netns.startswith("/") else os.path.join(NETNS_RUN_DIR, netns)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def call_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """``fn()`` called with the calling thread in ``netns`` (None: the current namespace)."""
    if netns is None:
        return fn()
    path = netns_path(netns)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # fails here, clearly, if it is missing
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            _setns(fd)
            result.append(fn())
        except BaseException as e:  # re-raised in the caller's thread
            error.append(e)

    try:
        t = threading.Thread(target=run, name=f"netns:{netns}")
        t.start()
        t.join()
    finally:
        os.close(fd)
    if error:
        raise error[0]
    return result[0]
