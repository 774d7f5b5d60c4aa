"""Open sockets inside another network namespace without moving the whole process.

A socket belongs to the namespace it was created in, and setns(2) for a network namespace
affects only the calling thread. So we create the socket in a short-lived thread that
entered the namespace, and hand it back to the caller.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

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


class NetnsThread:
    """A thread that stays in ``netns`` and runs what it is given, one call at a time: for
    libraries (libnftables) whose sockets and re-opened sockets must all be made there.
    Cheaper per call than ``call_in_netns``, which starts a thread each time. ``close``
    ends it (the thread holds the namespace while it lives)."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], list[Any]] | None] = \
            queue.SimpleQueue()
        fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
        entered: list[BaseException | None] = []
        ready = threading.Event()

        def run() -> None:
            try:
                _setns(fd)
            except BaseException as e:  # re-raised in the constructor
                entered.append(e)
                ready.set()
                return
            entered.append(None)
            ready.set()
            while (item := self._calls.get()) is not None:
                fn, box = item
                try:
                    box.append((True, fn()))
                except BaseException as e:  # re-raised in the caller's thread
                    box.append((False, e))
                finally:
                    done = box[0]
                    done.set()

        try:
            self._thread = threading.Thread(target=run, name=f"netns:{netns}", daemon=True)
            self._thread.start()
            ready.wait()
        finally:
            os.close(fd)
        if entered[0] is not None:
            raise entered[0]

    def call(self, fn: Callable[[], T]) -> T:
        if not self._thread.is_alive():
            raise RuntimeError(f"the thread in namespace {self.netns} has ended")
        done = threading.Event()
        box: list[Any] = [done]
        self._calls.put((fn, box))
        done.wait()
        ok, value = box[1]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._thread.is_alive():
            self._calls.put(None)
            self._thread.join(5)
