"""Which lease a gateway's settings name: a file next to a directory store, or a Lease on
an API server (the local cluster's, in-cluster by default) with the Kubernetes store."""

from __future__ import annotations

from wgcable.ha.lease import DEFAULT_LEASE_NAME, LeaseBackend
from wgcable.store.open import StoreSpec


def open_lease(spec: StoreSpec, cluster_id: str, *, name: str | None = None,
               kubeconfig: str | None = None, namespace: str = "submariner-operator"
               ) -> LeaseBackend:
    if spec.is_kubernetes:
        from wgcable.ha.kubelease import KubeLease
        from wgcable.store.kubernetes import load_api_client

        return KubeLease(load_api_client(kubeconfig), namespace, name or DEFAULT_LEASE_NAME,
                         spec.timeout)
    from wgcable.ha.filelease import FileLease

    # The directory is shared by every cluster of a lab: one lease per cluster.
    return FileLease(spec.store, name or cluster_id)
