"""The lease as a ``coordination.k8s.io/v1`` Lease on the local cluster's API server.

Where Submariner keeps its gateway lock: the gateways of one cluster elect their active one
on their own cluster's API server (in-cluster, through the pod's service account), not on
the broker. Optimistic concurrency is the API server's: a create fails with 409 when the
Lease exists, a replace names the ``resourceVersion`` it replaces and fails with 409 when
someone wrote in between.

The calls go through ``CustomObjectsApi``: its paths are ``/apis/<group>/<version>/
namespaces/<ns>/<plural>/<name>``, which is where Leases are, and it sends and returns plain
JSON (the typed ``CoordinationV1Api`` would parse ``renewTime`` into a datetime, and fail on
a Lease someone wrote with nonsense in it before we could say which field is wrong).
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from wgcable.ha.lease import (
    API_VERSION,
    LeaseConflictError,
    LeaseRecord,
    LeaseUnavailableError,
    record_from_spec,
)
from wgcable.safetext import plain, safe
from wgcable.store.kubernetes import describe_api_error

log = logging.getLogger(__name__)

GROUP = "coordination.k8s.io"
VERSION = "v1"
PLURAL = "leases"


class KubeLease:
    """A ``LeaseBackend`` on one Lease object, ``namespace``/``name``."""

    def __init__(self, api_client: Any, namespace: str, name: str,
                 request_timeout: float = 10.0) -> None:
        for what, value in (("namespace", namespace), ("lease name", name)):
            if not (isinstance(value, str) and 0 < len(value) <= 253 and value.isprintable()
                    and "/" not in value):
                raise ValueError(f"{what} {safe(value)} is not a Kubernetes object name")
        self.namespace = namespace
        self.name = name
        self.request_timeout = request_timeout
        self._api_client = api_client
        self._api = client.CustomObjectsApi(api_client)
        self._bad = ""  # the last complaint about the object, logged once

    @property
    def host(self) -> str:
        return str(getattr(self._api_client.configuration, "host", "?"))

    def describe(self) -> str:
        return f"Lease {self.namespace}/{self.name} on kubernetes API {self.host}"

    # --- calls ------------------------------------------------------------------------------

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        """One request. ApiException for 404 and 409 (the callers' to decide);
        LeaseUnavailableError for everything else: unreachable, timed out, refused (403),
        a server error, an answer that is not an object."""
        try:
            result = fn(GROUP, VERSION, self.namespace, PLURAL, *args,
                        _request_timeout=self.request_timeout)
        except ApiException as exc:
            if exc.status in (404, 409):
                raise
            raise self._unavailable(what, exc) from None
        except Exception as exc:  # urllib3: refused, reset, timed out, TLS, ...
            raise self._unavailable(what, exc) from None
        if not isinstance(result, dict):
            raise LeaseUnavailableError(f"{self.describe()}: {what}: the answer is not an "
                                        "object")
        return result

    def _unavailable(self, what: str, exc: BaseException) -> LeaseUnavailableError:
        return LeaseUnavailableError(f"{self.describe()}: {what}: {describe_api_error(exc)}")

    # --- the backend ------------------------------------------------------------------------

    def read(self) -> LeaseRecord | None:
        try:
            obj = self._call("reading", self._api.get_namespaced_custom_object, self.name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._unavailable("reading", exc) from None  # 409 on a GET: not ours
        return self._record(obj)

    def _record(self, obj: dict[str, Any]) -> LeaseRecord:
        meta = obj.get("metadata")
        rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if not isinstance(rv, str) or not rv or len(rv) > 64 or not rv.isprintable():
            # Without its version the object cannot be replaced: no use calling it free.
            raise LeaseUnavailableError(f"{self.describe()}: the server's answer has no "
                                        "metadata.resourceVersion")
        try:
            record = record_from_spec(obj.get("spec") or {}, rv)
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            return self._corrupt(plain(str(exc), 120), rv)
        self._bad = ""
        return record

    def _corrupt(self, why: str, version: str) -> LeaseRecord:
        """A Lease nobody can read is free: a candidate may replace it, and only this very
        version of it. Never its content in the message (it may be anything)."""
        if why != self._bad:
            log.warning("%s: %s; taken as free", self.describe(), why)
            self._bad = why
        return LeaseRecord(holder="", duration=0.0, acquire_time=0.0, renew_time=0.0,
                           transitions=0, version=version)

    def write(self, record: LeaseRecord, replaces: LeaseRecord | None) -> LeaseRecord:
        body: dict[str, Any] = {
            "apiVersion": API_VERSION, "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": record.spec(),
        }
        try:
            if replaces is None:
                what = "creating"
                written = self._call(what, self._api.create_namespaced_custom_object, body)
            else:
                what = "replacing"
                if not replaces.version:
                    raise LeaseConflictError(f"{self.describe()}: no version to replace")
                body["metadata"]["resourceVersion"] = replaces.version
                written = self._call(what, self._api.replace_namespaced_custom_object,
                                     self.name, body)
        except ApiException as exc:
            if exc.status == 409 or (exc.status == 404 and replaces is not None):
                # Created by someone else meanwhile, changed meanwhile, or deleted.
                raise LeaseConflictError(f"{self.describe()} changed meanwhile "
                                         f"({describe_api_error(exc)})") from None
            raise self._unavailable(what, exc) from None
        meta = written.get("metadata")
        rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if not isinstance(rv, str) or not rv:
            raise LeaseUnavailableError(f"{self.describe()}: {what}: the server's answer has "
                                        "no metadata.resourceVersion")
        try:  # as the server stored it (whole seconds of duration)
            return record_from_spec(written.get("spec"), rv)
        except (ValueError, TypeError, OverflowError, RecursionError):
            return LeaseRecord(record.holder, record.duration, record.acquire_time,
                               record.renew_time, record.transitions, rv)

    def close(self) -> None:
        """The API client is the caller's (it may serve the store too): left open."""
