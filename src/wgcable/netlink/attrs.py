"""Netlink attributes (struct nlattr): pure encoding and decoding, no I/O.

An attribute is a 4-byte header (u16 length including the header, u16 type) followed by its
payload, padded to a multiple of 4. Integers are in host byte order, as netlink wants them.
The top two bits of the type are flags: NLA_F_NESTED marks a payload made of attributes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

NLA_ALIGNTO = 4
NLA_HDRLEN = 4
NLA_F_NESTED = 1 << 15
NLA_F_NET_BYTEORDER = 1 << 14
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF
_MAX_PAYLOAD = 0xFFFF - NLA_HDRLEN

_HDR = struct.Struct("=HH")
_U8 = struct.Struct("=B")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")


class AttrDecodeError(ValueError):
    """Malformed attribute data (truncated header, length past the end, wrong size)."""


def align(n: int) -> int:
    """Round ``n`` up to the netlink alignment (4)."""
    return (n + NLA_ALIGNTO - 1) & ~(NLA_ALIGNTO - 1)


# --- encoding -----------------------------------------------------------------------------


def encode(attr_type: int, payload: bytes, *, nested: bool = False) -> bytes:
    """One attribute: header, payload, zero padding to 4 bytes."""
    if not 0 <= attr_type <= NLA_TYPE_MASK:
        raise ValueError(f"attribute type {attr_type} out of range")
    if len(payload) > _MAX_PAYLOAD:
        raise ValueError(f"attribute {attr_type} payload of {len(payload)} bytes is too long")
    length = NLA_HDRLEN + len(payload)
    flags = NLA_F_NESTED if nested else 0
    return _HDR.pack(length, attr_type | flags) + payload + bytes(align(length) - length)


def nested(attr_type: int, children: Iterable[bytes]) -> bytes:
    """A nested attribute holding already-encoded ``children``; always flagged NLA_F_NESTED,
    which strict kernel policies require and liberal ones ignore."""
    return encode(attr_type, b"".join(children), nested=True)


def u8(attr_type: int, value: int) -> bytes:
    return encode(attr_type, _U8.pack(value))


def u16(attr_type: int, value: int) -> bytes:
    return encode(attr_type, _U16.pack(value))


def u32(attr_type: int, value: int) -> bytes:
    return encode(attr_type, _U32.pack(value))


def u64(attr_type: int, value: int) -> bytes:
    return encode(attr_type, _U64.pack(value))


def string(attr_type: int, value: str) -> bytes:
    """A NUL-terminated string (NLA_NUL_STRING / NLA_STRING both accept it)."""
    raw = value.encode()
    if b"\0" in raw:
        raise ValueError("netlink strings cannot contain NUL")
    return encode(attr_type, raw + b"\0")


def raw(attr_type: int, value: bytes) -> bytes:
    return encode(attr_type, bytes(value))


# --- decoding -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attr:
    """A decoded attribute: its type without flag bits, its flags, and its payload.

    ``offset`` is where the attribute's header starts in the buffer it was parsed from
    (relative to that buffer), so an extended-ack offset can be traced back to it.
    """

    type: int
    payload: bytes
    is_nested: bool = False
    net_byteorder: bool = False
    offset: int = 0

    def __repr__(self) -> str:
        # Payloads may be key material: show only their size.
        flags = "N" if self.is_nested else ""
        return f"Attr(type={self.type}{flags}, len={len(self.payload)}, offset={self.offset})"

    def _fixed(self, st: struct.Struct, what: str) -> int:
        if len(self.payload) != st.size:
            raise AttrDecodeError(
                f"attribute {self.type}: {what} needs {st.size} bytes, got {len(self.payload)}"
            )
        return int(st.unpack(self.payload)[0])

    def u8(self) -> int:
        return self._fixed(_U8, "u8")

    def u16(self) -> int:
        return self._fixed(_U16, "u16")

    def u32(self) -> int:
        return self._fixed(_U32, "u32")

    def u64(self) -> int:
        return self._fixed(_U64, "u64")

    def string(self) -> str:
        """The payload up to the first NUL (strings may or may not carry one)."""
        return self.payload.split(b"\0", 1)[0].decode("utf-8", "replace")

    def nested(self) -> list[Attr]:
        """Parse the payload as attributes. Does not require NLA_F_NESTED: rtnetlink still
        sends some nests (IFLA_LINKINFO) without it."""
        return parse(self.payload, base=self.offset + NLA_HDRLEN)


def iter_attrs(data: bytes, base: int = 0) -> Iterator[Attr]:
    """Walk the attributes in ``data``. Raises AttrDecodeError on truncation."""
    pos = 0
    end = len(data)
    while pos < end:
        if end - pos < NLA_HDRLEN:
            # Trailing bytes too short for a header: only padding is acceptable.
            if any(data[pos:]):
                raise AttrDecodeError(f"truncated attribute header at offset {base + pos}")
            return
        length, type_ = _HDR.unpack_from(data, pos)
        if length < NLA_HDRLEN or pos + length > end:
            raise AttrDecodeError(
                f"attribute at offset {base + pos} has bad length {length} ({end - pos} left)"
            )
        yield Attr(
            type=type_ & NLA_TYPE_MASK,
            payload=bytes(data[pos + NLA_HDRLEN : pos + length]),
            is_nested=bool(type_ & NLA_F_NESTED),
            net_byteorder=bool(type_ & NLA_F_NET_BYTEORDER),
            offset=base + pos,
        )
        pos += align(length)


def parse(data: bytes, base: int = 0) -> list[Attr]:
    return list(iter_attrs(data, base))


def first(attrs: Iterable[Attr], attr_type: int) -> Attr | None:
    """The first attribute of ``attr_type``, or None."""
    return next((a for a in attrs if a.type == attr_type), None)


def by_type(attrs: Iterable[Attr]) -> dict[int, Attr]:
    """Attributes keyed by type; if a type repeats, the first one is kept."""
    out: dict[int, Attr] = {}
    for a in attrs:
        out.setdefault(a.type, a)
    return out


def locate(data: bytes, offset: int, base: int = 0) -> list[Attr]:
    """The chain of attributes, outermost first, whose header starts at or which contain
    ``offset`` (relative to ``data``'s start plus ``base``). Descends only into attributes
    flagged NLA_F_NESTED. Used to name the attribute an extended ack points at."""
    chain: list[Attr] = []
    try:
        level = parse(data, base)
    except AttrDecodeError:
        return chain
    while True:
        hit = next(
            (a for a in level if a.offset <= offset < a.offset + NLA_HDRLEN + len(a.payload)),
            None,
        )
        if hit is None:
            return chain
        chain.append(hit)
        if hit.offset == offset or not hit.is_nested:
            return chain
        try:
            level = hit.nested()
        except AttrDecodeError:
            return chain
