"""A fake UAPI daemon on a unix socket, speaking wireguard-go's or boringtun's dialect.

It records every request as raw bytes and keeps a small model of the device, written
independently of :mod:`wgcable.wgctrl.memory`, so a ``set`` followed by a ``get`` reflects
the set. Like wireguard-go it applies a set line by line and stops at the first bad line
(earlier lines stay applied). Scripted replies (raw bytes, or :data:`CLOSE` to hang up
without a word) take precedence over the model, one per connection, in order.

    with FakeUAPI(directory, "wg0", dialect="boringtun") as fake:
        ...  # UAPIBackend([directory]) now sees device wg0
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Literal

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

Dialect = Literal["wireguard-go", "boringtun"]

CLOSE: Final = object()  # a scripted "reply": close the connection without answering

EINVAL, EPROTO = 22, 71


def _clamp_hex(hex_key: str) -> str:
    b = bytearray(bytes.fromhex(hex_key))
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b).hex()


def _public_hex(private_hex: str) -> str:
    priv = X25519PrivateKey.from_private_bytes(bytes.fromhex(private_hex))
    return priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


@dataclass
class FakePeer:
    public_key: str  # hex, as on the wire
    preshared_key: str | None = None
    endpoint: str | None = None
    keepalive: int = 0
    allowed_ips: list[str] = field(default_factory=list)
    last_handshake: float | None = None  # epoch seconds; None = never
    rx_bytes: int = 0
    tx_bytes: int = 0


class _SetError(Exception):
    def __init__(self, errno: int) -> None:
        self.errno = errno


class FakeUAPI:
    """A UAPI daemon for one device, served from a thread until :meth:`stop`."""

    def __init__(self, directory: str, name: str = "wg0", dialect: Dialect = "wireguard-go"):
        self.name = name
        self.dialect: Dialect = dialect
        self.path = os.path.join(directory, f"{name}.sock")
        self.requests: list[bytes] = []
        self.replies: deque[bytes | object] = deque()
        self.private_key: str | None = None  # hex, clamped like the devices store it
        self.listen_port = 0
        self.fwmark = 0
        self.peers: dict[str, FakePeer] = {}  # by hex public key, in insertion order
        self.now = time.time  # boringtun reports handshake ages against this clock
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeUAPI:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(self.path)
        s.listen(8)
        s.settimeout(0.05)
        self._sock = s
        self._thread = threading.Thread(target=self._serve, name=f"fake-uapi-{self.name}")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def __enter__(self) -> FakeUAPI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def script(self, *replies: bytes | object) -> None:
        """Answer the next connections with these raw replies (or :data:`CLOSE`), in order."""
        self.replies.extend(replies)

    # --- serving ------------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        data = b""
        while b"\n\n" not in data:
            try:
                chunk = conn.recv(4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        self.requests.append(data)
        if self.replies:
            reply = self.replies.popleft()
            if reply is not CLOSE:
                assert isinstance(reply, bytes)
                conn.sendall(reply)
            return
        conn.sendall(self.answer(data))

    def answer(self, request: bytes) -> bytes:
        """What the modelled daemon replies to one request."""
        if request == b"get=1\n\n":
            return self.render_get()
        if request.startswith(b"set=1\n"):
            return self._errno_reply(self._apply_set(request.decode()))
        return self._errno_reply(EPROTO)

    def _errno_reply(self, errno: int) -> bytes:
        if self.dialect == "wireguard-go":
            errno = -errno
        return f"errno={errno}\n\n".encode()

    # --- the model ----------------------------------------------------------------------

    def render_get(self) -> bytes:
        out: list[str] = []
        if self.dialect == "wireguard-go":
            if self.private_key:
                out.append(f"private_key={self.private_key}")
        elif self.private_key:
            out.append(f"own_public_key={_public_hex(self.private_key)}")
        if self.listen_port:
            out.append(f"listen_port={self.listen_port}")
        if self.fwmark:
            out.append(f"fwmark={self.fwmark}")
        for p in self.peers.values():
            out.append(f"public_key={p.public_key}")
            if self.dialect == "wireguard-go":
                out.append(f"preshared_key={p.preshared_key or '0' * 64}")
                out.append("protocol_version=1")
                if p.endpoint:
                    out.append(f"endpoint={p.endpoint}")
                sec, nsec = 0, 0
                if p.last_handshake is not None:
                    sec, nsec = int(p.last_handshake), int(p.last_handshake % 1 * 1e9)
                out.append(f"last_handshake_time_sec={sec}")
                out.append(f"last_handshake_time_nsec={nsec}")
                out.append(f"tx_bytes={p.tx_bytes}")
                out.append(f"rx_bytes={p.rx_bytes}")
                out.append(f"persistent_keepalive_interval={p.keepalive}")
                out.extend(f"allowed_ip={n}" for n in p.allowed_ips)
            else:  # boringtun's order and omissions
                if p.preshared_key:
                    out.append(f"preshared_key={p.preshared_key}")
                if p.keepalive:
                    out.append(f"persistent_keepalive_interval={p.keepalive}")
                if p.endpoint:
                    out.append(f"endpoint={p.endpoint}")
                out.extend(f"allowed_ip={n}" for n in p.allowed_ips)
                if p.last_handshake is not None:
                    age = max(0.0, self.now() - p.last_handshake)
                    out.append(f"last_handshake_time_sec={int(age)}")
                    out.append(f"last_handshake_time_nsec={int(age % 1 * 1e9)}")
                out.append(f"rx_bytes={p.rx_bytes}")
                out.append(f"tx_bytes={p.tx_bytes}")
        out.append("errno=0")
        return ("\n".join(out) + "\n\n").encode()

    def _apply_set(self, request: str) -> int:
        """Apply a set line by line; the errno (positive) of the first bad line, else 0."""
        peer: FakePeer | None = None
        dummy = False  # lines for a removed or update_only-suppressed peer are absorbed
        created = False
        try:
            for line in request.split("\n")[1:]:
                if not line:
                    break
                key, sep, value = line.partition("=")
                if not sep:
                    raise _SetError(EPROTO)
                if key == "public_key":
                    pub = self._hex_key(value)
                    dummy = False
                    peer = self.peers.get(pub)
                    created = peer is None
                    if peer is None:
                        peer = self.peers[pub] = FakePeer(pub)
                    continue
                if peer is None:
                    self._set_device(key, value)
                    continue
                if dummy:
                    continue
                if key == "remove" and value == "true":
                    del self.peers[peer.public_key]
                    dummy = True
                elif key == "update_only" and value == "true":
                    if self.dialect == "boringtun":
                        raise _SetError(EINVAL)
                    if created:
                        del self.peers[peer.public_key]
                        dummy = True
                else:
                    self._set_peer(peer, key, value)
        except _SetError as e:
            return e.errno
        return 0

    @staticmethod
    def _hex_key(value: str) -> str:
        if len(value) != 64:
            raise _SetError(EINVAL)
        try:
            bytes.fromhex(value)
        except ValueError:
            raise _SetError(EINVAL) from None
        return value.lower()

    @staticmethod
    def _int(value: str, top: int) -> int:
        if not value.isdigit() or int(value) > top:
            raise _SetError(EINVAL)
        return int(value)

    def _set_device(self, key: str, value: str) -> None:
        if key == "private_key":
            k = self._hex_key(value)
            self.private_key = None if k == "0" * 64 else _clamp_hex(k)
        elif key == "listen_port":
            self.listen_port = self._int(value, 65535)
        elif key == "fwmark":
            self.fwmark = self._int(value, 0xFFFFFFFF)
        elif key == "replace_peers" and value == "true":
            self.peers.clear()
        else:
            raise _SetError(EINVAL)

    def _set_peer(self, peer: FakePeer, key: str, value: str) -> None:
        if key == "preshared_key":
            k = self._hex_key(value)
            peer.preshared_key = None if k == "0" * 64 else k
        elif key == "endpoint":
            host, _, port = value.rpartition(":")
            try:
                ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
            except ValueError:
                raise _SetError(EINVAL) from None
            self._int(port, 65535)
            peer.endpoint = value
        elif key == "persistent_keepalive_interval":
            peer.keepalive = self._int(value, 65535)
        elif key == "replace_allowed_ips" and value == "true":
            peer.allowed_ips.clear()
        elif key == "allowed_ip":
            try:
                net = str(ipaddress.ip_network(value, strict=False))
            except ValueError:
                raise _SetError(EINVAL) from None
            for other in self.peers.values():  # a prefix belongs to one peer: it moves
                if net in other.allowed_ips and other is not peer:
                    other.allowed_ips.remove(net)
            if net not in peer.allowed_ips:
                peer.allowed_ips.append(net)
        elif key == "protocol_version":
            if value != "1":
                raise _SetError(EINVAL)
        else:
            raise _SetError(EINVAL)
