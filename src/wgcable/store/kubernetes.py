"""The Kubernetes endpoint store: Submariner's ``submariner.io/v1`` objects in a broker namespace.

Endpoints are listed once, then watched from the list's resourceVersion; the watch resumes
from the last version it saw after a disconnect or a server-side timeout, and lists again
after 410 Gone (the version was compacted away). What was listed or watched is kept in a
cache that ``snapshot()`` serves, so while the API server is unreachable the agent keeps
working from the last known state (and its tunnels stay up) and catches up on reconnection.

Gateway statuses are written to ``gateways.submariner.io`` objects named after the host,
through the status subresource.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from wgcable.cable.types import API_VERSION, Endpoint, EndpointFormatError, GatewayStatus
from wgcable.safetext import oneline, plain
from wgcable.store.base import Snapshot, StoreUnavailableError, notify
from wgcable.store.open import DEFAULT_NAMESPACE
from wgcable.wgctrl import IPAddress

log = logging.getLogger(__name__)

GROUP = "submariner.io"
VERSION = "v1"
ENDPOINTS = "endpoints"
GATEWAYS = "gateways"
CLUSTER_LABEL = "submariner-io/clusterID"  # what Submariner labels its Endpoints with

_MAX_MESSAGE = 300
_CONFLICT_RETRIES = 5


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


@dataclass(slots=True)
class _Entry:
    resource_version: str
    parsed: Endpoint | str  # the endpoint, or what is wrong with the object


def _short(text: str) -> str:
    # One line, control characters escaped: the text may be the server's echo of a value.
    return oneline(text, _MAX_MESSAGE)


def describe_api_error(exc: BaseException) -> str:
    """One line for an API or connection error: the status and the server's message, never
    the request headers (they hold the bearer token)."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status:
        reason = getattr(exc, "reason", "") or ""
        message = ""
        body = getattr(exc, "body", None)
        if body:
            try:
                message = str(json.loads(body).get("message", ""))
            except (ValueError, AttributeError):
                message = str(body)
        return _short(f"HTTP {status} {reason}: {message}".rstrip(": "))
    return _short(f"{type(exc).__name__}: {exc}")


def _parse_endpoint(obj: Any) -> Endpoint | str:
    try:
        return Endpoint.from_json(obj)
    except EndpointFormatError as exc:
        return _short(str(exc))
    except Exception as exc:  # one odd object must never break a snapshot
        return _short(f"unexpected {type(exc).__name__}: {exc}")


def _name_and_version(obj: Any) -> tuple[str, str] | None:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return None
    return meta["name"], str(meta.get("resourceVersion", ""))


def load_api_client(kubeconfig: str | None, context: str | None = None) -> Any:
    """An ApiClient from a kubeconfig file, or from the pod's service account without one."""
    configuration = client.Configuration()
    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, context=context,
                                    client_configuration=configuration, persist_config=False)
        else:
            config.load_incluster_config(client_configuration=configuration)
    except (config.ConfigException, OSError, ValueError, TypeError) as exc:
        where = f"kubeconfig {kubeconfig!r}" if kubeconfig else "in-cluster service account"
        raise StoreUnavailableError(f"cannot load the {where}: {_short(str(exc))}") from None
    return client.ApiClient(configuration)


