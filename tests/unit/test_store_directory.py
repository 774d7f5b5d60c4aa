"""The directory store: round trips, garbage tolerance, the parse cache, and the watch."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wgcable.cable.types import (
    Connection,
    ConnectionStatus,
    Endpoint,
    GatewayStatus,
    HAStatus,
    cable_name_for,
)
from wgcable.store import directory, inotify
from wgcable.store.base import StoreUnavailableError
from wgcable.store.directory import MAX_FILE_SIZE, DirectoryStore

KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="


def make_endpoint(cluster: str = "cluster1", ip: str = "172.18.0.7", **kw: Any) -> Endpoint:
    fields: dict[str, Any] = {
        "hostname": f"{cluster}-gw",
        "subnets": ["10.1.0.0/16", "100.1.0.0/16"],
        "public_ip": "1.2.3.4",
        "backend": "wireguard",
        "backend_config": {"publicKey": KEY, "udp-port": "4500"},
    }
    return Endpoint(
        cluster_id=cluster, cable_name=cable_name_for(cluster, ip), private_ip=ip, **(fields | kw)
    )


def dotfiles(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith("."))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DirectoryStore]:
    s = DirectoryStore(tmp_path / "store", poll_interval=0.05)
    yield s
    s.close()


# --- publish / snapshot ---


def test_publish_snapshot_round_trip(tmp_path: Path) -> None:
    old = os.umask(0o077)  # the modes must not depend on the umask
    try:
        store = DirectoryStore(tmp_path / "a" / "store")
        one, two = make_endpoint("cluster1"), make_endpoint("cluster2", "10.0.0.9")
        store.publish(one)
        store.publish(two)
    finally:
        os.umask(old)
    snap = store.snapshot()
    assert snap.endpoints == {one.object_name(): one, two.object_name(): two}
    assert snap.errors == {}
    path = store.endpoints_dir / f"{one.object_name()}.json"
    assert json.loads(path.read_text()) == one.to_k8s_object()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    for d in (store.root, store.endpoints_dir):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755


def test_publish_overwrites_and_withdraw_removes(store: DirectoryStore) -> None:
    ep = make_endpoint()
    store.publish(ep)
    ep.public_ip = "5.6.7.8"
    store.publish(ep)
    assert store.snapshot().endpoints[ep.object_name()].public_ip == "5.6.7.8"
    store.withdraw(ep)
    assert store.snapshot().endpoints == {}
    store.withdraw(ep)  # already gone: fine


def test_withdraw_removes_a_yaml_copy_too(store: DirectoryStore) -> None:
    ep = make_endpoint()
    store.snapshot()  # creates the directories
    (store.endpoints_dir / f"{ep.object_name()}.yaml").write_text(yaml.safe_dump(ep.to_json()))
    store.withdraw(ep)
    assert store.snapshot().endpoints == {}


def test_snapshot_creates_layout(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "new")
    assert store.snapshot().endpoints == {}
    assert store.endpoints_dir.is_dir()
    assert store.gateways_dir.is_dir()


def test_bare_spec_yaml_and_yml_are_read(store: DirectoryStore) -> None:
    bare, whole, short = make_endpoint("a"), make_endpoint("b"), make_endpoint("c")
    store.snapshot()
    d = store.endpoints_dir
    (d / "bare.json").write_text(json.dumps(bare.to_json()))
    (d / "whole.yaml").write_text(yaml.safe_dump(whole.to_k8s_object()))
    (d / "short.yml").write_text(yaml.safe_dump(short.to_json()))
    snap = store.snapshot()
    assert snap.endpoints == {"bare": bare, "whole": whole, "short": short}
    assert snap.errors == {}


def test_name_not_matching_content_is_kept_by_stem(store: DirectoryStore) -> None:
    ep = make_endpoint()
    store.snapshot()
    (store.endpoints_dir / "something-else.json").write_text(json.dumps(ep.to_k8s_object()))
    assert store.snapshot().endpoints == {"something-else": ep}


def test_json_wins_over_yaml_of_the_same_name(store: DirectoryStore) -> None:
    a, b = make_endpoint("a"), make_endpoint("b")
    store.snapshot()
    (store.endpoints_dir / "x.yaml").write_text(yaml.safe_dump(b.to_json()))
    (store.endpoints_dir / "x.json").write_text(json.dumps(a.to_json()))
    assert store.snapshot().endpoints == {"x": a}


def test_dotfiles_temp_files_and_other_names_are_ignored(store: DirectoryStore) -> None:
    store.snapshot()
    d = store.endpoints_dir
    for name in (".hidden.json", ".wgcable-abc.tmp", "notes.txt", "x.json~", "x.json.swp"):
        (d / name).write_text("garbage {")
    snap = store.snapshot()
    assert snap.endpoints == {}
    assert snap.errors == {}


def _spec(**override: Any) -> bytes:
    return json.dumps(make_endpoint().to_json() | override).encode()


def _obj(**override: Any) -> bytes:
    return json.dumps(make_endpoint().to_k8s_object() | override).encode()


# (file name, content, words the error must contain)
GARBAGE: list[tuple[str, bytes, list[str]]] = [
    ("truncated.json", _spec()[:40], ["invalid JSON"]),
    ("empty.json", b"", ["invalid JSON"]),
    ("bad.yaml", b"cluster_id: [unclosed\n  - : :\n", ["invalid YAML"]),
    ("empty.yaml", b"", ["<object>", "None"]),
    ("control.yaml", b"cluster_id: [\"a\\nforged: line\"]\n", ["cluster_id", "<list of 1>"]),
    ("bad-key.yaml", b"cluster_id: c\nbackend_config: {\"a\\nb\": 1}\n", ["backend_config.a\\nb"]),
    ("two-docs.yaml", b"a: 1\n---\nb: 2\n", ["invalid YAML"]),
    ("int-id.json", _spec(cluster_id=5), ["cluster_id", "5", "expected a string"]),
    ("wrong-nat.json", _spec(nat_enabled="yes"), ["nat_enabled", "'yes'"]),
    ("wrong-subnet.json", _spec(subnets=["10.0.0.0/8", 7]), ["subnets[1]", "7"]),
    (
        "wrong-config.yaml",
        b"cluster_id: c\nbackend_config: {port: 4500}\n",
        ["backend_config.port", "4500"],
    ),
    ("no-spec.json", _obj(spec=None), ["spec", "None"]),
    ("wrong-kind.json", _obj(kind="Gateway"), ["kind", "'Gateway'"]),
    ("missing-id.json", b'{"cable_name": "x"}', ["cluster_id", "required"]),
    ("list.json", b'[{"cluster_id": "c"}]', ["<object>", "expected a JSON object"]),
    # A whole document that is text may be someone's file: its length, never its text.
    ("scalar.yaml", b"just text\n", ["<object>", "<string of 9 characters>"]),
    ("latin1.json", b'{"cluster_id": "caf\xe9"}', ["not UTF-8", "0xe9", "offset 19"]),
    ("deep.json", b"[" * 100_000 + b"]" * 100_000, ["nested too deeply"]),
    ("bom.json", b"\xef\xbb\xbf" + _spec(), ["invalid JSON"]),
]


@pytest.mark.parametrize(("name", "content", "words"), GARBAGE, ids=[g[0] for g in GARBAGE])
def test_garbage_lands_in_errors(
    store: DirectoryStore, name: str, content: bytes, words: list[str]
) -> None:
    good = make_endpoint()
    store.publish(good)
    path = store.endpoints_dir / name
    path.write_bytes(content)
    snap = store.snapshot()
    assert snap.endpoints == {good.object_name(): good}
    stem = name.rsplit(".", 1)[0]
    assert list(snap.errors) == [stem]
    message = snap.errors[stem]
    assert message.startswith(f"{path}: ")
    for word in words:
        assert word in message
    assert len(message) <= 300


def test_huge_file_is_refused_without_reading_it_all(
    store: DirectoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.snapshot()
    path = store.endpoints_dir / "huge.json"
    size = 10 * 1024 * 1024
    path.write_bytes(b" " * size)
    reads: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        reads.append(len(data))
        return data

    monkeypatch.setattr(os, "read", counting_read)
    snap = store.snapshot()
    limit = f"over the {MAX_FILE_SIZE}-byte limit"
    assert snap.errors["huge"] == f"{path}: file is {size} bytes, {limit}"
    assert sum(reads) <= MAX_FILE_SIZE + 1


def test_special_files_land_in_errors(store: DirectoryStore) -> None:
    store.snapshot()
    (store.endpoints_dir / "dir.json").mkdir()
    os.mkfifo(store.endpoints_dir / "fifo.json")
    (store.endpoints_dir / "dangling.json").symlink_to("/nonexistent/target")
    snap = store.snapshot()  # must not hang on the FIFO
    assert snap.errors["dir"].endswith("not a regular file")
    assert snap.errors["fifo"].endswith("not a regular file")
    # Links are never followed (tests/unit/test_store_symlink.py), dangling or not.
    assert "symbolic link" in snap.errors["dangling"]


def test_unreadable_file_is_reported_and_retried(
    store: DirectoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ep = make_endpoint()
    store.publish(ep)
    path = store.endpoints_dir / f"{ep.object_name()}.json"
    real_open = os.open

    def denying_open(file: Any, flags: int, *args: Any, **kw: Any) -> int:
        # As a chmod 000 would for a non-root reader (the tests may run as root).
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, flags, *args, **kw)

    monkeypatch.setattr(os, "open", denying_open)
    assert store.snapshot().errors[ep.object_name()] == f"{path}: cannot open: Permission denied"
    monkeypatch.setattr(os, "open", real_open)
    # Fixing permissions leaves (inode, size, mtime) alone: the error must not have been cached.
    assert store.snapshot().endpoints == {ep.object_name(): ep}


def test_bad_file_logs_none_of_its_content(
    store: DirectoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.snapshot()
    (store.endpoints_dir / "long.json").write_text("{" + "A" * 5000)
    with caplog.at_level(logging.WARNING, logger="wgcable.store.directory"):
        assert "long" in store.snapshot().errors
        store.snapshot()  # cached: not logged again
    assert len(caplog.records) == 1
    assert "AAAA" not in caplog.text  # the file may be anyone's: its size, not its text
    assert "5001 bytes" in caplog.text


def test_a_fixed_file_leaves_errors(store: DirectoryStore) -> None:
    store.snapshot()
    path = store.endpoints_dir / "x.json"
    path.write_text("{")
    assert "x" in store.snapshot().errors
    ep = make_endpoint()
    path.write_text(json.dumps(ep.to_k8s_object()))
    snap = store.snapshot()
    assert snap.errors == {}
    assert snap.endpoints == {"x": ep}


# --- names ---


@pytest.mark.parametrize(
    "hostname", ["a/b", ".hidden", "..", "x" * 254, "", "y" * 251], ids=lambda h: h[:8] or "empty"
)
def test_bad_hostnames_are_refused(store: DirectoryStore, hostname: str) -> None:
    status = GatewayStatus(local_endpoint=make_endpoint())
    with pytest.raises(ValueError, match="hostname") as info:
        store.write_status(hostname, status)
    assert repr(hostname) in str(info.value)


@pytest.mark.parametrize("cluster", ["a/b", ".x"])
def test_bad_object_names_are_refused(store: DirectoryStore, cluster: str) -> None:
    ep = Endpoint(cluster_id=cluster, cable_name="c")
    with pytest.raises(ValueError, match="endpoint object name") as info:
        store.publish(ep)
    assert repr(ep.object_name()) in str(info.value)
    with pytest.raises(ValueError, match="endpoint object name"):
        store.withdraw(ep)


def test_longest_name_that_fits_a_file_name_works(store: DirectoryStore) -> None:
    ep = Endpoint(cluster_id="c", cable_name="x" * 248)  # "c-" + 248 = 250, + ".json" = 255
    store.publish(ep)
    assert store.snapshot().endpoints == {ep.object_name(): ep}


# --- atomic writes ---


def test_no_temp_files_left_behind(store: DirectoryStore) -> None:
    for i in range(50):
        store.publish(make_endpoint(f"c{i}"))
        store.write_status("gw1", GatewayStatus(local_endpoint=make_endpoint(f"c{i}")))
    assert dotfiles(store.endpoints_dir) == []
    assert dotfiles(store.gateways_dir) == []
    assert len(store.snapshot().endpoints) == 50


def test_failed_write_leaves_old_file_and_no_temp_file(
    store: DirectoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ep = make_endpoint()
    store.publish(ep)

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    changed = make_endpoint(public_ip="9.9.9.9")
    with pytest.raises(OSError, match="Input/output"):
        store.publish(changed)
    assert dotfiles(store.endpoints_dir) == []
    assert store.snapshot().endpoints == {ep.object_name(): ep}


def test_readers_never_see_a_partial_file(store: DirectoryStore) -> None:
    # A big endpoint rewritten in a loop while another store reads it.
    big = make_endpoint(subnets=[f"10.{i // 256}.{i % 256}.0/24" for i in range(5000)])
    store.publish(big)
    reader = DirectoryStore(store.root)
    stop = threading.Event()
    errors: list[str] = []

    def read() -> None:
        while not stop.is_set():
            errors.extend(reader.snapshot().errors.values())

    t = threading.Thread(target=read)
    t.start()
    try:
        for i in range(30):
            big.public_ip = f"1.1.1.{i}"
            store.publish(big)
    finally:
        stop.set()
        t.join(5)
    assert errors == []


def test_two_stores_on_one_directory_see_each_other(tmp_path: Path) -> None:
    a, b = DirectoryStore(tmp_path), DirectoryStore(tmp_path)
    ea, eb = make_endpoint("a"), make_endpoint("b")
    a.publish(ea)
    b.publish(eb)
    expected = {ea.object_name(): ea, eb.object_name(): eb}
    assert a.snapshot().endpoints == expected
    assert b.snapshot().endpoints == expected
    b.withdraw(eb)
    assert a.snapshot().endpoints == {ea.object_name(): ea}


# --- gateway status ---


def _status(cluster: str = "cluster1") -> GatewayStatus:
    remote = make_endpoint("cluster2", "10.0.0.9")
    return GatewayStatus(
        local_endpoint=make_endpoint(cluster),
        version="0.1.0",
        ha_status=HAStatus.ACTIVE,
        connections=[
            Connection(endpoint=remote, status=ConnectionStatus.CONNECTED, using_ip="1.2.3.4")
        ],
    )


def test_status_round_trip(store: DirectoryStore) -> None:
    assert store.read_statuses() == {}
    store.write_status("gw1", _status())
    store.write_status("gw2", _status("cluster3"))
    assert store.read_statuses() == {"gw1": _status(), "gw2": _status("cluster3")}
    doc = json.loads((store.gateways_dir / "gw1.json").read_text())
    assert doc["kind"] == "Gateway"
    assert doc["metadata"] == {"name": "gw1"}
    assert doc["status"] == _status().to_json()


def test_remove_status(store: DirectoryStore) -> None:
    store.write_status("gw1", _status())
    store.write_status("gw2", _status())
    store.remove_status("gw1")
    store.remove_status("gw1")  # already gone: fine
    assert list(store.read_statuses()) == ["gw2"]
    with pytest.raises(ValueError, match="hostname"):
        store.remove_status("../gw2")


def test_bad_status_files_are_skipped_and_logged(
    store: DirectoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.write_status("good", _status())
    (store.gateways_dir / "bare.yaml").write_text(yaml.safe_dump(_status().to_json()))
    (store.gateways_dir / "broken.json").write_text('{"haStatus": "active"')
    (store.gateways_dir / "typed.json").write_text('{"localEndpoint": {"cluster_id": 1}}')
    with caplog.at_level(logging.WARNING, logger="wgcable.store.directory"):
        statuses = store.read_statuses()
    assert statuses == {"good": _status(), "bare": _status()}
    assert "broken.json: invalid JSON" in caplog.text
    assert "localEndpoint.cluster_id=1" in caplog.text


# --- the parse cache ---


def test_snapshot_of_10000_files_reparses_only_the_changed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property: Callable[[str, object], None]
) -> None:
    store = DirectoryStore(tmp_path)
    store.snapshot()
    for i in range(10_000):
        ep = make_endpoint(f"c{i}")
        (store.endpoints_dir / f"{ep.object_name()}.json").write_text(
            json.dumps(ep.to_k8s_object())
        )
    parsed: list[Path] = []
    real_load = directory._load_file

    def counting_load(path: Path, parse: Any) -> Any:
        parsed.append(path)
        return real_load(path, parse)

    monkeypatch.setattr(directory, "_load_file", counting_load)
    t0 = time.perf_counter()
    first = store.snapshot()
    cold = time.perf_counter() - t0
    assert len(first.endpoints) == 10_000
    assert len(parsed) == 10_000

    changed = make_endpoint("c123", public_ip="9.9.9.9")
    store.publish(changed)
    parsed.clear()
    t0 = time.perf_counter()
    second = store.snapshot()
    warm = time.perf_counter() - t0
    assert parsed == [store.endpoints_dir / f"{changed.object_name()}.json"]
    assert second.endpoints[changed.object_name()] == changed
    assert len(second.endpoints) == 10_000
    print(f"10,000 endpoints: cold snapshot {cold * 1000:.0f} ms, warm {warm * 1000:.0f} ms")
    record_property("cold_snapshot_s", round(cold, 4))
    record_property("warm_snapshot_s", round(warm, 4))
    assert warm < 1.0


# --- watch ---


class Recorder:
    """A ``changed`` callback that records when it was called."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._cond = threading.Condition()

    def __call__(self) -> None:
        with self._cond:
            self.times.append(time.monotonic())
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.times) >= count, timeout)

    def reset(self) -> None:
        with self._cond:
            self.times.clear()


