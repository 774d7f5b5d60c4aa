"""Stopping the lab's processes: by the PID we started, never by name."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence

from wgcable.cable.wireguard.userspace import process_running


def stop_pid(pid: int, names: Sequence[str] = (), timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; only if ``pid`` is still running and (when
    ``names`` are given) still one of those programs, so a reused PID is left alone."""
    if pid <= 0 or not process_running(pid, *names):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_running(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap our own children as they exit
        time.sleep(0.02)
    if process_running(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
