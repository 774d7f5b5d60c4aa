"""The few API calls `wgcable broker` makes as the broker's administrator, through the
official client (the store's dependency), with errors that never carry the token."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import yaml

from wgcable.safetext import oneline
from wgcable.store.base import StoreUnavailableError
from wgcable.store.kubernetes import describe_api_error, load_api_client


class KubeError(RuntimeError):
    """An API call failed; the message names the call and the server's answer."""


class Kube:
    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig
        try:
            self._client = load_api_client(kubeconfig)
        except StoreUnavailableError as exc:
            raise KubeError(str(exc)) from None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, parsed body); a 4xx/5xx is returned, not raised; a connection error
        raises KubeError."""
        from kubernetes.client.exceptions import ApiException

        try:
            # The generated client's own steps: serialize (auth header, host), send, read.
            m, url, headers, data, _ = self._client.param_serialize(
                method, path, body=body, auth_settings=["BearerToken"],
                header_params={"Accept": "application/json",
                               "Content-Type": "application/json"})
            response = self._client.call_api(m, url, header_params=headers, body=data,
                                             _request_timeout=15)
            response.read()
            status, raw = int(response.status), response.data
        except ApiException as exc:
            return int(exc.status or 0), describe_api_error(exc)
        except Exception as exc:  # urllib3's, ssl's: the connection itself
            raise KubeError(f"{method} {path}: {describe_api_error(exc)}") from None
        try:
            reply = json.loads(raw)
        except ValueError:
            reply = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        if status >= 400 and isinstance(reply, dict):
            # The server's message only: never the request (its headers hold the token).
            return status, oneline(str(reply.get("message", "")), 300)
        return status, reply

    def ensure(self, path: str, body: dict[str, Any], *, replace: bool = False) -> None:
        """Create the object at collection ``path``; one that exists is kept, or replaced
        with ``replace``."""
        status, reply = self.request("POST", path, body)
        if status == 409 and replace:
            status, reply = self.request("PUT", f"{path}/{body['metadata']['name']}", body)
        if status not in (200, 201, 409):
            raise KubeError(f"{body['kind']} {body['metadata']['name']!r}: HTTP {status}: "
                            f"{reply}")

    def get(self, path: str) -> dict[str, Any] | None:
        status, reply = self.request("GET", path)
        if status == 404:
            return None
        if status != 200 or not isinstance(reply, dict):
            raise KubeError(f"GET {path}: HTTP {status}: {reply}")
        return reply

    def server_and_ca(self) -> tuple[str, str]:
        """The current context's server URL and its CA certificate (base64 PEM), for the
        kubeconfigs handed to clusters (which cannot read a file of this host)."""
        try:
            doc = yaml.safe_load(Path(self.kubeconfig).read_text())
            context = next(c["context"] for c in doc["contexts"]
                           if c["name"] == doc["current-context"])
            cluster = next(c["cluster"] for c in doc["clusters"]
                           if c["name"] == context["cluster"])
            server = str(cluster["server"])
        except (OSError, yaml.YAMLError, KeyError, TypeError, StopIteration) as exc:
            raise KubeError(f"kubeconfig {self.kubeconfig!r}: cannot find the current "
                            f"context's server ({type(exc).__name__})") from None
        if "certificate-authority-data" in cluster:
            return server, str(cluster["certificate-authority-data"])
        if "certificate-authority" in cluster:
            ca = Path(cluster["certificate-authority"])
            if not ca.is_absolute():
                ca = Path(self.kubeconfig).parent / ca
            return server, base64.b64encode(ca.read_bytes()).decode()
        raise KubeError(f"kubeconfig {self.kubeconfig!r}: the cluster has no certificate "
                        "authority; the clusters need one to trust the broker")
