"""Which lease a gateway's settings name: a file next to a directory store, or a Lease on
an API server (the local cluster's, in-cluster by default) with the Kubernetes store."""

from __future__ import annotations

from wgcable.ha.lease import DEFAULT_LEASE_NAME, LeaseBackend
from wgcable.store.base import StoreUnavailableError
from wgcable.store.open import StoreSpec


def open_lease(spec: StoreSpec, cluster_id: str, *, name: str | None = None,
               kubeconfig: str | None = None, namespace: str = "submariner-operator"
               ) -> LeaseBackend:
    if spec.is_kubernetes:
        from wgcable.ha.kubelease import KubeLease
        from wgcable.store.kubernetes import load_api_client

        try:
            api = load_api_client(kubeconfig)
        except StoreUnavailableError as e:
            raise StoreUnavailableError(
                f"the gateway lease: {e}; give --lease-kubeconfig (the API server of this "
                "cluster), or --ha off for no election") from None
        return KubeLease(api, namespace, name or DEFAULT_LEASE_NAME, spec.timeout)
    from wgcable.ha.filelease import FileLease

    # The directory is shared by every cluster of a lab: one lease per cluster.
    return FileLease(spec.store, name or cluster_id)
