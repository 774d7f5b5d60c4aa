"""A stand-in for wireguard-go that is spawned but never opens its socket (a shell that
execs ``sleep``; no network at all), and a spy that records every daemon spawned."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wgcable.cable.wireguard import userspace

NEVER_READY = "#!/bin/sh\nexec sleep 600\n"


class Spawned:
    """Every daemon spawned while spying, and an event set at the first."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.first = threading.Event()


@contextlib.contextmanager
def spy_on_spawns(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spawned]:
    """Record the daemons that userspace.py spawns; kill any left when done."""
    seen = Spawned()
    real = subprocess.Popen

    class Spy(real):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            seen.procs.append(self)
            seen.first.set()

    monkeypatch.setattr(userspace.subprocess, "Popen", Spy)
    try:
        yield seen
    finally:
        for proc in seen.procs:  # whatever the outcome, nothing outlives the test
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)


def fake_daemon(directory: Path) -> str:
    path = directory / "fake-wireguard-go"
    path.write_text(NEVER_READY)
    path.chmod(0o755)
    return str(path)