Watch = Callable[[DirectoryStore], Recorder]  # start_watch's type


@pytest.fixture
def start_watch() -> Iterator[Watch]:
    """Start watches in threads; each is stopped, and must have ended, at teardown."""
    running: list[tuple[threading.Thread, threading.Event]] = []

    def start(store: DirectoryStore) -> Recorder:
        rec, stop = Recorder(), threading.Event()
        t = threading.Thread(target=store.watch, args=(rec, stop), daemon=True)
        t.start()
        running.append((t, stop))
        assert rec.wait_for(1)  # the initial call: the watch is in place
        time.sleep(0.05)  # let the initial burst window close
        rec.reset()
        return rec

    yield start
    for _, stop in running:
        stop.set()
    for t, _ in running:
        t.join(5)
        assert not t.is_alive()


WRITER = """
import sys, time
from wgcable.cable.types import Endpoint
from wgcable.store.directory import DirectoryStore
DirectoryStore(sys.argv[1]).publish(Endpoint(cluster_id=sys.argv[2], cable_name="cable"))
print(time.monotonic())
"""


def publish_from_another_process(root: Path, cluster: str) -> float:
    """Publish from a child process; returns when (monotonic, system-wide) the write was done."""
    out = subprocess.run(
        [sys.executable, "-c", WRITER, str(root), cluster],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return float(out.stdout)


def latency(rec: Recorder, since: float) -> float:
    assert rec.wait_for(1)
    return rec.times[0] - since


@pytest.fixture(params=["inotify", "polling"])
def watched_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DirectoryStore]:
    s = DirectoryStore(
        tmp_path / "store", poll_interval=0.05, use_inotify=request.param == "inotify"
    )
    yield s
    s.close()


