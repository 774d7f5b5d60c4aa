"""Encoding and parsing of the UAPI text protocol (pure; no I/O).

Quirks handled here (see the cross-implementation notes in docs/architecture.md):
- keys are hex on this wire;
- wireguard-go sends errno negated, boringtun positive: any non-zero is failure;
- boringtun reports ``own_public_key`` and handshake *age* in seconds, and has no
  ``update_only`` (the backend emulates it);
- unknown keys are ignored and key order within a peer is not relied upon.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from wgcable.safetext import safe
from wgcable.wgctrl.errors import InvalidConfigError, InvalidKeyError, ProtocolError
from wgcable.wgctrl.key import Key
from wgcable.wgctrl.types import BackendKind, Config, Device, IPNetwork, Peer, UDPAddr

GET_REQUEST = b"get=1\n\n"


@dataclass(slots=True)
class GetReply:
    device: Device
    boringtun: bool  # the reply came in boringtun's dialect


def _value(key: str, value: object) -> str:
    """``value`` as one UAPI value, or InvalidConfigError: a newline would start a line of
    the attacker's choosing (``remove=true``), an ``=`` or NUL has no place in any value we
    send, and a zoned address is never ours to send (its zone is free text)."""
    if isinstance(value, ipaddress.IPv6Address | ipaddress.IPv6Network):
        addr = value if isinstance(value, ipaddress.IPv6Address) else value.network_address
        if addr.scope_id is not None:
            raise InvalidConfigError(key, "<zoned address>", "an address with a zone is refused")
    if isinstance(value, UDPAddr) and isinstance(value.ip, ipaddress.IPv6Address) \
            and value.ip.scope_id is not None:
        raise InvalidConfigError(key, "<zoned address>", "an address with a zone is refused")
    text = str(value)
    if not text or not text.isascii() or not text.isprintable() or "=" in text:
        raise InvalidConfigError(key, repr(text[:40]),
                                 "not a UAPI value (empty, '=', or a control character)")
    return text


def encode_set(config: Config, *, update_only_supported: bool = True) -> bytes:
    """The ``set=1`` request for ``config``, ending with the blank line. Every value is
    checked (``_value``): a request that would carry more lines than asked is never sent."""
    out = ["set=1"]

    def line(key: str, value: object) -> None:
        out.append(f"{key}={_value(key, value)}")

    if config.private_key is not None:
        out.append(f"private_key={config.private_key.hex()}")
    if config.listen_port is not None:
        line("listen_port", config.listen_port)
    if config.fwmark is not None:
        line("fwmark", config.fwmark)
    if config.replace_peers:
        out.append("replace_peers=true")
    for p in config.peers:
        out.append(f"public_key={p.public_key.hex()}")
        if p.remove:
            out.append("remove=true")
            continue
        if p.update_only and update_only_supported:
            out.append("update_only=true")
        if p.preshared_key is not None:
            out.append(f"preshared_key={p.preshared_key.hex()}")
        if p.endpoint is not None:
            line("endpoint", p.endpoint)
        if p.persistent_keepalive is not None:
            line("persistent_keepalive_interval", p.persistent_keepalive)
        if p.replace_allowed_ips:
            out.append("replace_allowed_ips=true")
        for n in p.allowed_ips:
            line("allowed_ip", n)
    out.append("")
    out.append("")
    return "\n".join(out).encode()


def parse_errno(device: str, action: str, reply: bytes) -> None:
    """Check a set reply (``errno=N``); raise ProtocolError unless N is 0."""
    for line in reply.split(b"\n"):
        if line.startswith(b"errno="):
            try:
                n = int(line[6:])
            except ValueError:
                bad = safe(line.decode("ascii", "replace"))
                raise ProtocolError(device, action, 71, "errno", f"bad value {bad}") from None
            if n != 0:
                raise ProtocolError(device, action, n)
            return
    raise ProtocolError(device, action, 71, None, "reply has no errno line")


def _handshake(sec: int, nsec: int, age: bool, now: datetime) -> datetime | None:
    if sec == 0 and nsec == 0:
        return None
    if age:
        return now - timedelta(seconds=sec, microseconds=nsec // 1000)
    return datetime.fromtimestamp(sec + nsec / 1e9, UTC)


# A device is read on every reconcile and its peers rarely change: parse each distinct
# prefix, endpoint and public key once. The results are immutable, so sharing is safe.
# (Private and preshared keys are never cached: secrets do not linger in a cache.)
@functools.lru_cache(maxsize=1 << 16)
def _network(text: str) -> IPNetwork:
    addr, _, plen = text.partition("/")
    try:
        if ":" in addr:
            return ipaddress.IPv6Network((socket.inet_pton(socket.AF_INET6, addr), int(plen)),
                                         strict=False)
        return ipaddress.IPv4Network((socket.inet_pton(socket.AF_INET, addr), int(plen)),
                                     strict=False)
    except OSError:
        raise ValueError(text) from None


_endpoint = functools.lru_cache(maxsize=1 << 16)(UDPAddr.parse)


@functools.lru_cache(maxsize=1 << 16)
def _public_key(text: str) -> Key:
    return Key.from_hex(text, "public_key")


_ZERO_HEX = "0" * 64


def parse_get(name: str, reply: bytes, now: datetime | None = None,
              cache: ReadCache | None = None) -> GetReply:
    """Parse a ``get=1`` reply into a Device. Raises ProtocolError on errno or bad values.

    With a ``cache`` (one per device), what did not change since the last read is not
    parsed again (``ReadCache``); the result is the same."""
    if cache is not None:
        got = cache.parse(name, reply, now)
        if got is not None:
            return got
    return _parse_full(name, reply, now)


def _parse_full(name: str, reply: bytes, now: datetime | None = None) -> GetReply:
    dev = Device(name=name, kind=BackendKind.USERSPACE)
    boringtun = False
    peer: Peer | None = None
    # Handshake (sec, nsec) per peer, turned into a time at the end (boringtun sends an age).
    hs: list[list[int]] = []
    errno_seen = False
    for line in reply.decode("ascii", "replace").split("\n"):
        if not line:
            continue
        k, sep, v = line.partition("=")
        if not sep:
            raise ProtocolError(name, "read", 71, None, f"line without '=': {safe(line)}")
        try:
            # The most frequent keys first: this loop runs ~10 times per peer.
            if peer is not None:
                if k == "allowed_ip":
                    peer.allowed_ips.append(_network(v))
                    continue
                if k == "last_handshake_time_sec":
                    hs[-1][0] = int(v)
                    continue
                if k == "last_handshake_time_nsec":
                    hs[-1][1] = int(v)
                    continue
                if k == "rx_bytes":
                    peer.rx_bytes = int(v)
                    continue
                if k == "tx_bytes":
                    peer.tx_bytes = int(v)
                    continue
                if k == "endpoint":
                    peer.endpoint = _endpoint(v)
                    continue
                if k == "persistent_keepalive_interval":
                    peer.persistent_keepalive = int(v)
                    continue
                if k == "preshared_key":
                    if v != _ZERO_HEX:
                        peer.preshared_key = Key.from_hex(v, "preshared_key")
                    continue
                if k == "protocol_version":
                    peer.protocol_version = int(v)
                    continue
            if k == "public_key":
                peer = Peer(public_key=_public_key(v))
                dev.peers.append(peer)
                hs.append([0, 0])
                continue
            if k == "errno":
                n = int(v)
                if n != 0:
                    raise ProtocolError(name, "read", n)
                errno_seen = True
                break
            if peer is None:
                if k == "private_key":
                    dev.private_key = Key.from_hex(v, "private_key")
                elif k == "own_public_key":
                    boringtun = True
                    dev.public_key = Key.from_hex(v, "own_public_key")
                elif k == "listen_port":
                    dev.listen_port = int(v)
                elif k == "fwmark":
                    dev.fwmark = int(v)
            # Unknown keys are ignored: implementations add fields over time.
        except InvalidKeyError as e:
            raise ProtocolError(name, "read", 71, k, str(e)) from None
        except ValueError:
            raise ProtocolError(name, "read", 71, k, f"bad value {safe(v)}") from None
    if not errno_seen:
        raise ProtocolError(name, "read", 71, None, "reply has no errno line")
    if dev.private_key is not None and dev.public_key is None:
        dev.public_key = dev.private_key.public_key()
    now = now or datetime.now(UTC)
    for p, (sec, nsec) in zip(dev.peers, hs, strict=True):
        p.last_handshake = _handshake(sec, nsec, boringtun, now)
    return GetReply(dev, boringtun)


# wireguard-go's peer, in the order it writes one (device/uapi.go, IpcGetOperation). Groups:
# 1 the whole peer, 2 public key, 3 preshared key, 4 and 9 the lines that change only when
# the peer is configured, 5-8 the handshake time and the counters, which change all the
# time. Values are checked by the parse (a key's ``.{64}`` is only its length).
_WG_GO_PEER = re.compile(
    r"(public_key=(.{64})\n"
    r"preshared_key=(.{64})\n"
    r"((?:protocol_version=[0-9]+\n)?(?:endpoint=.*\n)?)"
    r"last_handshake_time_sec=([0-9]+)\n"
    r"last_handshake_time_nsec=([0-9]+)\n"
    r"tx_bytes=([0-9]+)\n"
    r"rx_bytes=([0-9]+)\n"
    r"((?:persistent_keepalive_interval=[0-9]+\n)?(?:allowed_ip=.*\n)*))")
_END = "\nerrno=0\n\n"


@dataclass(frozen=True, slots=True)
class _Static:
    """A peer's settings as parsed from its unchanging lines (no secret among them)."""

    public_key: Key
    endpoint: UDPAddr | None
    persistent_keepalive: int
    protocol_version: int
    allowed_ips: tuple[IPNetwork, ...]


