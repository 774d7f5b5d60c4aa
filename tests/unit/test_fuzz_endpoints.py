"""Fuzzing (hypothesis): hostile store entries through the real DirectoryStore, Engine and
WireGuardDriver, with only the kernel side faked (tests/unit/fake_kernel.py).

Whatever the store holds: nothing crashes, no route or allowed IP ever covers a default
prefix, the local cluster's subnets, the gateway's own addresses or a non-unicast range,
and the private key appears in no log line (DEBUG included), status, store file, metrics,
`wgcable show` output or repr. A failure prints the example and a blob to replay it with
``@reproduce_failure``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path

import pytest
from fake_kernel import DEVICE, FakeIP, fake_driver
from hypothesis import HealthCheck, given, settings
from prometheus_client import generate_latest

from hostile import STORE_ENTRIES, Local, bad_prefixes, leaks, write_entries
from wgcable.agent.statusfile import STATUS_FILE, write_status_file
from wgcable.cable.types import Endpoint
from wgcable.cli.show import device_json, device_text
from wgcable.engine.engine import Engine
from wgcable.engine.metrics import GatewayMetricsState, make_registry
from wgcable.store.directory import DirectoryStore
from wgcable.wgctrl.memory import MemoryBackend
from wgcable.wgctrl.uapi import protocol

pytestmark = pytest.mark.fuzz

SUBNETS = ("10.1.0.0/16", "10.101.0.0/16", "fd00:1::/48")
ADDRESSES = [("eth0", "198.18.0.1", 24), ("cni0", "10.1.0.1", 24), ("lo", "127.0.0.1", 8),
             ("lo", "::1", 128), ("eth0", "fe80::1", 64)]


@contextmanager
def all_logs() -> Iterator[tuple[StringIO, list[logging.LogRecord]]]:
    """Every wgcable log line at DEBUG, as text, and the records at ERROR and above."""
    text, errors = StringIO(), []

    class Errors(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record)

    logger = logging.getLogger("wgcable")
    handler = logging.StreamHandler(text)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    errs = Errors(logging.ERROR)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    logger.addHandler(errs)
    try:
        yield text, errors
    finally:
        logger.removeHandler(handler)
        logger.removeHandler(errs)
        logger.setLevel(level)


@settings(max_examples=120, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(first=STORE_ENTRIES, second=STORE_ENTRIES)
def test_fuzz_hostile_endpoints_through_store_engine_driver(
    first: list[tuple[str, object]], second: list[tuple[str, object]]
) -> None:
    with tempfile.TemporaryDirectory(prefix="wgcable-fuzz-") as tmp, all_logs() as (logs, errors):
        root = Path(tmp)
        local_ep = Endpoint(cluster_id="cluster1", cable_name="cable", hostname="gw1",
                            subnets=list(SUBNETS), private_ip="198.18.0.1",
                            health_check_ip="10.1.0.1", backend="wireguard")
        driver = fake_driver(local_ep, root / "state", ADDRESSES)
        driver.init()
        try:
            store = DirectoryStore(root / "store")
            engine = Engine(local_ep, driver, store, hostname="gw1", version="fuzz",
                            on_status=lambda s: write_status_file(root / "state", s))
            local = Local("cluster1", SUBNETS, tuple(a for _, a, _ in ADDRESSES),
                          driver.public_key.base64())
            write_entries(store.endpoints_dir, first, local, "a")
            # What Engine.start does, without its threads.
            store.publish(local_ep)
            engine.reconcile()
            driver.mark_synced()
            statuses = [engine.refresh_status()]
            # The store changes under the running engine: the old entries go, new ones come.
            for p in store.endpoints_dir.glob("a*"):
                p.unlink()
            write_entries(store.endpoints_dir, second, local, "b")
            engine.reconcile()
            engine.resync()
            statuses.append(engine.refresh_status())
        finally:
            driver.close()

        # Nothing crashed: an unexpected exception in the driver is logged at ERROR.
        assert [r.getMessage() for r in errors] == []

        # Nothing unsafe was ever installed.
        ip = driver.ip
        mem = driver.device.mem  # type: ignore[attr-defined]
        assert isinstance(ip, FakeIP)
        assert isinstance(mem, MemoryBackend)
        assert bad_prefixes(local, ip.added) == []
        allowed = [n for _, cfg in mem.applied for pc in cfg.peers for n in pc.allowed_ips]
        assert bad_prefixes(local, allowed) == []
        # The in-memory backend never encodes: every config it took must pass the real
        # UAPI encoder's checks (no zone, one value per line).
        for _, cfg in mem.applied:
            protocol.encode_set(cfg)
        own = driver.public_key
        assert all(pc.public_key != own for _, cfg in mem.applied for pc in cfg.peers)

        # The private key is nowhere.
        assert driver._key is not None
        secret = driver._key
        device = mem.device(DEVICE)
        # No peer's allowed IPs capture another peer's gateway address (its tunnel packets).
        for p in device.peers:
            for q in device.peers:
                if p is not q and q.endpoint is not None:
                    assert not [n for n in p.allowed_ips if q.endpoint.ip in n], (p, q)
        state = GatewayMetricsState.for_local(local_ep, driver.name, statuses[-1].connections,
                                              dict(engine.established))
        texts = {
            "logs": logs.getvalue(),
            "statuses": json.dumps([s.to_json() for s in statuses]),
            "status file": (root / "state" / STATUS_FILE).read_text(),
            "metrics": generate_latest(make_registry(lambda: state)).decode(),
            "show": device_text(device, datetime.now(UTC)),
            "show --json": json.dumps(device_json(device, datetime.now(UTC))),
            "reprs": repr((device, mem.applied, statuses, driver._conns, list(driver._index),
                           driver.__dict__)),
        }
        for path in (root / "store").rglob("*"):
            if path.is_file():
                texts[str(path)] = path.read_text(errors="replace")
        forms = [secret.base64(), secret.base64().rstrip("="), secret.hex(), secret.hex().upper()]
        assert leaks(forms, texts) == []