def test_watch_fires_after_a_write_from_another_process(
    watched_store: DirectoryStore,
    start_watch: Watch,
    record_property: Callable[[str, object], None],
) -> None:
    rec = start_watch(watched_store)
    written = publish_from_another_process(watched_store.root, "remote")
    lag = latency(rec, written)
    print(f"watch ({'inotify' if watched_store.use_inotify else 'polling'}): {lag * 1000:.0f} ms")
    record_property("watch_latency_s", round(lag, 4))
    assert lag < 1.0
    assert "remote-cable" in watched_store.snapshot().endpoints


def test_watch_fires_after_a_delete(watched_store: DirectoryStore, start_watch: Watch) -> None:
    ep = make_endpoint()
    watched_store.publish(ep)
    rec = start_watch(watched_store)
    t0 = time.monotonic()
    watched_store.withdraw(ep)
    assert latency(rec, t0) < 1.0


def test_watch_fires_after_a_plain_rewrite(
    watched_store: DirectoryStore, start_watch: Watch
) -> None:
    ep = make_endpoint()
    watched_store.publish(ep)
    rec = start_watch(watched_store)
    path = watched_store.endpoints_dir / f"{ep.object_name()}.json"
    t0 = time.monotonic()
    with path.open("a") as f:  # in place, not atomic: a hand edit
        f.write("\n")
    assert latency(rec, t0) < 1.0


