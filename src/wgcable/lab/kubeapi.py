"""A real kube-apiserver (and its etcd) inside a lab namespace: the broker of
``--store kubernetes`` for the lab, the demo and the tests.

Both run in the lab's ``broker`` namespace: etcd on that namespace's loopback, the API server
on its underlay address, so gateways reach the broker across the simulated network as they
would a real one. Nothing listens in the root namespace. The binary comes from
``scripts/install-k8s.sh`` (built from Debian's source package and cached).

Everything here that talks to the API server does so from a thread inside the broker
namespace (``call_in_netns``): sockets belong to the namespace they were opened in.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from wgcable.cable.wireguard.userspace import process_running
from wgcable.lab.netns import LabError, Namespace
from wgcable.lab.process import stop_pid
from wgcable.netlink.netns import call_in_netns
from wgcable.store.crds import (
    GATEWAY_RULES,
    LEASE_ROLE,
    LEASE_RULES,
    SHARED_ROLE,
    all_crds,
    cluster_rbac,
)
from wgcable.store.open import DEFAULT_NAMESPACE

APISERVER_VERSION = "1.20.2"
APISERVER_BUILD = f"{APISERVER_VERSION}-r4"  # scripts/install-k8s.sh's version and recipe
APISERVER_ENV = "WGCABLE_KUBE_APISERVER"  # overrides where the binary is looked for
PORT = 6443
_ETCD_CLIENT = "http://127.0.0.1:2379"
_ETCD_PEER = "http://127.0.0.1:2380"
# Must not overlap any lab subnet (10.<i> and 10.<100+i> for clusters 1-50).
_SERVICE_RANGE = "10.254.0.0/24"
# comm is cut at 15 characters; "ip" until `ip netns exec` has exec'd the program.
AGENT_USER = "wgcable-agent"  # an identity with only deploy/rbac.yaml's shared Role
_APISERVER_NAMES = ("kube-apiserver", "kube-apiserver-", "ip")
_ETCD_NAMES = ("etcd", "ip")

T = TypeVar("T")


def cached_apiserver() -> Path:
    cache = Path(os.environ.get("WGCABLE_CACHE", Path.home() / ".cache" / "wgcable"))
    return cache / f"kube-apiserver-{APISERVER_BUILD}"


def find_apiserver() -> str | None:
    for candidate in (os.environ.get(APISERVER_ENV), str(cached_apiserver())):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("kube-apiserver")


def unavailable_reason() -> str | None:
    """Why no local API server can run here, or None when one can."""
    if find_apiserver() is None:
        return (f"no kube-apiserver (looked at ${APISERVER_ENV}, {cached_apiserver()} and "
                "PATH): run scripts/install-k8s.sh")
    if shutil.which("etcd") is None:
        return "no etcd on PATH: run scripts/install-k8s.sh (Debian's etcd-server)"
    return None


def lease_namespace(cluster_id: str) -> str:
    """The namespace of a lab cluster's gateway lease."""
    return f"wgcable-lease-{cluster_id}"


