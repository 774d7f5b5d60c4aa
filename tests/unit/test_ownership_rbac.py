"""The broker RBAC: shared rules only where Kubernetes cannot narrow by name; changing and
deleting is per cluster, by name (the real API server checks it in tests/broker)."""

from __future__ import annotations

from wgcable.store.crds import GATEWAY_RULES, cluster_rbac


def test_ownership_rbac_shared_rules_change_nothing_that_exists() -> None:
    verbs = {v for rule in GATEWAY_RULES for v in rule["verbs"]}
    assert verbs == {"get", "list", "watch", "create"}


def test_ownership_rbac_a_cluster_role_names_only_its_own_objects() -> None:
    subject = {"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}
    role, own, shared = cluster_rbac("cluster1", {"gw1": "198.18.0.1", "gw1b": "198.18.0.9"},
                                     "submariner-k8s-broker", subject)
    assert role["kind"] == "Role"
    for rule in role["rules"]:
        assert rule["resourceNames"], rule  # never a rule for every object
        assert not {"create", "list", "watch"} & set(rule["verbs"])
    names = {r["resources"][0]: r["resourceNames"] for r in role["rules"]}
    assert names["endpoints"] == ["cluster1-submariner-cable-cluster1-198-18-0-1",
                                  "cluster1-submariner-cable-cluster1-198-18-0-9"]
    # Gateway objects carry the cluster: two clusters' nodes may share a host name.
    assert names["gateways"] == names["gateways/status"] == ["cluster1-gw1", "cluster1-gw1b"]
    assert own["roleRef"]["name"] == role["metadata"]["name"]
    assert shared["roleRef"]["name"] == "wgcable-gateway"
    assert own["subjects"] == shared["subjects"] == [subject]