def test_inotify_watch_is_fast(store: DirectoryStore, start_watch: Watch) -> None:
    rec = start_watch(store)
    t0 = time.monotonic()
    store.publish(make_endpoint())
    assert latency(rec, t0) < 0.2  # typically ~20 ms: the burst window plus a thread switch


def test_watch_coalesces_a_burst(store: DirectoryStore, start_watch: Watch) -> None:
    store.snapshot()
    staged = []
    for i in range(200):
        tmp = store.endpoints_dir / f".staged-{i}"
        tmp.write_text(json.dumps(make_endpoint(f"c{i}").to_json()))
        staged.append(tmp)
    rec = start_watch(store)
    for i, tmp in enumerate(staged):
        tmp.rename(store.endpoints_dir / f"c{i}.json")
    assert rec.wait_for(1)
    time.sleep(0.3)
    assert 1 <= len(rec.times) <= 5  # 200 renames: a few calls at most
    assert len(store.snapshot().endpoints) == 200


def test_watch_reports_a_write_at_once_and_the_rest_of_its_burst_after(
    store: DirectoryStore, start_watch: Watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = start_watch(store)
    # A window far longer than a thread switch: a call before it ends came at once.
    monkeypatch.setattr(directory, "_COALESCE", 1.0)
    monkeypatch.setattr(directory, "_BURST_MAX", 1.0)
    t0 = time.monotonic()
    store.publish(make_endpoint("first"))
    assert rec.wait_for(1)
    assert rec.times[0] - t0 < 1.0
    for i in range(20):  # the rest of the burst: one more call, once it is quiet
        store.publish(make_endpoint(f"c{i}"))
    assert rec.wait_for(2)
    time.sleep(0.2)
    assert len(rec.times) == 2
    assert rec.times[1] - t0 >= 1.0


def test_watch_waits_for_a_file_written_in_place(
    store: DirectoryStore, start_watch: Watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    start_watch(store)  # the store's directories, and a watch that works here
    monkeypatch.setattr(directory, "_COALESCE", 0.1)
    errors: list[dict[str, str]] = []
    rec, stop = Recorder(), threading.Event()

    def changed() -> None:
        errors.append(store.snapshot().errors)
        rec()

    t = threading.Thread(target=store.watch, args=(changed, stop), daemon=True)
    t.start()
    try:
        assert rec.wait_for(1)  # the initial call
        time.sleep(0.2)
        rec.reset()
        errors.clear()
        text = json.dumps(make_endpoint("hand").to_k8s_object())
        with (store.endpoints_dir / "hand.json").open("w") as f:  # a hand edit, in place
            f.write(text[:20])
            f.flush()
            time.sleep(0.4)  # half-written, and quiet for longer than _COALESCE
            assert errors == []
            f.write(text[20:])
        assert rec.wait_for(1)
        assert errors[0] == {}  # read whole, never as a broken file
    finally:
        stop.set()
        t.join(5)
    assert not t.is_alive()


def test_watch_ignores_temp_and_other_files(store: DirectoryStore, start_watch: Watch) -> None:
    rec = start_watch(store)
    (store.endpoints_dir / ".wgcable-x.tmp").write_text("{}")
    (store.endpoints_dir / "README.txt").write_text("hello")
    (store.gateways_dir / "gw.json").write_text("{}")
    assert not rec.wait_for(1, timeout=0.3)


@pytest.mark.parametrize("which", ["endpoints", "root"])
def test_watch_survives_the_directory_being_recreated(
    watched_store: DirectoryStore, start_watch: Watch, which: str
) -> None:
    watched_store.publish(make_endpoint())
    rec = start_watch(watched_store)
    gone = watched_store.endpoints_dir if which == "endpoints" else watched_store.root
    shutil.rmtree(gone)
    assert rec.wait_for(1)
    time.sleep(0.2)  # the watch looks for the directory again at its own pace
    rec.reset()
    written = publish_from_another_process(watched_store.root, "back")
    assert latency(rec, written) < 1.0
    assert list(watched_store.snapshot().endpoints) == ["back-cable"]
    # And the new directory is watched, not just noticed once.
    rec.reset()
    t0 = time.monotonic()
    watched_store.withdraw(Endpoint(cluster_id="back", cable_name="cable"))
    assert latency(rec, t0) < 1.0


def test_watch_survives_the_directory_being_renamed_away(
    store: DirectoryStore, start_watch: Watch
) -> None:
    store.publish(make_endpoint("old"))
    rec = start_watch(store)
    store.endpoints_dir.rename(store.root / "endpoints.old")
    assert rec.wait_for(1)
    time.sleep(0.1)
    rec.reset()
    # Writes into the renamed-away directory are no longer ours to report...
    (store.root / "endpoints.old" / "x.json").write_text("{}")
    assert not rec.wait_for(1, timeout=0.2)
    # ...but the new directory's are.
    t0 = time.monotonic()
    store.publish(make_endpoint("new"))
    assert latency(rec, t0) < 1.0


def test_fallback_to_polling_when_inotify_is_unavailable(
    tmp_path: Path,
    start_watch: Watch,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def unavailable() -> inotify.Inotify:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(inotify, "Inotify", unavailable)
    store = DirectoryStore(tmp_path, poll_interval=0.05)
    with caplog.at_level(logging.INFO, logger="wgcable.store.directory"):
        rec = start_watch(store)
    assert "inotify unavailable" in caplog.text
    t0 = time.monotonic()
    store.publish(make_endpoint())
    assert latency(rec, t0) < 1.0


def test_inotify_fd_is_closed_when_the_watch_ends(store: DirectoryStore) -> None:
    def inotify_fds() -> int:
        fds = Path("/proc/self/fd")
        count = 0
        for fd in fds.iterdir():
            try:
                count += os.readlink(fd) == "anon_inode:inotify"
            except OSError:
                continue
        return count

    before = inotify_fds()
    rec, stop = Recorder(), threading.Event()
    t = threading.Thread(target=store.watch, args=(rec, stop))
    t.start()
    try:
        assert rec.wait_for(1)
        assert inotify_fds() == before + 1
    finally:
        stop.set()
        t.join(5)
    assert not t.is_alive()
    assert inotify_fds() == before


def test_watch_does_not_busy_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[float | None] = []
    real_read = inotify.Inotify.read

    def counting_read(self: inotify.Inotify, timeout: float | None) -> list[inotify.Event]:
        reads.append(timeout)
        return real_read(self, timeout)

    monkeypatch.setattr(inotify.Inotify, "read", counting_read)
    # Even with the endpoints directory missing (it has to be looked for again).
    store = DirectoryStore(tmp_path / "store", poll_interval=0.1)
    store.snapshot()
    shutil.rmtree(store.root)
    rec, stop = Recorder(), threading.Event()
    t = threading.Thread(target=store.watch, args=(rec, stop))
    t.start()
    time.sleep(1.0)
    stop.set()
    t.join(5)
    assert not t.is_alive()
    assert len(reads) <= 15  # ~10 wakeups a second at poll_interval=0.1


def test_close_ends_watches(store: DirectoryStore) -> None:
    rec, stop = Recorder(), threading.Event()
    t = threading.Thread(target=store.watch, args=(rec, stop))
    t.start()
    assert rec.wait_for(1)
    store.close()
    t.join(5)
    assert not t.is_alive()


def test_a_failing_callback_does_not_end_the_watch(
    store: DirectoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[float] = []
    ready = threading.Event()

    def changed() -> None:
        calls.append(time.monotonic())
        ready.set()
        raise RuntimeError("boom")

    stop = threading.Event()
    t = threading.Thread(target=store.watch, args=(changed, stop))
    with caplog.at_level(logging.ERROR, logger="wgcable.store.directory"):
        t.start()
        try:
            assert ready.wait(5)
            time.sleep(0.05)
            store.publish(make_endpoint())
            deadline = time.monotonic() + 5
            while len(calls) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            stop.set()
            t.join(5)
    assert len(calls) >= 2
    assert "callback failed" in caplog.text


# --- inotify wrapper ---


def test_parse_events_splits_padded_names() -> None:
    import struct

    buf = struct.pack("iIII", 1, inotify.IN_CREATE, 0, 16) + b"a.json".ljust(16, b"\0")
    buf += struct.pack("iIII", 2, inotify.IN_IGNORED, 0, 0)
    assert inotify.parse_events(buf) == [
        inotify.Event(wd=1, mask=inotify.IN_CREATE, cookie=0, name="a.json"),
        inotify.Event(wd=2, mask=inotify.IN_IGNORED, cookie=0, name=""),
    ]


def test_inotify_reads_events_and_times_out(tmp_path: Path) -> None:
    with inotify.Inotify() as ino:
        wd = ino.add_watch(tmp_path, inotify.IN_CREATE)
        t0 = time.monotonic()
        assert ino.read(0.05) == []
        assert time.monotonic() - t0 >= 0.04
        (tmp_path / "x").write_text("")
        events = ino.read(1.0)
        assert [(e.wd, e.name) for e in events] == [(wd, "x")]
        ino.rm_watch(wd)
        ino.rm_watch(wd)  # already gone: no error
    assert ino.closed


def test_inotify_add_watch_error_names_the_path(tmp_path: Path) -> None:
    with inotify.Inotify() as ino, pytest.raises(FileNotFoundError) as info:
        ino.add_watch(tmp_path / "missing", inotify.IN_CREATE)
    assert info.value.filename == str(tmp_path / "missing")


# --- properties ---

text = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=30)
name_part = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    endpoints=st.lists(
        st.builds(
            Endpoint,
            cluster_id=name_part,
            cable_name=name_part,
            hostname=text,
            subnets=st.lists(text, max_size=3),
            private_ip=text,
            public_ip=text,
            nat_enabled=st.booleans(),
            backend=text,
            backend_config=st.dictionaries(text, text, max_size=3),
            health_check_ip=text,
            private_ips=st.lists(text, max_size=2),
        ),
        max_size=5,
        unique_by=lambda e: e.object_name(),
    )
)
def test_any_published_endpoints_round_trip(endpoints: list[Endpoint]) -> None:
    with tempfile.TemporaryDirectory() as root:
        store = DirectoryStore(root)
        for ep in endpoints:
            store.publish(ep)
        snap = store.snapshot()
        assert snap.endpoints == {ep.object_name(): ep for ep in endpoints}
        assert snap.errors == {}


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    content=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids),
            max_leaves=10,
        ).map(lambda v: json.dumps({"cluster_id": "c", "subnets": v}).encode()),
    ),
    suffix=st.sampled_from([".json", ".yaml", ".yml"]),
)
def test_any_file_content_is_an_endpoint_or_an_error(content: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as root:
        store = DirectoryStore(root)
        store.snapshot()
        (store.endpoints_dir / f"x{suffix}").write_bytes(content)
        snap = store.snapshot()  # never raises
        assert len(snap.endpoints) + len(snap.errors) == 1
        assert set(snap.endpoints) | set(snap.errors) == {"x"}


@pytest.mark.parametrize("how", ["removed", "renamed", "not-a-directory"])
def test_a_missing_endpoints_directory_is_an_unavailable_store_not_an_empty_one(
    store: DirectoryStore, how: str
) -> None:
    store.publish(make_endpoint())
    assert len(store.snapshot().endpoints) == 1  # in use: not re-created from now on
    if how == "removed":
        shutil.rmtree(store.endpoints_dir)
    else:
        store.endpoints_dir.rename(store.root / "elsewhere")
        if how == "not-a-directory":
            store.endpoints_dir.write_text("")
    with pytest.raises((StoreUnavailableError, NotADirectoryError)):
        store.snapshot()
    assert store.read_statuses() == {}  # statuses are a report, not a state to keep
    if how == "renamed":
        (store.root / "elsewhere").rename(store.endpoints_dir)
        assert list(store.snapshot().endpoints) == ["cluster1-submariner-cable-cluster1-172-18-0-7"]


def test_the_fast_name_check_agrees_with_plain() -> None:
    from wgcable.safetext import plain

    names = ["a.json", "it's.json", "x" * 255, "x" * 256, "a\\b.json", "a\nb.json", "é.json"]
    names += [f"{chr(c)}.json" for c in range(0x250)]
    for name in names:
        assert directory._plain_name(name) == (plain(name, directory._NAME_MAX) == name), name
