"""UAPI transport: one unix-socket connection per request to ``<dir>/<name>.sock``."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence

from wgcable.wgctrl.errors import DeviceNotFoundError, PermissionDeniedError, ProtocolError
from wgcable.wgctrl.key import Key
from wgcable.wgctrl.types import BackendKind, Config, Device, PeerConfig
from wgcable.wgctrl.uapi import protocol

DEFAULT_SOCKET_DIRS = ("/var/run/wireguard", "/run/wireguard")
_RECV = 1 << 16


class UAPIBackend:
    kind = BackendKind.USERSPACE

    def __init__(
        self, socket_dirs: Sequence[str] = DEFAULT_SOCKET_DIRS, timeout: float = 10.0
    ) -> None:
        self._dirs = list(socket_dirs)
        self._timeout = timeout
        self._native: dict[str, tuple[int, int]] = {}  # device -> socket file id
        # device -> its last read's peers: a read parses only what changed since
        self._reads: dict[str, protocol.ReadCache] = {}

    def _socket_paths(self) -> dict[str, str]:
        found: dict[str, str] = {}
        seen: set[str] = set()
        for d in self._dirs:
            try:
                entries = sorted(os.listdir(d))
            except OSError:
                continue
            real = os.path.realpath(d)
            if real in seen:  # /var/run is usually a link to /run
                continue
            seen.add(real)
            for e in entries:
                if e.endswith(".sock") and e[:-5] not in found:
                    found[e[:-5]] = os.path.join(d, e)
        return found

    def _path(self, name: str) -> str:
        for d in self._dirs:
            p = os.path.join(d, f"{name}.sock")
            if os.path.exists(p):
                return p
        raise DeviceNotFoundError(name, f"no UAPI socket in {', '.join(self._dirs)}")

    def device_names(self) -> list[str]:
        return list(self._socket_paths())

    def owns(self, name: str) -> bool:
        try:
            self._path(name)
        except DeviceNotFoundError:
            return False
        return True

    def _request(self, name: str, action: str, request: bytes,
                 feed: Callable[[bytes], None] | None = None) -> bytes:
        """The reply to ``request``, each piece also given to ``feed`` as it arrives."""
        path = self._path(name)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self._timeout)
        try:
            try:
                s.connect(path)
            except PermissionError:
                raise PermissionDeniedError(name, action) from None
            except (FileNotFoundError, ConnectionRefusedError):
                # A socket file left behind by a dead daemon refuses connections.
                raise DeviceNotFoundError(name, f"nothing listens on {path}") from None
            s.sendall(request)
            chunks: list[bytes] = []
            tail = b""
            while True:
                chunk = s.recv(_RECV)
                if not chunk:
                    raise ProtocolError(name, action, 71, None, "connection closed mid-reply")
                chunks.append(chunk)
                if feed is not None:
                    feed(chunk)
                tail = (tail + chunk)[-2:]
                if tail == b"\n\n":
                    return b"".join(chunks)
        except TimeoutError:
            raise ProtocolError(name, action, 110, None, f"no reply within {self._timeout}s") \
                from None
        except OSError as e:
            if isinstance(e, PermissionError):
                raise PermissionDeniedError(name, action) from None
            raise ProtocolError(name, action, e.errno or 5, None, str(e)) from None
        finally:
            s.close()

    def _get(self, name: str) -> protocol.GetReply:
        cache = self._reads.get(name)
        if cache is None:
            cache = self._reads.setdefault(name, protocol.ReadCache())
        reader = cache.reader(name)
        try:
            # Parsed as it arrives: the peers read so far while the device writes the rest.
            reply = self._request(name, "read", protocol.GET_REQUEST, reader.feed)
        except DeviceNotFoundError:
            self._reads.pop(name, None)  # gone: what it had is not kept
            raise
        got = reader.finish()
        return got if got is not None else protocol.parse_get(name, reply)

    def device(self, name: str) -> Device:
        return self._get(name).device

    def configure(self, name: str, config: Config) -> None:
        if config.is_empty():
            return
        supported = True
        if any(p.update_only for p in config.peers) and not self._known_native(name):
            # boringtun has no update_only. Its dialect shows only in own_public_key, sent
            # once it has a key; wireguard-go always reports its private_key when it has
            # one. Without either the dialect is unknown, and the emulation is right for
            # both.
            reply = self._get(name)
            if reply.boringtun or reply.device.private_key is None:
                supported = False
                config = _emulate_update_only(config, {p.public_key for p in reply.device.peers})
            else:
                self._native[name] = self._socket_id(name)
        request = protocol.encode_set(config, update_only_supported=supported)
        protocol.parse_errno(name, "configure", self._request(name, "configure", request))

    def _socket_id(self, name: str) -> tuple[int, int]:
        try:
            st = os.stat(self._path(name))
        except FileNotFoundError:
            raise DeviceNotFoundError(name) from None
        return st.st_dev, st.st_ino

    def _known_native(self, name: str) -> bool:
        """Whether ``name`` is a wireguard-go seen before, so that a reconcile does not pay
        a full read to ask again. A restarted or replaced daemon has a new socket file."""
        return name in self._native and self._native[name] == self._socket_id(name)

    def close(self) -> None:
        pass


def _emulate_update_only(config: Config, existing: set[Key]) -> Config:
    """``config`` without the update_only peers that would not exist when applied.

    Peers are applied in order, as the device does: ``replace_peers`` empties the device
    first, a removal deletes a peer, any other peer line creates one.
    """
    have = set() if config.replace_peers else set(existing)
    peers: list[PeerConfig] = []
    for p in config.peers:
        if p.remove:
            have.discard(p.public_key)
        elif p.update_only and p.public_key not in have:
            continue
        else:
            have.add(p.public_key)
        peers.append(p)
    return Config(
        private_key=config.private_key,
        listen_port=config.listen_port,
        fwmark=config.fwmark,
        replace_peers=config.replace_peers,
        peers=peers,
    )
