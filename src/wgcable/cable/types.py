"""Submariner's API shapes (group ``submariner.io``, version ``v1``) as Python dataclasses.

Attributes are snake_case; ``to_json``/``from_json`` speak Submariner's exact JSON field names.
Values stay strings (IPs, CIDRs, ports): checking them is the driver's job, so one bad remote
endpoint can be reported on its own. Only a wrong JSON *type* is refused at parse time.
Unknown fields are ignored so that objects from newer Submariner versions still parse.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from wgcable.cable.godur import format_duration, parse_duration
from wgcable.safetext import describe, plain, safe

API_VERSION = "submariner.io/v1"

JSONObject = dict[str, Any]


class EndpointFormatError(ValueError):
    """A Submariner object (an Endpoint, or a Connection/GatewayStatus carrying one) has a
    JSON value of the wrong type. Names the field (as a path) and a short, escaped form of
    the value: the message reaches logs and the published gateway status, and the value
    may be a whole file (a secret behind a symlink), so it is never carried whole."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        field = plain(field)  # a path may hold a key from the document: escaped as well
        self.field = field
        # A whole document that is a string is someone's file, not an object: say only
        # what it is. A field's value is shown short (it names what is wrong).
        shown = describe(value) if field == _DOCUMENT else safe(value)
        super().__init__(f"{field}={shown}: {reason}")


# --- JSON readers: Go's decoder turns null and absent into the zero value; so do these. ---


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


_DOCUMENT = "<object>"  # the field name of a whole document


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise EndpointFormatError(path or _DOCUMENT, value, "expected a JSON object")
    return value