class LocalAPIServer:
    """etcd + kube-apiserver in network namespace ``ns``, with state under ``directory``.

    ``etcd_pid`` and ``apiserver_pid`` are public so that a lab can record them and stop
    them by PID after the process that started them is gone.
    """

    def __init__(self, ns: str, directory: Path, address: str, *, port: int = PORT,
                 namespace: str = DEFAULT_NAMESPACE) -> None:
        self.ns = ns
        self.dir = Path(directory)
        self.address = address
        self.port = port
        self.namespace = namespace
        self.etcd_pid = 0
        self.apiserver_pid = 0

    @property
    def kubeconfig(self) -> Path:
        """The admin's (for tests and people)."""
        return self.dir / "kubeconfig"

    @property
    def agent_kubeconfig(self) -> Path:
        """User ``wgcable-agent``, bound to the shared gateway Role only."""
        return self.dir / "agent.kubeconfig"

    def cluster_kubeconfig(self, cluster_id: str, gateways: dict[str, str]) -> Path:
        """A cluster's own identity, as a deployment gives each cluster: service account
        ``wgcable-gateway-<cluster_id>`` bound to the shared Role and to the cluster's own
        Role (``gateways``: host name -> private IP). Made once; the token outlives API
        server restarts (it is signed by our own key)."""
        path = self.dir / f"agent-{cluster_id}.kubeconfig"
        if path.exists():
            return path
        sa = f"{SHARED_ROLE}-{cluster_id}"
        self._create(f"/api/v1/namespaces/{self.namespace}/serviceaccounts", {
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}})
        rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{self.namespace}"
        subject = {"kind": "ServiceAccount", "name": sa, "namespace": self.namespace}
        for doc in cluster_rbac(cluster_id, gateways, self.namespace, subject):
            self._create(f"{rbac}/{doc['kind'].lower()}s", doc)
        # Its gateway lease: on a cluster's own API server in a deployment; here, in a
        # namespace of its own, with deploy/rbac.yaml's lease Role.
        lease_ns = lease_namespace(cluster_id)
        self._create("/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": lease_ns}})
        lease_rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{lease_ns}"
        self._create(f"{lease_rbac}/roles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": LEASE_ROLE}, "rules": LEASE_RULES})
        self._create(f"{lease_rbac}/rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": LEASE_ROLE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": LEASE_ROLE},
            "subjects": [subject]})
        status, body = self.request(
            "POST", f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{sa}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"expirationSeconds": 7 * 86400}})
        if status not in (200, 201):
            raise LabError(f"token for service account {sa}: HTTP {status}: {body}")
        _write_private(path, self._kubeconfig_text(body["status"]["token"], sa))
        return path

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"https://{host}:{self.port}"

    # --- life ---------------------------------------------------------------------------

    def start(self, timeout: float = 90) -> None:
        """Start etcd and the API server, wait until ready, install the CRDs and the broker
        namespace, and write ``kubeconfig``. Stops what it started if anything fails."""
        reason = unavailable_reason()
        if reason:
            raise LabError(reason)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._write_credentials()
        try:
            self._start_etcd()
            self.start_apiserver(timeout)
            self._install()
        except BaseException:
            self.stop()
            raise

    def _write_credentials(self) -> None:
        token, agent = secrets.token_hex(24), secrets.token_hex(24)
        _write_private(self.dir / "token", token)
        _write_private(self.dir / "agent.token", agent)
        _write_private(self.dir / "token.csv", f'{token},admin,admin,"system:masters"\n'
                       f"{agent},{AGENT_USER},{AGENT_USER}\n")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(self.dir / "sa.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()).decode())

    def _spawn(self, argv: list[str], log_name: str) -> int:
        with open(self.dir / log_name, "ab") as log:
            p = subprocess.Popen(
                Namespace(self.ns).cmd(*argv), stdin=subprocess.DEVNULL, stdout=log,
                stderr=log, start_new_session=True)
        return p.pid

    def _start_etcd(self) -> None:
        self.etcd_pid = self._spawn([
            "etcd", "--name", "broker", "--data-dir", str(self.dir / "etcd"),
            "--listen-client-urls", _ETCD_CLIENT, "--advertise-client-urls", _ETCD_CLIENT,
            "--listen-peer-urls", _ETCD_PEER, "--initial-advertise-peer-urls", _ETCD_PEER,
            "--initial-cluster", f"broker={_ETCD_PEER}",
            "--logger", "zap", "--log-level", "warn",
        ], "etcd.log")

    def start_apiserver(self, timeout: float = 90) -> None:
        """Start (or restart) the API server; etcd keeps the data across restarts."""
        binary = find_apiserver()
        if binary is None:
            raise LabError(unavailable_reason() or "no kube-apiserver")
        d = self.dir
        self.apiserver_pid = self._spawn([
            binary,
            "--etcd-servers", _ETCD_CLIENT,
            "--bind-address", self.address, "--advertise-address", self.address,
            "--secure-port", str(self.port), "--insecure-port", "0",
            "--cert-dir", str(d / "certs"),
            "--token-auth-file", str(d / "token.csv"),
            "--authorization-mode", "RBAC",
            "--service-account-key-file", str(d / "sa.key"),
            "--service-account-signing-key-file", str(d / "sa.key"),
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-cluster-ip-range", _SERVICE_RANGE,
            "--enable-priority-and-fairness=false", "--profiling=false",
            "--logtostderr", "--v=0",
        ], "kube-apiserver.log")
        self._wait_ready(timeout)
        self._write_kubeconfig()

    def stop_apiserver(self) -> None:
        """Stop only the API server (an outage); ``start_apiserver`` brings it back."""
        stop_pid(self.apiserver_pid, _APISERVER_NAMES, timeout=10)
        self.apiserver_pid = 0

    def stop(self) -> None:
        self.stop_apiserver()
        stop_pid(self.etcd_pid, _ETCD_NAMES, timeout=10)
        self.etcd_pid = 0

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not process_running(self.apiserver_pid, *_APISERVER_NAMES):
                raise LabError("kube-apiserver exited: " + self._log_tail("kube-apiserver.log"))
            try:
                status, body = self.request("GET", "/readyz", verify=False)
                if status == 200:
                    return
                last = f"HTTP {status}: {body}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.25)
        raise LabError(f"kube-apiserver not ready after {timeout:.0f} s ({last}): "
                       + self._log_tail("kube-apiserver.log"))

    def _log_tail(self, name: str, lines: int = 5) -> str:
        try:
            text = (self.dir / name).read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])

    def _write_kubeconfig(self) -> None:
        for path, token_file, user in ((self.kubeconfig, "token", "admin"),
                                       (self.agent_kubeconfig, "agent.token", AGENT_USER)):
            _write_private(path, self._kubeconfig_text((self.dir / token_file).read_text(), user))

    def _kubeconfig_text(self, token: str, user: str) -> str:
        doc = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "broker", "cluster": {
                "server": self.url,
                # The serving certificate the API server made itself (cert followed by CA).
                "certificate-authority": str(self.dir / "certs" / "apiserver.crt"),
            }}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "broker", "context": {
                "cluster": "broker", "user": user, "namespace": self.namespace}}],
            "current-context": "broker",
        }
        return yaml.safe_dump(doc, sort_keys=False)

    def _install(self) -> None:
        """The CRDs (waiting until established) and the broker namespace."""
        for crd in all_crds():
            self._create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        self._create("/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}})
        rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{self.namespace}"
        self._create(f"{rbac}/roles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": SHARED_ROLE}, "rules": GATEWAY_RULES})
        self._create(f"{rbac}/rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "wgcable-gateway"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": "wgcable-gateway"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": AGENT_USER}]})
        deadline = time.monotonic() + 30
        for plural in ("endpoints", "gateways"):
            path = f"/apis/submariner.io/v1/namespaces/{self.namespace}/{plural}"
            while True:
                status, body = self.request("GET", path)
                if status == 200:
                    break
                if time.monotonic() > deadline:
                    raise LabError(f"{plural}.submariner.io not served: HTTP {status} {body}")
                time.sleep(0.1)

    def _create(self, path: str, body: dict[str, Any]) -> None:
        status, reply = self.request("POST", path, body)
        if status not in (200, 201, 409):
            raise LabError(f"POST {path}: HTTP {status}: {reply}")

    # --- talking to it ------------------------------------------------------------------

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` from a thread in the broker namespace (where the API server is)."""
        return call_in_netns(self.ns, fn)

    def request(self, method: str, path: str, body: Any = None, *, verify: bool = True,
                content_type: str = "application/json",
                token: str | None = None) -> tuple[int, Any]:
        """One HTTPS request as the admin (or as whose ``token`` it is); returns (status,
        parsed JSON or text)."""
        token = token or (self.dir / "token").read_text()

        def go() -> tuple[int, Any]:
            if verify:
                ctx = ssl.create_default_context(cafile=str(self.dir / "certs" / "apiserver.crt"))
            else:  # only before the certificate exists (readiness)
                ctx = ssl._create_unverified_context()  # noqa: S323
            conn = http.client.HTTPSConnection(self.address, self.port, context=ctx, timeout=10)
            try:
                data = None if body is None else json.dumps(body).encode()
                headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
                if data is not None:
                    headers["Content-Type"] = content_type
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read().decode(errors="replace")
            finally:
                conn.close()
            try:
                return resp.status, json.loads(raw)
            except ValueError:
                return resp.status, raw

        return self.call(go)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
