"""An API server alone (no clusters), in a network namespace of its own, on its loopback:
what the tests of the schema, the manifests, the lease and the store by themselves need."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from wgcable.lab.kubeapi import LocalAPIServer, unavailable_reason
from wgcable.lab.netns import Namespace, list_namespaces


def skip_without_kube() -> None:
    """Skip, with the reason, where the tier cannot run: not root, or no API server built."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)


@contextmanager
def lone_api_server(ns_name: str, workdir: Path) -> Iterator[LocalAPIServer]:
    """A started API server in namespace ``ns_name``; stopped and its namespace deleted at
    the end, pass or fail."""
    skip_without_kube()
    ns = Namespace(ns_name).create()
    api = LocalAPIServer(ns.name, workdir, "127.0.0.1")
    try:
        api.start()
        yield api
    finally:
        api.stop()
        ns.delete()
        assert ns.name not in list_namespaces()
