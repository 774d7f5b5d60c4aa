"""A tiny ctypes wrapper over Linux inotify: init, add/remove a watch, read events with a timeout.

Only what the directory store needs. ``Inotify()`` raises ``OSError`` where inotify is not
available (not Linux, no such libc symbol, or the per-user instance limit is reached), so the
caller can fall back to polling.
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
import select
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from types import TracebackType
from typing import Self

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = 0o2000000  # O_CLOEXEC on Linux; os.O_CLOEXEC is missing on some platforms

# struct inotify_event { int wd; uint32_t mask, cookie, len; char name[len]; }
_HEADER = struct.Struct("iIII")
# Big enough for many events; one event is at most 16 + NAME_MAX + 1 bytes.
_READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class Event:
    wd: int
    mask: int
    cookie: int
    name: str  # "" for events about the watched directory itself


@dataclass(frozen=True, slots=True)
class _Libc:
    init1: Callable[[int], int]
    add_watch: Callable[[int, bytes, int], int]
    rm_watch: Callable[[int, int], int]


@cache
def _libc() -> _Libc | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init1 = libc.inotify_init1
        add_watch = libc.inotify_add_watch
        rm_watch = libc.inotify_rm_watch
    except (OSError, AttributeError, TypeError):
        return None
    init1.argtypes = [ctypes.c_int]
    init1.restype = ctypes.c_int
    add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    add_watch.restype = ctypes.c_int
    rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    rm_watch.restype = ctypes.c_int
    return _Libc(init1=init1, add_watch=add_watch, rm_watch=rm_watch)


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}", path)
    return result


def parse_events(data: bytes) -> list[Event]:
    """Split a buffer read from an inotify fd into events."""
    events: list[Event] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        # The name is NUL-padded to an alignment boundary.
        raw = data[offset : offset + length].split(b"\0", 1)[0]
        offset += length
        events.append(Event(wd=wd, mask=mask, cookie=cookie, name=os.fsdecode(raw)))
    return events


class Inotify:
    """One inotify instance (a non-blocking, close-on-exec fd)."""

    def __init__(self) -> None:
        libc = _libc()
        if libc is None:
            raise OSError(errno.ENOSYS, "inotify is not available on this system")
        self._libc = libc
        self._fd = _check(libc.init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def add_watch(self, path: str | os.PathLike[str], mask: int) -> int:
        """Watch ``path``; returns the watch descriptor (the same one if already watched)."""
        name = os.fspath(path)
        return _check(
            self._libc.add_watch(self._fd, os.fsencode(name), mask), "inotify_add_watch", name
        )

    def rm_watch(self, wd: int) -> None:
        """Remove a watch; one the kernel already dropped (deleted directory) is no error."""
        try:
            _check(self._libc.rm_watch(self._fd, wd), "inotify_rm_watch")
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise

    def read(self, timeout: float | None) -> list[Event]:
        """Wait up to ``timeout`` seconds (None: forever) for events; [] when none came."""
        # poll rather than select(): select() cannot take fds above FD_SETSIZE (1024).
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        if not poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000))):
            return []
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return []
        return parse_events(data)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
