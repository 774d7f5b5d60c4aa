"""Files the agent writes in its state directory do not follow links planted there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fake_daemon import fake_daemon, spy_on_spawns

from wgcable.agent.statusfile import STATUS_FILE, read_status_file, write_status_file
from wgcable.cable.types import Endpoint, GatewayStatus
from wgcable.cable.wireguard.userspace import WireGuardGoProcess, process_running


def test_status_file_does_not_follow_a_symlink_at_its_temp_name(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / f".{STATUS_FILE}.{os.getpid()}").symlink_to(victim)  # the old temp name
    status = GatewayStatus(local_endpoint=Endpoint(cluster_id="c1"))
    write_status_file(tmp_path, status)
    assert victim.read_text() == "precious\n"
    assert read_status_file(tmp_path).gateway == status


@pytest.mark.parametrize("which", ["pidfile", "log"])
def test_symlink_in_the_state_dir_is_not_written_through_and_no_daemon_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    pidfile, log = tmp_path / "wgx0.pid", tmp_path / "wgx0.log"
    (pidfile if which == "pidfile" else log).symlink_to(victim)
    proc = WireGuardGoProcess("wgx0", None, fake_daemon(tmp_path), log_path=log,
                              pidfile=pidfile)
    with spy_on_spawns(monkeypatch) as spawned:
        with pytest.raises(OSError):  # noqa: PT011 - ELOOP, from whichever open refused
            proc.start(timeout=30)
        assert victim.read_text() == "precious\n"
        assert all(not process_running(p.pid) for p in spawned.procs)