class ReadCache:
    """The last read's peers of one device, by the text of their unchanging lines.

    A device is read every few seconds and its peers' settings rarely change: each peer's
    public key, endpoint, keepalive and allowed IPs are parsed again only when their text
    differs from the last read's; the handshake time and the counters are parsed at every
    read, and the preshared key too (a secret is never kept here). Only wireguard-go's
    layout, with nothing unexpected in it, takes this path: anything else (another order,
    boringtun, unknown keys, an error) is parsed in full, and the full parse decides what a
    reply means. Only the last read's peers are kept.

    A reply can be fed as it arrives (``reader``): the peers complete so far are parsed
    while the device still writes the rest.
    """

    def __init__(self) -> None:
        self._peers: dict[tuple[str, str, str], _Static] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def reader(self, name: str, now: datetime | None = None) -> ReplyReader:
        return ReplyReader(self, name, now)

    def parse(self, name: str, reply: bytes, now: datetime | None) -> GetReply | None:
        """The reply parsed, or None when it must be parsed in full."""
        r = self.reader(name, now)
        r.feed(reply)
        return r.finish()


class ReplyReader:
    """One reply through a ReadCache, fed in pieces; ``finish`` once all is there."""

    def __init__(self, cache: ReadCache, name: str, now: datetime | None) -> None:
        self._cache, self._name, self._now = cache, name, now
        self._rest = ""  # not parsed yet: the header, or from a peer's first line on
        self._head: GetReply | None = None
        self._when = now or datetime.now(UTC)
        self._new: dict[tuple[str, str, str], _Static] = {}
        self._psks: dict[str, Key | None] = {_ZERO_HEX: None}  # within this read only
        self._failed = False

    def feed(self, chunk: bytes) -> None:
        if self._failed:
            return
        # Byte by byte (ASCII, anything else replaced): as the whole reply would decode.
        text = self._rest + chunk.decode("ascii", "replace")
        if self._head is None:
            if text.startswith("public_key="):
                start = 0
            else:
                first = text.find("\npublic_key=")
                if first < 0:
                    self._rest = text  # the header goes on
                    return
                start = first + 1
            header = text[:start]
            # A header with an errno line ends the reply there: parsed in full.
            if header.startswith("errno=") or "\nerrno=" in header:
                self._fail()
                return
            try:
                # The device's own lines, a few, parsed in full (a private key is a secret).
                self._head = _parse_full(self._name, (header + "errno=0\n\n").encode(),
                                         self._now)
            except ProtocolError:
                self._fail()
                return
            text = text[start:]
        # The peers before the last peer line seen are complete.
        last = text.rfind("\npublic_key=")
        if last < 0:
            self._rest = text
            return
        self._peers(text, last + 1)
        self._rest = text[last + 1:]

    def finish(self) -> GetReply | None:
        """The reply parsed, or None when it must be parsed in full."""
        text = self._rest
        if self._head is None:  # no peer line: a few lines, parsed in full
            self._fail()
            return None
        end = len(text) - len(_END) + 1  # just after the last peer line's newline
        if self._failed or end < 0 or not text.endswith(_END) \
                or text.find("\nerrno=") != end - 1:
            self._fail()
            return None
        self._peers(text, end)
        if self._failed:
            return None
        self._cache._peers = self._new
        return self._head

    def _fail(self) -> None:
        self._failed = True
        self._rest = ""
        self._cache._peers = {}  # the full parse decides: nothing of the last read is kept

    def _peers(self, text: str, end: int) -> None:
        """Parse ``text[:end]``, whole peers in wireguard-go's layout, or fail."""
        if self._failed:
            return
        assert self._head is not None
        old, new, psks = self._cache._peers, self._new, self._psks
        boringtun, when = self._head.boringtun, self._when
        out = self._head.device.peers
        covered = 0
        for whole, pub, psk_hex, first, sec, nsec, tx, rx, rest in \
                _WG_GO_PEER.findall(text, 0, end):
            covered += len(whole)
            key = (pub, first, rest)
            st = old.get(key) or new.get(key) or _static(self._name, key)
            if st is None:
                self._fail()
                return
            new[key] = st
            if psk_hex in psks:
                psk = psks[psk_hex]
            else:
                try:
                    psk = psks[psk_hex] = Key.from_hex(psk_hex, "preshared_key")
                except InvalidKeyError:
                    self._fail()
                    return
            out.append(Peer(
                st.public_key, psk, st.endpoint, st.persistent_keepalive,
                _handshake(int(sec), int(nsec), boringtun, when), int(rx), int(tx),
                list(st.allowed_ips), st.protocol_version))
        # Matches do not overlap: together as long as the peers' lines, they are all of them.
        if covered != end:
            self._fail()


def _static(name: str, key: tuple[str, str, str]) -> _Static | None:
    """A peer's unchanging lines parsed as the full parse would, or None on any error."""
    pub, first, rest = key
    try:
        got = _parse_full(name, f"public_key={pub}\n{first}{rest}errno=0\n\n".encode())
    except ProtocolError:
        return None
    p = got.device.peers[0]
    return _Static(p.public_key, p.endpoint, p.persistent_keepalive, p.protocol_version,
                   tuple(p.allowed_ips))
