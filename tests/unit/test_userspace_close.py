"""close() racing a wireguard-go start on the supervisor thread leaves no orphan daemon.

The daemon is a stand-in that never opens its socket (tests/unit/fake_daemon.py), so a
start stays in progress until close() ends it. The moment of the race is not left to
timing: a spy on ``subprocess.Popen`` says when the daemon is spawned, and close() is
called right then.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_daemon import Spawned, fake_daemon, spy_on_spawns

from wgcable.cable.types import Endpoint
from wgcable.cable.wireguard.config import WireGuardConfig
from wgcable.cable.wireguard.driver import WireGuardDriver
from wgcable.cable.wireguard.userspace import UserspaceError, WireGuardGoProcess, process_running

DEVICE = "wgcbclose0"  # a name nothing else uses: ensure() only reads whether it exists


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spawned]:
    with spy_on_spawns(monkeypatch) as seen:
        yield seen


def _wait_until(cond: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def _driver(tmp_path: Path) -> WireGuardDriver:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    cfg = WireGuardConfig(device=DEVICE, state_dir=str(state), backend="userspace",
                          wireguard_go=fake_daemon(tmp_path))
    local = Endpoint(cluster_id="c1", subnets=["10.1.0.0/16"], private_ip="198.18.0.1")
    return WireGuardDriver(local, cfg)


def test_close_while_the_supervisor_starts_wireguard_go_leaves_no_orphan(
    tmp_path: Path, spawned: Spawned
) -> None:
    driver = _driver(tmp_path)
    # The supervisor alone (init() would configure a real device): it finds no device and
    # starts a daemon, as after wireguard-go died.
    driver._supervisor = threading.Thread(target=driver._supervise, daemon=True)
    driver._supervisor.start()
    assert spawned.first.wait(15), "the supervisor never started a daemon"
    daemon = spawned.procs[0]
    driver.close()
    # Before close() returns: the agent exits right after it, and a daemon still starting
    # would be left running with no PID file to find it by.
    assert not process_running(daemon.pid), "close() left the wireguard-go daemon running"
    assert not (tmp_path / "state" / f"{DEVICE}.wireguard-go.pid").exists()
    driver._supervisor.join(10)
    assert not driver._supervisor.is_alive()
    assert len(spawned.procs) == 1  # and nothing was started after close()


def test_pid_file_names_a_daemon_as_soon_as_it_is_spawned(
    tmp_path: Path, spawned: Spawned
) -> None:
    """An agent SIGKILLed during a start: the next one (or `lab down`) must find the daemon."""
    pidfile = tmp_path / "wgx0.pid"
    proc = WireGuardGoProcess("wgx0", None, fake_daemon(tmp_path), log_path=tmp_path / "log",
                              pidfile=pidfile)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            proc.start(timeout=30)
        except UserspaceError as exc:
            errors.append(exc)

    t = threading.Thread(target=start, daemon=True)
    t.start()
    assert spawned.first.wait(10)
    pid = spawned.procs[0].pid
    assert _wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() == str(pid))
    proc.close()
    t.join(10)
    assert not t.is_alive()
    assert "closed while starting" in str(errors[0])
    assert not process_running(pid)
    assert not pidfile.exists()


def test_start_after_close_spawns_nothing(tmp_path: Path, spawned: Spawned) -> None:
    proc = WireGuardGoProcess("wgx0", None, fake_daemon(tmp_path), log_path=tmp_path / "log")
    proc.close()
    with pytest.raises(UserspaceError, match="closed"):
        proc.start(timeout=5)
    assert spawned.procs == []
