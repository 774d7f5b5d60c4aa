"""Stopping the lab's processes: by the PID we started, never by name."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Sequence

from wgcable.cable.wireguard.userspace import process_running


def stop_pid(pid: int, names: Sequence[str] = (), timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; only if ``pid`` is still running and (when
    ``names`` are given) still one of those programs, so a reused PID is left alone."""
    stop_pids([(pid, names)], timeout)


def stop_pids(targets: Iterable[tuple[int, Sequence[str]]], timeout: float = 5.0,
              sig: int = signal.SIGTERM) -> None:
    """``stop_pid`` for many processes at once: all are signalled (``sig``) first, then
    waited for under one deadline, so that stopping N processes costs the slowest one's
    exit, not the sum of them all."""
    pids = [pid for pid, names in targets if pid > 0 and process_running(pid, *names)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap our own children as they exit
        pids = [pid for pid in pids if process_running(pid)]
        if pids:
            time.sleep(0.02)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