def _str(data: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        reason = "required string is missing" if value is None else "expected a string"
        raise EndpointFormatError(_child(path, key), value, reason)
    return value


def _bool(data: Mapping[str, Any], key: str, path: str) -> bool:
    value = data.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise EndpointFormatError(_child(path, key), value, "expected true or false")
    return value


def _str_list(data: Mapping[str, Any], key: str, path: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    name = _child(path, key)
    if not isinstance(value, list):
        raise EndpointFormatError(name, value, "expected a list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise EndpointFormatError(f"{name}[{i}]", item, "expected a string")
    return list(value)


def _str_map(data: Mapping[str, Any], key: str, path: str) -> dict[str, str]:
    value = data.get(key)
    if value is None:
        return {}
    name = _child(path, key)
    if not isinstance(value, Mapping):
        raise EndpointFormatError(name, value, "expected an object of string values")
    for k, v in value.items():
        if not isinstance(v, str):
            raise EndpointFormatError(f"{name}.{k}", v, "expected a string")
    return dict(value)


def _unwrap(data: object, kind: str, body: str) -> tuple[Mapping[str, Any], str]:
    """Accept a bare spec/status or the whole Kubernetes object around it."""
    obj = _mapping(data, "")
    if "kind" in obj or "apiVersion" in obj:
        if obj.get("kind", kind) != kind:
            raise EndpointFormatError("kind", obj.get("kind"), f"expected {kind!r}")
        return _mapping(obj.get(body), body), body
    return obj, ""


# --- Endpoint ---


def cable_name_for(cluster_id: str, private_ip: str) -> str:
    """Submariner's cable name: ``submariner-cable-<cluster>-<ip with . and : as ->``."""
    return f"submariner-cable-{cluster_id}-{private_ip.replace('.', '-').replace(':', '-')}"


def gateway_object_name(cluster_id: str, hostname: str) -> str:
    """A Gateway object's name on the broker: ``<cluster>-<host>`` (a host name alone would
    collide across clusters whose nodes share it)."""
    return f"{cluster_id}-{hostname}"


@dataclass(slots=True, kw_only=True)
class Endpoint:
    """EndpointSpec: what a gateway publishes so that other clusters can reach it."""

    cluster_id: str
    cable_name: str = ""
    health_check_ip: str = ""
    hostname: str = ""
    subnets: list[str] = field(default_factory=list)
    private_ip: str = ""
    public_ip: str = ""
    nat_enabled: bool = False
    backend: str = ""
    backend_config: dict[str, str] = field(default_factory=dict)
    # Newer Submariner's dual-stack list forms.
    private_ips: list[str] = field(default_factory=list)
    public_ips: list[str] = field(default_factory=list)
    health_check_ips: list[str] = field(default_factory=list)

    def gateway_ip(self) -> str:
        """The address other gateways aim at: public if known, else private."""
        return self.public_ip or self.private_ip

    def object_name(self) -> str:
        return f"{self.cluster_id}-{self.cable_name}"

    def to_json(self) -> JSONObject:
        # Key order and omissions follow the Go struct tags (omitempty where Go has it).
        out: JSONObject = {"cluster_id": self.cluster_id, "cable_name": self.cable_name}
        if self.health_check_ip:
            out["healthCheckIP"] = self.health_check_ip
        out |= {
            "hostname": self.hostname,
            "subnets": list(self.subnets),
            "private_ip": self.private_ip,
            "public_ip": self.public_ip,
            "nat_enabled": self.nat_enabled,
            "backend": self.backend,
        }
        optional: dict[str, Any] = {
            "backend_config": dict(self.backend_config),
            "private_ips": list(self.private_ips),
            "public_ips": list(self.public_ips),
            "healthCheckIPs": list(self.health_check_ips),
        }
        out |= {k: v for k, v in optional.items() if v}
        return out

    @classmethod
    def from_json(cls, data: object, path: str = "") -> Self:
        """Parse an EndpointSpec, or a whole ``kind: Endpoint`` object (its ``spec`` is used)."""
        if not path:
            data, path = _unwrap(data, "Endpoint", "spec")
        spec = _mapping(data, path)
        return cls(
            cluster_id=_str(spec, "cluster_id", path, required=True),
            cable_name=_str(spec, "cable_name", path),
            health_check_ip=_str(spec, "healthCheckIP", path),
            hostname=_str(spec, "hostname", path),
            subnets=_str_list(spec, "subnets", path),
            private_ip=_str(spec, "private_ip", path),
            public_ip=_str(spec, "public_ip", path),
            nat_enabled=_bool(spec, "nat_enabled", path),
            backend=_str(spec, "backend", path),
            backend_config=_str_map(spec, "backend_config", path),
            private_ips=_str_list(spec, "private_ips", path),
            public_ips=_str_list(spec, "public_ips", path),
            health_check_ips=_str_list(spec, "healthCheckIPs", path),
        )

    def to_k8s_object(self, namespace: str | None = None) -> JSONObject:
        """The whole ``submariner.io/v1`` Endpoint object, named ``<cluster_id>-<cable_name>``."""
        metadata: JSONObject = {"name": self.object_name()}
        if namespace is not None:
            metadata["namespace"] = namespace
        return {
            "apiVersion": API_VERSION,
            "kind": "Endpoint",
            "metadata": metadata,
            "spec": self.to_json(),
        }


# --- Connections and gateway status ---


class ConnectionStatus(enum.StrEnum):
    CONNECTED = "connected"
    CONNECTING = "connecting"
    ERROR = "error"
    NONE = "none"


class HAStatus(enum.StrEnum):
    ACTIVE = "active"
    PASSIVE = "passive"


_E = TypeVar("_E", bound=enum.StrEnum)


def _enum(kind: type[_E], data: Mapping[str, Any], key: str, path: str, default: _E) -> _E:
    # Go's zero value is "": treat it (and absence) as the default rather than an error.
    raw = _str(data, key, path)
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise EndpointFormatError(_child(path, key), raw, f"expected one of {allowed}") from None


# (attribute, JSON key)
_LATENCY_KEYS = (
    ("last", "last"),
    ("min", "min"),
    ("average", "average"),
    ("max", "max"),
    ("std_dev", "stdDev"),
)


@dataclass(slots=True, kw_only=True)
class LatencyRTT:
    """Round-trip times in float seconds; JSON carries Go duration strings (``1.234ms``)."""

    last: float = 0.0
    min: float = 0.0
    average: float = 0.0
    max: float = 0.0
    std_dev: float = 0.0

    def to_json(self) -> JSONObject:
        return {key: format_duration(getattr(self, attr)) for attr, key in _LATENCY_KEYS}

    @classmethod
    def from_json(cls, data: object, path: str = "latencyRTT") -> Self:
        obj = _mapping(data, path)
        values: dict[str, float] = {}
        for attr, key in _LATENCY_KEYS:
            name = _child(path, key)
            text = _str(obj, key, path)
            try:
                values[attr] = parse_duration(text, name) if text else 0.0  # omitempty: "" is 0
            except ValueError as exc:
                reason = "not a Go duration such as 1.234ms"
                raise EndpointFormatError(name, text, reason) from exc
        return cls(**values)


@dataclass(slots=True, kw_only=True)
class Connection:
    """One cable's state as the gateway reports it."""

    endpoint: Endpoint
    status: ConnectionStatus = ConnectionStatus.NONE
    status_message: str = ""
    using_ip: str = ""
    using_nat: bool = False
    latency_rtt: LatencyRTT | None = None
    # Byte counters for the metrics (Submariner's rx/tx gauges). Not part of the API object:
    # never in JSON, and left out of equality so that JSON round trips stay exact.
    rx_bytes: int = field(default=0, compare=False)
    tx_bytes: int = field(default=0, compare=False)
    # Epoch seconds of the peer's last handshake (None: never), for the metrics only, as above.
    last_handshake: float | None = field(default=None, compare=False)

    def to_json(self) -> JSONObject:
        out: JSONObject = {
            "status": str(self.status),
            "statusMessage": self.status_message,
            "endpoint": self.endpoint.to_json(),
        }
        # omitempty on usingIP, usingNAT and latencyRTT, as in the Go struct.
        if self.using_ip:
            out["usingIP"] = self.using_ip
        if self.using_nat:
            out["usingNAT"] = True
        if self.latency_rtt is not None:
            out["latencyRTT"] = self.latency_rtt.to_json()
        return out

    @classmethod
    def from_json(cls, data: object, path: str = "") -> Self:
        obj = _mapping(data, path)
        if obj.get("endpoint") is None:
            raise EndpointFormatError(_child(path, "endpoint"), None, "required object is missing")
        raw_rtt = obj.get("latencyRTT")
        rtt = None if raw_rtt is None else LatencyRTT.from_json(raw_rtt, _child(path, "latencyRTT"))
        return cls(
            status=_enum(ConnectionStatus, obj, "status", path, ConnectionStatus.NONE),
            status_message=_str(obj, "statusMessage", path),
            endpoint=Endpoint.from_json(obj["endpoint"], _child(path, "endpoint")),
            using_ip=_str(obj, "usingIP", path),
            using_nat=_bool(obj, "usingNAT", path),
            latency_rtt=rtt,
        )


@dataclass(slots=True, kw_only=True)
class NATEndpointInfo:
    """What ``connect_to_endpoint`` gets: the remote endpoint and how NAT discovery says to
    reach it (which of its IPs, and whether NAT sits in the path)."""

    endpoint: Endpoint
    use_ip: str
    use_nat: bool = False


@dataclass(slots=True, kw_only=True)
class GatewayStatus:
    """The status of a Gateway object: the local endpoint and one Connection per cluster."""

    local_endpoint: Endpoint
    version: str = ""
    ha_status: HAStatus = HAStatus.PASSIVE
    status_failure: str = ""
    connections: list[Connection] = field(default_factory=list)

    def to_json(self) -> JSONObject:
        return {
            "version": self.version,
            "haStatus": str(self.ha_status),
            "localEndpoint": self.local_endpoint.to_json(),
            "statusFailure": self.status_failure,
            "connections": [c.to_json() for c in self.connections],
        }

    @classmethod
    def from_json(cls, data: object) -> Self:
        """Parse a GatewayStatus, or a whole ``kind: Gateway`` object (its ``status`` is used)."""
        obj, path = _unwrap(data, "Gateway", "status")
        if obj.get("localEndpoint") is None:
            name = _child(path, "localEndpoint")
            raise EndpointFormatError(name, None, "required object is missing")
        raw = obj.get("connections")
        if raw is not None and not isinstance(raw, list):
            raise EndpointFormatError(_child(path, "connections"), raw, "expected a list")
        return cls(
            version=_str(obj, "version", path),
            # A gateway that does not say it is active is treated as passive.
            ha_status=_enum(HAStatus, obj, "haStatus", path, HAStatus.PASSIVE),
            local_endpoint=Endpoint.from_json(obj["localEndpoint"], _child(path, "localEndpoint")),
            status_failure=_str(obj, "statusFailure", path),
            connections=[
                Connection.from_json(c, f"{_child(path, 'connections')}[{i}]")
                for i, c in enumerate(raw or [])
            ],
        )
