"""The owner of an Endpoint (the agent whose cluster ID and cable name it is) restores it
when someone else edits it, and does not fight another writer at full speed."""

from __future__ import annotations

import dataclasses

from test_engine import LOCAL_ID, FakeStore, make_engine, remote


def test_ownership_an_edited_own_endpoint_is_restored() -> None:
    store = FakeStore({"c2-cable": remote("c2")})
    engine, _ = make_engine(store)
    engine.reconcile()
    assert [e.cluster_id for e in store.published] == [LOCAL_ID]
    name = engine.local.object_name()
    # Another gateway with broker rights points our endpoint at its own key and address.
    hijacked = dataclasses.replace(engine.local, private_ip="198.18.6.6",
                                   backend_config={"publicKey": "attacker-key"})
    store.put(name, hijacked, notify=False)
    engine.reconcile()
    assert len(store.published) == 2
    assert store.snapshot().endpoints[name].to_json() == engine.local.to_json()
    engine.reconcile()  # ours again: no further write
    assert len(store.published) == 2


def test_ownership_a_second_writer_is_not_fought_at_full_speed() -> None:
    store = FakeStore({"c2-cable": remote("c2")})
    engine, _ = make_engine(store)
    now = [1000.0]
    engine.clock = lambda: now[0]
    engine.reconcile()
    name = engine.local.object_name()
    duplicate = dataclasses.replace(engine.local, hostname="gw-other",
                                    backend_config={"publicKey": "other-key"})
    for _ in range(100):  # the other writer edits it every 0.1 s for 10 s
        store.put(name, duplicate, notify=False)
        engine.reconcile()
        now[0] += 0.1
    restores = len(store.published) - 1
    assert 3 <= restores <= 6  # at once, then after 1, 2, 4 s
    failure = engine.refresh_status().status_failure
    assert f"our endpoint {name} was changed by someone else" in failure
    # The other writer stops: ours stays, and after a quiet minute the status is clear.
    engine.reconcile()
    now[0] += 61
    engine.reconcile()
    assert store.snapshot().endpoints[name].to_json() == engine.local.to_json()
    assert "changed by someone else" not in engine.refresh_status().status_failure
