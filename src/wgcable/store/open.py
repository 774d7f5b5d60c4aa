"""Which endpoint store a setting names, and opening it.

``--store`` is a directory (the embedded store) or the word ``kubernetes`` (a broker API
server). A directory literally named "kubernetes" is still reachable as ``./kubernetes``.

A directory store must be one already, unless the agent is told to create it
(``--create-store``) or it is an absolute path under one of AUTO_CREATE_PARENTS: any other
word would otherwise quietly become a directory (``--store kuberentes`` ran with an empty
store of its own, seeing no other gateway).
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from wgcable.store.base import EndpointStore, StoreUnavailableError

log = logging.getLogger(__name__)

KUBERNETES = "kubernetes"
DEFAULT_NAMESPACE = "submariner-k8s-broker"
# A store request taking longer counts as failed. 10 s: an API server answers in well under
# a second, even across a WAN, unless it is down or overloaded; and with the default
# 5 s status interval a hung broker shows in the status within 15 s, the age at which
# Submariner calls a gateway status stale.
DEFAULT_STORE_TIMEOUT = 10.0
# Where a missing directory store is created without --create-store: the agent's own
# places (the state directory's default, and its runtime directory). A path there is no
# mistyped word.
AUTO_CREATE_PARENTS = (Path("/var/lib/wgcable"), Path("/run/wgcable"))


@dataclass(frozen=True, slots=True)
class StoreSpec:
    store: str  # a directory, or "kubernetes"
    kubeconfig: str | None = None  # kubernetes only; None: the in-cluster service account
    namespace: str = DEFAULT_NAMESPACE  # kubernetes only
    timeout: float = DEFAULT_STORE_TIMEOUT  # seconds a request may take
    create: bool = False  # a directory store that does not exist may be created

    @property
    def is_kubernetes(self) -> bool:
        return self.store == KUBERNETES

    def describe(self) -> str:
        if self.is_kubernetes:
            source = self.kubeconfig or "in-cluster service account"
            return f"kubernetes namespace {self.namespace} ({source})"
        return f"directory {self.store}"


def _auto_created(store: str) -> bool:
    path = Path(os.path.normpath(store))  # no way out of the parent through '..'
    return path.is_absolute() and any(path != p and path.is_relative_to(p)
                                      for p in AUTO_CREATE_PARENTS)


def _did_you_mean(store: str) -> str:
    word = store.strip().lower()
    if word in ("k8s", "kube") or difflib.get_close_matches(word, [KUBERNETES], cutoff=0.7):
        return f"; did you mean {KUBERNETES!r}?"
    return f"; for a broker API server, say --store {KUBERNETES}"


def check_directory_store(spec: StoreSpec, *, create: bool = True) -> None:
    """Refuse a directory store that is not a directory, or that does not exist and may not
    be created; create it when it may be (and ``create``: cleanup creates nothing).
    Raises StoreUnavailableError naming the value."""
    path = Path(spec.store)
    if path.is_dir():
        return
    if path.exists() or path.is_symlink():  # a file, or a link to nothing
        raise StoreUnavailableError(f"--store {spec.store!r} is not a directory"
                                    f"{_did_you_mean(spec.store)}")
    allowed = spec.create or _auto_created(spec.store)
    if not allowed:
        parents = " or ".join(str(p) for p in AUTO_CREATE_PARENTS)
        raise StoreUnavailableError(
            f"--store {spec.store!r}: no such directory{_did_you_mean(spec.store)} "
            f"(a new directory store is created with --create-store, or when it is an "
            f"absolute path under {parents})")
    if create:
        try:
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(
                f"--store {spec.store!r}: cannot create it: {exc.strerror or exc}") from None
        log.info("created the store directory %s", path)


def open_store(spec: StoreSpec, *, create: bool = True) -> EndpointStore:
    """The store ``spec`` names. Raises StoreUnavailableError when a kubeconfig is unusable
    or the directory is not one (see check_directory_store; ``create``: a missing one may
    be created, as the settings allow)."""
    if spec.is_kubernetes:
        try:
            # Imported only here: the client is an optional dependency.
            from wgcable.store.kubernetes import KubernetesStore
        except ImportError as exc:
            raise StoreUnavailableError(
                "the kubernetes store needs the 'kubernetes' Python package "
                f"(pip install 'wgcable[kubernetes]'): {exc}") from None

        return KubernetesStore(spec.namespace, spec.kubeconfig, request_timeout=spec.timeout)
    from wgcable.store.directory import DirectoryStore

    check_directory_store(spec, create=create)
    return DirectoryStore(spec.store, create_dirs=create)
