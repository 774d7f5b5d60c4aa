"""Key files on a shared host: written without following anyone's links, read only when
they are ours and private, in a state directory that is ours and private.

Real files, symlinks, FIFOs and owners (os.chown: the tests run as root; skipped if not).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

import pytest
from fake_kernel import fake_driver

from wgcable.cable.types import Endpoint
from wgcable.cable.wireguard.driver import WireGuardDriver
from wgcable.wgctrl import Key, read_key_file, tighten_private_dir, write_key_file
from wgcable.wgctrl.errors import InvalidKeyError

OTHER_UID = 4242  # not us: any uid will do, it needs no account

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def _secret_forms(key: Key) -> list[str]:
    return [key.base64(), key.base64()[:20], key.hex()[:20]]


def _refused(path: Path, key: Key, *words: str, **kw: bool) -> str:
    with pytest.raises(InvalidKeyError) as info:
        read_key_file(path, **kw)
    message = str(info.value)
    for word in words:
        assert word in message
    assert not [f for f in _secret_forms(key) if f in message]
    return message


def test_write_key_file_does_not_follow_a_symlink_planted_at_its_temp_name(
    tmp_path: Path,
) -> None:
    """The old temp name was predictable (<path>.tmp.<pid>) and opened without O_EXCL or
    O_NOFOLLOW: a link planted there made root write the key into the link's target."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "subwg0.key"
    (tmp_path / f"subwg0.key.tmp.{os.getpid()}").symlink_to(victim)
    key = Key.generate()
    write_key_file(path, key)
    assert victim.read_text() == "precious\n"
    assert read_key_file(path) == key


def test_write_key_file_replaces_a_symlink_not_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "subwg0.key"
    path.symlink_to(victim)
    write_key_file(path, Key.generate())
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_key_file_fsyncs_the_file_and_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_mode)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_key_file(tmp_path / "k", Key.generate())
    assert [stat.S_ISREG(m) for m in synced] == [True, False]
    assert stat.S_ISDIR(synced[1])


def test_read_key_file_refuses_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    key = Key.generate()
    write_key_file(real, key)
    link = tmp_path / "subwg0.key"
    link.symlink_to(real)
    _refused(link, key, "symbolic link", str(link))
    # An operator's file (the PSK from a Kubernetes Secret) may be reached through links.
    assert read_key_file(link, follow_symlinks=True) == key


@needs_root
def test_read_key_file_ownership_another_users_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "subwg0.key"
    key = Key.generate()
    write_key_file(path, key)
    os.chown(path, OTHER_UID, -1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the mode alone would pass
    _refused(path, key, f"uid {OTHER_UID}", str(path))


@needs_root
def test_read_key_file_ownership_is_checked_on_the_symlink_target(tmp_path: Path) -> None:
    real = tmp_path / "psk"
    key = Key.generate_preshared()
    write_key_file(real, key)
    os.chown(real, OTHER_UID, -1)
    link = tmp_path / "psk-link"
    link.symlink_to(real)
    _refused(link, key, f"uid {OTHER_UID}", follow_symlinks=True)


def test_read_key_file_hostile_fifo_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "subwg0.key"
    os.mkfifo(fifo, 0o600)
    outcome: list[BaseException | Key] = []

    def read() -> None:
        try:
            outcome.append(read_key_file(fifo))
        except BaseException as exc:  # the outcome is what is checked
            outcome.append(exc)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # let the reader go
        pytest.fail("read_key_file blocked on a FIFO")
    assert isinstance(outcome[0], InvalidKeyError)
    assert "not a regular file" in str(outcome[0])


def test_read_key_file_hostile_huge_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "subwg0.key"
    path.write_bytes(b"A" * 10_000_000)
    path.chmod(0o600)
    with pytest.raises(InvalidKeyError, match="longer than a key file") as info:
        read_key_file(path)
    assert "AAAA" not in str(info.value)


@needs_root
def test_state_dir_ownership_of_another_user_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, OTHER_UID, -1)
    with pytest.raises(InvalidKeyError, match=f"uid {OTHER_UID}"):
        tighten_private_dir(state)


def _driver_in(state: Path) -> WireGuardDriver:
    local = Endpoint(cluster_id="cluster1", cable_name="cable", hostname="gw1",
                     subnets=["10.1.0.0/16"], private_ip="198.18.0.1", backend="wireguard")
    return fake_driver(local, state, [("eth0", "198.18.0.1", 24)])


def test_driver_tightens_an_open_state_dir_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    driver = _driver_in(state)
    with caplog.at_level(logging.WARNING, logger="wgcable"):
        driver.init()
    driver.close()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert "made it 0700" in caplog.text
    key = state / f"{driver.cfg.device}.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


@needs_root
def test_driver_ownership_refuses_a_key_file_of_another_user(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    key = Key.generate()
    path = state / "subwg0.key"
    write_key_file(path, key)
    os.chown(path, OTHER_UID, -1)
    driver = _driver_in(state)
    with pytest.raises(InvalidKeyError) as info:
        driver.init()
    assert not [f for f in _secret_forms(key) if f in str(info.value)]
    assert f"uid {OTHER_UID}" in str(info.value)


def test_driver_refuses_a_symlinked_key_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    elsewhere = tmp_path / "chosen-by-someone.key"
    write_key_file(elsewhere, Key.generate())
    (state / "subwg0.key").symlink_to(elsewhere)
    driver = _driver_in(state)
    with pytest.raises(InvalidKeyError, match="symbolic link"):
        driver.init()


def test_state_dir_reached_through_a_symlink_is_tightened_at_its_target(tmp_path: Path) -> None:
    real = tmp_path / "real-state"
    real.mkdir()
    real.chmod(0o755)
    link = tmp_path / "state"
    link.symlink_to(real)
    assert tighten_private_dir(link) is True
    assert stat.S_IMODE(real.stat().st_mode) == 0o700
    assert tighten_private_dir(link) is False
