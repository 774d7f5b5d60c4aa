"""Value types for WireGuard devices, their peers, and configuration intent (like wgctrl's)."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from datetime import datetime

from wgcable.wgctrl.errors import InvalidConfigError
from wgcable.wgctrl.key import Key

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BackendKind(enum.StrEnum):
    KERNEL = "linux kernel"
    USERSPACE = "userspace"


@dataclass(frozen=True, slots=True)
class UDPAddr:
    """A peer's UDP endpoint: a literal IP and a port."""

    ip: IPAddress
    port: int

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise InvalidConfigError("endpoint port", self.port, "must be 1-65535")

    @classmethod
    def parse(cls, text: str, field: str = "endpoint") -> UDPAddr:
        """Parse ``ip:port`` or ``[v6]:port``. Host names are refused: devices take literals."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise InvalidConfigError(field, text, "expected ip:port or [ipv6]:port")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise InvalidConfigError(field, text, "IPv6 endpoints need brackets: [ip]:port")
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            raise InvalidConfigError(field, text, "host must be a literal IP address") from None
        try:
            return cls(ip, int(port))
        except InvalidConfigError:
            raise InvalidConfigError(field, text, "port must be 1-65535") from None

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if self.ip.version == 6 else f"{self.ip}:{self.port}"


@dataclass(slots=True)
class Peer:
    """A peer as read from a device."""

    public_key: Key
    preshared_key: Key | None = None
    endpoint: UDPAddr | None = None
    persistent_keepalive: int = 0  # seconds; 0 = off
    last_handshake: datetime | None = None  # None = never
    rx_bytes: int = 0
    tx_bytes: int = 0
    allowed_ips: list[IPNetwork] = field(default_factory=list)
    protocol_version: int = 1

    def __repr__(self) -> str:
        return (
            f"Peer(public_key={self.public_key.base64()!r}, endpoint={self.endpoint}, "
            f"allowed_ips={[str(n) for n in self.allowed_ips]}, "
            f"preshared_key={'set' if self.preshared_key else 'none'}, "
            f"last_handshake={self.last_handshake}, rx={self.rx_bytes}, tx={self.tx_bytes})"
        )


@dataclass(slots=True)
class Device:
    """A WireGuard device as read back: name, backend, keys, port, fwmark and peers."""

    name: str
    kind: BackendKind
    private_key: Key | None = None
    public_key: Key | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: list[Peer] = field(default_factory=list)

    def peer(self, public_key: Key) -> Peer | None:
        return next((p for p in self.peers if p.public_key == public_key), None)

    def __repr__(self) -> str:
        pub = self.public_key.base64() if self.public_key else None
        return (
            f"Device(name={self.name!r}, kind={self.kind.value!r}, public_key={pub!r}, "
            f"listen_port={self.listen_port}, fwmark={self.fwmark}, peers={len(self.peers)})"
        )


def _check_range(name: str, value: int | None, top: int) -> None:
    if value is not None and not 0 <= value <= top:
        raise InvalidConfigError(name, value, f"must be 0-{top}")


@dataclass(slots=True)
class PeerConfig:
    """Intent for one peer. ``None`` means leave as is.

    - ``remove``: delete the peer.
    - ``update_only``: change the peer only if it already exists.
    - ``preshared_key``: a zero key removes the preshared key.
    - ``replace_allowed_ips``: the given allowed IPs replace the peer's; otherwise they are added.
    """

    public_key: Key
    remove: bool = False
    update_only: bool = False
    preshared_key: Key | None = None
    endpoint: UDPAddr | None = None
    persistent_keepalive: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: list[IPNetwork] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_range("persistent_keepalive", self.persistent_keepalive, 65535)

    def __repr__(self) -> str:
        flags = [n for n in ("remove", "update_only", "replace_allowed_ips") if getattr(self, n)]
        return (
            f"PeerConfig(public_key={self.public_key.base64()!r}, flags={flags}, "
            f"endpoint={self.endpoint}, keepalive={self.persistent_keepalive}, "
            f"preshared_key={'set' if self.preshared_key else 'unchanged'}, "
            f"allowed_ips={[str(n) for n in self.allowed_ips]})"
        )


@dataclass(slots=True)
class Config:
    """Intent for a device. ``None`` means leave as is; ``replace_peers`` drops all others."""

    private_key: Key | None = None
    listen_port: int | None = None
    fwmark: int | None = None  # 0 clears it
    replace_peers: bool = False
    peers: list[PeerConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_range("listen_port", self.listen_port, 65535)
        _check_range("fwmark", self.fwmark, 0xFFFFFFFF)

    def is_empty(self) -> bool:
        return (
            self.private_key is None
            and self.listen_port is None
            and self.fwmark is None
            and not self.replace_peers
            and not self.peers
        )

    def __repr__(self) -> str:
        return (
            f"Config(private_key={'set' if self.private_key else 'unchanged'}, "
            f"listen_port={self.listen_port}, fwmark={self.fwmark}, "
            f"replace_peers={self.replace_peers}, peers={self.peers!r})"
        )
