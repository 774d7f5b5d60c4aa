"""Which endpoint store a setting names, and opening it.

``--store`` is a directory (the embedded store) or the word ``kubernetes`` (a broker API
server). A directory literally named "kubernetes" is still reachable as ``./kubernetes``.
"""

from __future__ import annotations

from dataclasses import dataclass

from wgcable.store.base import EndpointStore, StoreUnavailableError

KUBERNETES = "kubernetes"
DEFAULT_NAMESPACE = "submariner-k8s-broker"


@dataclass(frozen=True, slots=True)
class StoreSpec:
    store: str  # a directory, or "kubernetes"
    kubeconfig: str | None = None  # kubernetes only; None: the in-cluster service account
    namespace: str = DEFAULT_NAMESPACE  # kubernetes only

    @property
    def is_kubernetes(self) -> bool:
        return self.store == KUBERNETES

    def describe(self) -> str:
        if self.is_kubernetes:
            source = self.kubeconfig or "in-cluster service account"
            return f"kubernetes namespace {self.namespace} ({source})"
        return f"directory {self.store}"


def open_store(spec: StoreSpec) -> EndpointStore:
    """The store ``spec`` names. Raises StoreUnavailableError when a kubeconfig is unusable."""
    if spec.is_kubernetes:
        try:
            # Imported only here: the client is an optional dependency.
            from wgcable.store.kubernetes import KubernetesStore
        except ImportError as exc:
            raise StoreUnavailableError(
                "the kubernetes store needs the 'kubernetes' Python package "
                f"(pip install 'wgcable[kubernetes]'): {exc}") from None

        return KubernetesStore(spec.namespace, spec.kubeconfig)
    from wgcable.store.directory import DirectoryStore

    return DirectoryStore(spec.store)