class KubernetesStore:
    """An ``EndpointStore`` on a Kubernetes API server (the broker)."""

    def __init__(
        self,
        namespace: str = DEFAULT_NAMESPACE,
        kubeconfig: str | None = None,
        *,
        context: str | None = None,
        api_client: Any = None,
        request_timeout: float = 10.0,
        watch_timeout: int = 300,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
    ) -> None:
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.request_timeout = request_timeout
        self.watch_timeout = watch_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._api_client = api_client if api_client is not None else load_api_client(
            kubeconfig, context)
        self._api = client.CustomObjectsApi(self._api_client)
        self._lock = threading.Lock()
        self._cache: dict[str, _Entry] | None = None  # None until a list succeeded
        self._resource_version = ""
        self._closed = threading.Event()
        self._response: Any = None  # the open watch stream, so close() can abort it
        self.problem = ""  # why the API is unusable now; "" while it is fine
        self._down_since: float | None = None

    @property
    def host(self) -> str:
        return str(getattr(self._api_client.configuration, "host", "?"))

    def server_addresses(self) -> list[IPAddress]:
        """The API server's addresses: its URL's literal IP, else what its name resolves
        to now (once, at start-up; a name that does not resolve protects nothing)."""
        name = urllib.parse.urlsplit(self.host).hostname or ""
        try:
            return [ipaddress.ip_address(name.partition("%")[0])]
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as e:
            log.warning("kubernetes API %s: cannot resolve %r to protect it from remote "
                        "subnets: %s", self.host, name, e)
            return []
        found: list[IPAddress] = []
        for info in infos:
            with contextlib.suppress(ValueError):
                ip = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
                if ip not in found:
                    found.append(ip)
        return found

    # --- calls ----------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One API call; transport failures become StoreUnavailableError, API errors pass."""
        kwargs.setdefault("_request_timeout", self.request_timeout)
        try:
            result = fn(*args, **kwargs)
        except ApiException:
            self._reachable()  # it answered (with an error the caller reports)
            raise
        except Exception as exc:
            self._unreachable(exc)
            raise StoreUnavailableError(
                f"kubernetes API {self.host}: {what}: {describe_api_error(exc)}") from None
        self._reachable()
        return result

    def _unreachable(self, exc: BaseException) -> None:
        problem = f"kubernetes API {self.host} unreachable: {describe_api_error(exc)}"
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("%s; retrying with backoff, existing tunnels stay up", problem)
        self.problem = problem

    def _reachable(self) -> None:
        if self._down_since is not None:
            log.info("kubernetes API %s reachable again after %.1f s", self.host,
                     time.monotonic() - self._down_since)
            self._down_since = None
        self.problem = ""

    def _api_error(self, what: str, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"kubernetes API {self.host}: {what} in namespace {self.namespace!r}: "
            f"{describe_api_error(exc)}")

    # --- writing our own objects ----------------------------------------------------------

    def publish(self, endpoint: Endpoint) -> None:
        body = endpoint.to_k8s_object(self.namespace)
        body["metadata"]["labels"] = {CLUSTER_LABEL: endpoint.cluster_id}
        name = endpoint.object_name()
        what = f"publishing Endpoint {name!r}"
        for _ in range(_CONFLICT_RETRIES):
            try:
                self._call(what, self._api.create_namespaced_custom_object,
                           GROUP, VERSION, self.namespace, ENDPOINTS, body)
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise self._api_error(what, exc) from None
            try:
                current = self._call(what, self._api.get_namespaced_custom_object,
                                     GROUP, VERSION, self.namespace, ENDPOINTS, name)
                if (current.get("spec") == body["spec"]
                        and (current["metadata"].get("labels") or {}).get(CLUSTER_LABEL)
                        == endpoint.cluster_id):
                    return  # already as we want it: no write, no event for everyone
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                self._call(what, self._api.replace_namespaced_custom_object,
                           GROUP, VERSION, self.namespace, ENDPOINTS, name, body)
                return
            except ApiException as exc:
                if exc.status not in (404, 409):  # deleted or changed meanwhile: again
                    raise self._api_error(what, exc) from None
            body["metadata"].pop("resourceVersion", None)
        raise StoreUnavailableError(f"{what}: still conflicting after {_CONFLICT_RETRIES} tries")

    def _delete(self, plural: str, name: str) -> None:
        what = f"deleting {plural} {name!r}"
        try:
            self._call(what, self._api.delete_namespaced_custom_object,
                       GROUP, VERSION, self.namespace, plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise self._api_error(what, exc) from None

    def withdraw(self, endpoint: Endpoint) -> None:
        self._delete(ENDPOINTS, endpoint.object_name())

    def remove_status(self, hostname: str) -> None:
        """Remove this gateway's Gateway object (on cleanup); missing is fine."""
        self._delete(GATEWAYS, hostname)

    def write_status(self, hostname: str, status: GatewayStatus) -> None:
        what = f"writing Gateway {hostname!r} status"
        patch = {"status": status.to_json()}
        for _ in range(2):
            try:
                # A merge patch of the status subresource: one request, no read first.
                raw = self._call(what, self._api.patch_namespaced_custom_object_status,
                                 GROUP, VERSION, self.namespace, GATEWAYS, hostname, patch,
                                 _content_type="application/merge-patch+json",
                                 _preload_content=False)
                # The answer is the whole object, unused: dropped unparsed (with 1000
                # connections, parsing it every status interval cost CPU and memory).
                with contextlib.suppress(Exception):
                    raw.drain_conn()
                    raw.release_conn()
                return
            except ApiException as exc:
                if exc.status != 404:
                    raise self._api_error(what, exc) from None
            # First write: the object must exist before its status can be set.
            body = {"apiVersion": API_VERSION, "kind": "Gateway",
                    "metadata": {"name": hostname, "namespace": self.namespace}}
            try:
                self._call(what, self._api.create_namespaced_custom_object,
                           GROUP, VERSION, self.namespace, GATEWAYS, body)
            except ApiException as exc:
                if exc.status != 409:
                    raise self._api_error(what, exc) from None

    # --- reading --------------------------------------------------------------------------

    def _list(self, plural: str) -> dict[str, Any]:
        what = f"listing {plural}"
        try:
            result: dict[str, Any] = self._call(
                what, self._api.list_namespaced_custom_object,
                GROUP, VERSION, self.namespace, plural)
        except ApiException as exc:
            raise self._api_error(what, exc) from None
        return result

    def _relist(self) -> None:
        """Replace the cache with a fresh list; objects unchanged since are not re-parsed."""
        result = self._list(ENDPOINTS)
        with self._lock:
            old = self._cache or {}
            fresh: dict[str, _Entry] = {}
            for obj in result.get("items") or []:
                nv = _name_and_version(obj)
                if nv is None:
                    continue
                name, rv = nv
                entry = old.get(name)
                if entry is None or entry.resource_version != rv or not rv:
                    entry = _Entry(rv, _parse_endpoint(obj))
                fresh[name] = entry
            self._cache = fresh
            self._resource_version = str((result.get("metadata") or {}).get("resourceVersion", ""))

    def snapshot(self) -> Snapshot:
        """The endpoints as last listed or watched. Before the first list succeeded this
        lists now, and raises StoreUnavailableError when it cannot: an unreachable API
        server must never look like a broker whose endpoints all went away."""
        if self._cache is None:
            self._relist()
        snap = Snapshot()
        with self._lock:
            for name, entry in (self._cache or {}).items():
                if isinstance(entry.parsed, Endpoint):
                    snap.endpoints[name] = entry.parsed
                else:
                    snap.errors[name] = (f"Endpoint {self.namespace}/{plain(name, 253)}: "
                                         f"{entry.parsed}")
        return snap

    def read_statuses(self) -> dict[str, GatewayStatus]:
        out: dict[str, GatewayStatus] = {}
        for obj in self._list(GATEWAYS).get("items") or []:
            nv = _name_and_version(obj)
            if nv is None or not obj.get("status"):
                continue
            try:
                out[nv[0]] = GatewayStatus.from_json(obj)
            except (EndpointFormatError, ValueError, TypeError, AttributeError) as exc:
                log.debug("Gateway %s: unreadable status: %s", nv[0], exc)
        return out

    # --- watching -------------------------------------------------------------------------

    def watch(self, changed: Callable[[], None], stop: threading.Event) -> None:
        """List, then watch; call ``changed()`` after each change, until ``stop`` or close().

        Never raises for an unreachable or failing API server: it backs off (exponentially,
        with jitter, up to ``backoff_max``) and tries again, resuming from the last version.
        """
        delay = self.backoff_initial
        while not self._stopped(stop):
            try:
                if self._cache is None or not self._resource_version:
                    t0 = time.monotonic()
                    self._relist()
                    # At start and after a 410 only; its time is a figure of the scale bench.
                    log.info("listed %d endpoints of %s in %.0f ms", len(self._cache or {}),
                             self.namespace, (time.monotonic() - t0) * 1000)
                    notify(changed)
                self._stream(changed, stop)
                delay = self.backoff_initial
            except _Gone:
                log.info("watch of %s/%s expired (410 Gone): listing again", self.namespace,
                         ENDPOINTS)
                self._resource_version = ""
            except Exception as exc:
                if self._stopped(stop):
                    return
                if not isinstance(exc, StoreUnavailableError):
                    self._unreachable(exc)  # the stream broke mid-read
                elif not self.problem:
                    self.problem = str(exc)  # the server answered, with an error
                log.debug("watch failed: %s; again in %.1f s", describe_api_error(exc), delay)
                stop.wait(delay * random.uniform(0.8, 1.2))  # noqa: S311 (jitter, not crypto)
                delay = min(delay * 2, self.backoff_max)

    def _stopped(self, stop: threading.Event) -> bool:
        return stop.is_set() or self._closed.is_set()

    def _stream(self, changed: Callable[[], None], stop: threading.Event) -> None:
        """One watch request, until the server ends it (timeout) or it fails."""
        try:
            response = self._call(
                "watching endpoints", self._api.list_namespaced_custom_object,
                GROUP, VERSION, self.namespace, ENDPOINTS,
                watch=True, allow_watch_bookmarks=True,
                resource_version=self._resource_version,
                timeout_seconds=self.watch_timeout,
                _preload_content=False,
                # The read timeout catches a connection that died silently.
                _request_timeout=(self.request_timeout, self.watch_timeout + 30),
            )
        except ApiException as exc:
            if exc.status == 410:
                raise _Gone from None
            raise self._api_error("watching endpoints", exc) from None
        raw = getattr(response, "response", response)  # the urllib3 response underneath
        self._response = raw
        try:
            if self._stopped(stop):
                return
            for line in _lines(raw):
                if self._stopped(stop):
                    return
                if self._apply_event(line):
                    notify(changed)
        finally:
            self._response = None
            with contextlib.suppress(Exception):
                raw.release_conn()

    def _apply_event(self, line: bytes) -> bool:
        """Fold one watch event into the cache; True if the endpoints changed."""
        try:
            event = json.loads(line)
            kind, obj = event["type"], event["object"]
        except (ValueError, KeyError, TypeError):
            # Its size only: the line is the server's, and may be any object's content.
            log.warning("unreadable watch event (%d bytes)", len(line))
            return False
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            if code == 410:
                raise _Gone
            raise StoreUnavailableError(f"watch error: {_short(json.dumps(obj))}")
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        rv = str(meta.get("resourceVersion", "")) if isinstance(meta, dict) else ""
        with self._lock:
            if rv:
                self._resource_version = rv  # bookmarks carry only this
        nv = _name_and_version(obj)
        if kind == "BOOKMARK" or nv is None:
            return False
        name = nv[0]
        with self._lock:
            cache = self._cache if self._cache is not None else {}
            if kind == "DELETED":
                return cache.pop(name, None) is not None
            if kind in ("ADDED", "MODIFIED"):
                cache[name] = _Entry(rv, _parse_endpoint(obj))
                self._cache = cache
                return True
        return False

    def close(self) -> None:
        """Make running watches return now (an open stream is shut down)."""
        self._closed.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()  # urllib3 >= 2.3: unblocks a read in another thread


def _lines(response: Any) -> Iterator[bytes]:
    """The newline-separated events of a watch stream, as they arrive."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=True):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer
