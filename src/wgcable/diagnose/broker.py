"""The Kubernetes broker, checked as the agent uses it: reachable (a list of Endpoints),
the clock against the API server's ``Date`` header, and RBAC by dry-run writes
(``dryRun=All``: the API server authorizes and validates, and stores nothing)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import Any

from wgcable.cable.types import API_VERSION, Endpoint
from wgcable.diagnose.result import Result, fail, passed, warn

SKEW_WARN = 5.0  # seconds; Date has a resolution of one second
SKEW_FAIL = 15.0  # Submariner calls a gateway status this old stale


def clock_skew(skew: float) -> Result:
    """``skew``: our clock minus the API server's, in seconds."""
    direction = "ahead of" if skew > 0 else "behind"
    detail = f"this host's clock is {abs(skew):.1f} s {direction} the API server's"
    fix = "synchronise the clocks (NTP, chrony) of the gateways and the broker"
    if abs(skew) > SKEW_FAIL:
        return fail("clock-skew", f"{detail}: gateway statuses look stale or from the "
                    "future, and certificates may seem expired or not yet valid", fix)
    if abs(skew) > SKEW_WARN:
        return warn("clock-skew", detail, fix)
    return passed("clock-skew", f"{detail} (within {SKEW_WARN:g} s)")


def _status(exc: BaseException) -> int:
    status = getattr(exc, "status", 0)
    return status if isinstance(status, int) else 0


def _dry_run(what: str, call: Callable[[], Any], ok_statuses: tuple[int, ...]) -> str:
    """'' when allowed, else why not. A 404 or 409 comes after authorization: allowed."""
    from kubernetes.client.exceptions import ApiException

    from wgcable.store.kubernetes import describe_api_error

    try:
        call()
    except ApiException as exc:
        if _status(exc) in ok_statuses:
            return ""
        return f"{what}: {describe_api_error(exc)}"
    return ""


def checks(api_client: Any, namespace: str, endpoint: Endpoint, gateway: str,
           timeout: float, wall: Callable[[], float] = time.time) -> list[Result]:
    """Reachability, clock skew and RBAC of the agent's broker credentials."""
    from kubernetes import client

    from wgcable.store.kubernetes import (
        CLUSTER_LABEL,
        ENDPOINTS,
        GATEWAYS,
        GROUP,
        VERSION,
        describe_api_error,
    )

    api = client.CustomObjectsApi(api_client)
    host = str(getattr(api_client.configuration, "host", "?"))
    t0 = wall()
    try:
        data, _, headers = api.list_namespaced_custom_object_with_http_info(
            GROUP, VERSION, namespace, ENDPOINTS, _request_timeout=timeout)
    except Exception as exc:  # any failure to talk to it is the finding
        return [fail("broker", f"{host}: listing Endpoints in {namespace!r}: "
                     f"{describe_api_error(exc)}",
                     "check the kubeconfig's server and credentials, and that the API "
                     "server is reachable from the gateway (firewall, proxy)")]
    t1 = wall()
    count = len(data.get("items") or []) if isinstance(data, dict) else 0
    out = [passed("broker", f"{host}: {count} Endpoints in {namespace!r}, answered in "
                  f"{(t1 - t0) * 1000:.0f} ms")]
    date = (headers or {}).get("Date") or (headers or {}).get("date")
    try:
        server = email.utils.parsedate_to_datetime(date).timestamp() if date else None
    except (TypeError, ValueError):
        server = None
    if server is None:
        out.append(warn("clock-skew", "the API server sent no Date header", "none needed"))
    else:
        # Date is truncated to the second: the server's clock is in [server, server + 1).
        out.append(clock_skew((t0 + t1) / 2 - (server + 0.5)))

    body = endpoint.to_k8s_object(namespace)
    body["metadata"]["labels"] = {CLUSTER_LABEL: endpoint.cluster_id}
    name = endpoint.object_name()
    label = {"metadata": {"labels": {CLUSTER_LABEL: endpoint.cluster_id}}}
    status_patch = {"status": {"haStatus": "active"}}
    kw: dict[str, Any] = {"dry_run": "All", "_request_timeout": timeout}
    denied = [why for why in (
        _dry_run(f"create Endpoint {name}", lambda: api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, ENDPOINTS, body, **kw), (409,)),
        _dry_run(f"patch Endpoint {name}", lambda: api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, ENDPOINTS, name, label, **kw), (404,)),
        _dry_run(f"patch Gateway {gateway} status",
                 lambda: api.patch_namespaced_custom_object_status(
                     GROUP, VERSION, namespace, GATEWAYS, gateway, status_patch, **kw,
                     _content_type="application/merge-patch+json"), (404,)),
    ) if why]
    if denied:
        out.append(fail("rbac", "; ".join(denied),
                        "bind the gateway's identity to the shared Role of deploy/rbac.yaml "
                        "and to its cluster's Role (python -m wgcable.store.crds "
                        "cluster-rbac)"))
    else:
        out.append(passed("rbac", f"dry-run writes allowed: create and patch Endpoint {name}, "
                          f"patch Gateway {gateway} status ({API_VERSION})"))
    return out
