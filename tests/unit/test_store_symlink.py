"""Leaks through the directory store: a store entry that is (or points at) someone else's
file, such as the driver's private key, must be refused without its content reaching the
log, the gateway status, the gateway file or status.json.

Real files, symlinks, hard links and FIFOs, through the real DirectoryStore, Engine and
WireGuardDriver (only the kernel side is faked, tests/unit/fake_kernel.py).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_kernel import fake_driver

from hostile import leaks
from wgcable.agent.statusfile import STATUS_FILE, write_status_file
from wgcable.cable.types import Endpoint
from wgcable.engine.engine import Engine
from wgcable.engine.plan import plan
from wgcable.store import directory
from wgcable.store.base import Snapshot
from wgcable.store.directory import DirectoryStore
from wgcable.wgctrl import Key, write_key_file

SUBNETS = ("10.1.0.0/16",)
ADDRESSES = [("eth0", "198.18.0.1", 24), ("lo", "127.0.0.1", 8)]
# Something that must never be echoed, as a YAML-valid and a YAML-invalid file.
SECRET_TEXT = "password: [hunter2-s3cr3t-value"  # noqa: S105 (a fake, to check it never leaks)


def _forms(key: Key) -> list[str]:
    b64 = key.base64()
    # Any 12 characters in a row of the key's base64 would be a partial leak.
    return [b64[i:i + 12] for i in range(0, len(b64) - 12)] + [key.hex()[:16]]


def _link(kind: str) -> Callable[[Path, Path], None]:
    if kind == "symlink":
        return lambda target, at: at.symlink_to(target)
    return lambda target, at: os.link(target, at)


def _run(tmp_path: Path, plant: Callable[[Path, Path], None], caplog: pytest.LogCaptureFixture
         ) -> tuple[dict[str, str], dict[str, str], Key]:
    """An agent whose store holds ``endpoints/evil.yaml`` planted next to its key file.
    Returns everything it wrote or logged, the store's errors, and the private key."""
    local = Endpoint(cluster_id="cluster1", cable_name="cable", hostname="gw1",
                     subnets=list(SUBNETS), private_ip="198.18.0.1", backend="wireguard")
    state = tmp_path / "state"
    driver = fake_driver(local, state, ADDRESSES)
    driver.init()
    key_path = state / f"{driver.cfg.device}.key"
    store = DirectoryStore(tmp_path / "store")
    try:
        store.publish(local)
        plant(key_path, store.endpoints_dir / "evil.yaml")
        engine = Engine(local, driver, store, hostname="gw1", version="test",
                        on_status=lambda s: write_status_file(state, s))
        with caplog.at_level(logging.DEBUG, logger="wgcable"):
            engine.reconcile()
            status = engine.refresh_status()
        errors = store.snapshot().errors
    finally:
        driver.close()
    texts = {
        "logs": caplog.text,
        "status": json.dumps(status.to_json()),
        "status file": (state / STATUS_FILE).read_text(),
    }
    gateway_files = list((tmp_path / "store" / "gateways").iterdir())
    assert gateway_files, "the engine wrote no gateway file: nothing would be checked"
    for path in gateway_files:
        texts[str(path)] = path.read_text()
    assert driver._key is not None
    return texts, errors, driver._key


def test_symlink_to_the_private_key_is_refused_and_never_echoed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    texts, errors, key = _run(tmp_path, _link("symlink"), caplog)
    assert leaks(_forms(key), texts) == []
    assert "symbolic link" in errors["evil"]
    assert any("evil.yaml" in t and "symbolic link" in t for t in texts.values())


def test_hostile_hard_link_to_the_private_key_is_never_echoed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A hard link is a regular file, but a second name for someone else's file.
    texts, errors, key = _run(tmp_path, _link("hardlink"), caplog)
    assert leaks(_forms(key), texts) == []
    assert "hard link" in errors["evil"]


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_hostile_file_content_is_never_echoed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, suffix: str
) -> None:
    """Invalid YAML or JSON: PyYAML's errors quote the offending line, ours must not."""
    store = DirectoryStore(tmp_path / "store")
    store.snapshot()
    (store.endpoints_dir / f"evil.{suffix}").write_text(SECRET_TEXT + "\n")
    with caplog.at_level(logging.DEBUG, logger="wgcable"):
        errors = store.snapshot().errors
    assert "invalid" in errors["evil"]
    assert leaks(["hunter2", "s3cr3t"], {"error": errors["evil"], "logs": caplog.text}) == []


def test_hostile_field_values_are_short_and_escaped(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    store.snapshot()
    doc = {"cluster_id": "c2", "nat_enabled": "x\nforged: line" + "A" * 10_000,
           "backend_config": {"k\r\nforged": 1}}
    (store.endpoints_dir / "evil.json").write_text(json.dumps(doc))
    message = store.snapshot().errors["evil"]
    assert "\n" not in message
    assert "\r" not in message
    assert "A" * 50 not in message
    assert "nat_enabled='x\\nforged: line" in message


def test_symlink_swapped_in_after_the_listing_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing saw a regular file; by the time it is opened it is a symlink (a race an
    attacker can win): the open itself must refuse it."""
    key_path = tmp_path / "subwg0.key"
    key = Key.generate()
    write_key_file(key_path, key)
    entry = tmp_path / "x.yaml"
    entry.symlink_to(key_path)
    _, result = directory._load_file(entry, Endpoint.from_json) or (None, None)
    assert isinstance(result, directory._Bad)
    assert "symbolic link" in result.message
    assert leaks(_forms(key), {"message": result.message}) == []


def test_symlink_to_a_fifo_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    store = DirectoryStore(tmp_path / "store")
    store.snapshot()
    (store.endpoints_dir / "f.json").symlink_to(fifo)
    (store.endpoints_dir / "g.json").symlink_to("/nonexistent/target")
    done = threading.Event()
    errors: dict[str, str] = {}

    def read() -> None:
        errors.update(store.snapshot().errors)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    if not done.wait(10):
        # Unblock the reader (open of a FIFO for reading waits for a writer).
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("reading the store blocked on a FIFO behind a symlink")
    assert "symbolic link" in errors["f"]
    assert "symbolic link" in errors["g"]  # dangling or not, a link is refused


def test_hostile_file_name_is_refused_and_escaped(tmp_path: Path) -> None:
    """A file name is anyone's text: its stem names the entry in logs and in the status."""
    store = DirectoryStore(tmp_path / "store")
    store.snapshot()
    good = Endpoint(cluster_id="c2", private_ip="198.18.0.2", subnets=["10.2.0.0/16"])
    (store.endpoints_dir / "evil\nforged: line.json").write_text(json.dumps(good.to_json()))
    snap = store.snapshot()
    assert snap.endpoints == {}
    assert list(snap.errors) == ["evil\\nforged: line"]
    assert "\n" not in snap.errors["evil\\nforged: line"]
    assert "control or non-ASCII" in snap.errors["evil\\nforged: line"]


def test_hostile_cluster_id_is_cut_in_plan_problems() -> None:
    cid = "c" * 10_000 + "\n"
    eps = {name: Endpoint(cluster_id=cid, private_ip="198.18.0.2") for name in ("a", "b")}
    problems = plan(Endpoint(cluster_id="c1"), Snapshot(endpoints=eps)).problems
    assert len(problems["b"]) < 200
    assert "\n" not in problems["b"]
