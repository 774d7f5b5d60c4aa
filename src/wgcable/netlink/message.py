"""Netlink messages: nlmsghdr and genlmsghdr packing and parsing, NLMSG_ERROR / NLMSG_DONE
with extended acks. Pure: no sockets here, so everything can be tested from bytes."""

from __future__ import annotations

import errno as _errno
import os
import struct
from dataclasses import dataclass

from wgcable.netlink import attrs

# include/uapi/linux/netlink.h
NLMSG_ALIGNTO = 4
NLMSG_HDRLEN = 16
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLMSG_MIN_TYPE = 0x10

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_ECHO = 0x08
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP_FILTERED = 0x20
NLM_F_ROOT = 0x100  # GET modifiers
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100  # NEW modifiers
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLM_F_CAPPED = 0x100  # ACK flags
NLM_F_ACK_TLVS = 0x200

NLMSGERR_ATTR_MSG = 1
NLMSGERR_ATTR_OFFS = 2
NLMSGERR_ATTR_COOKIE = 3
NLMSGERR_ATTR_POLICY = 4
NLMSGERR_ATTR_MISS_TYPE = 5
NLMSGERR_ATTR_MISS_NEST = 6

GENL_HDRLEN = 4

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
HEADER = _NLMSGHDR
_GENLMSGHDR = struct.Struct("=BBH")  # cmd, version, reserved
_ERRNO = struct.Struct("=i")


class MessageDecodeError(ValueError):
    """Bytes that are not a well-formed netlink message."""


class NetlinkError(OSError):
    """The kernel answered a request with a negative error code.

    ``errno`` is positive. ``ext_message``, ``offset`` (bytes from the start of the request's
    nlmsghdr to the offending attribute) and ``missing_type`` come from the extended ack when
    the kernel sent one.
    """

    def __init__(
        self,
        errno: int,
        ext_message: str | None = None,
        offset: int | None = None,
        missing_type: int | None = None,
        missing_nest: int | None = None,
    ) -> None:
        code = abs(errno)
        text = os.strerror(code)
        if ext_message:
            text = f"{text}: {ext_message}"
        super().__init__(code, text)
        self.ext_message = ext_message
        self.offset = offset
        self.missing_type = missing_type
        self.missing_nest = missing_nest


class DumpInterruptedError(NetlinkError):
    """A dump's messages carried NLM_F_DUMP_INTR: the object changed mid-dump; retry."""

    def __init__(self) -> None:
        super().__init__(_errno.EINTR, "dump interrupted by a concurrent change")


@dataclass(frozen=True, slots=True)
class Message:
    type: int
    flags: int
    seq: int
    pid: int
    payload: bytes

    def __repr__(self) -> str:
        return (
            f"Message(type={self.type}, flags={self.flags:#x}, seq={self.seq}, "
            f"len={len(self.payload)})"
        )


def align(n: int) -> int:
    return (n + NLMSG_ALIGNTO - 1) & ~(NLMSG_ALIGNTO - 1)


def pack(msg_type: int, flags: int, seq: int, payload: bytes, pid: int = 0) -> bytes:
    """One message with its header; ``nlmsg_len`` counts the header and payload."""
    length = NLMSG_HDRLEN + len(payload)
    header = _NLMSGHDR.pack(length, msg_type, flags, seq, pid)
    return header + payload + bytes(align(length) - length)


def parse(data: bytes) -> list[Message]:
    """Split a received datagram into its messages."""
    out: list[Message] = []
    pos = 0
    end = len(data)
    while end - pos >= NLMSG_HDRLEN:
        length, type_, flags, seq, pid = _NLMSGHDR.unpack_from(data, pos)
        if length < NLMSG_HDRLEN or pos + length > end:
            raise MessageDecodeError(f"message at {pos} has bad length {length} ({end - pos} left)")
        out.append(Message(type_, flags, seq, pid, bytes(data[pos + NLMSG_HDRLEN : pos + length])))
        pos += align(length)
    if pos < end and any(data[pos:]):
        raise MessageDecodeError(f"{end - pos} trailing bytes after the last message")
    return out


def pack_genl(cmd: int, version: int, attr_data: bytes) -> bytes:
    """A generic netlink payload: genlmsghdr then attributes."""
    return _GENLMSGHDR.pack(cmd, version, 0) + attr_data


def parse_genl(payload: bytes) -> tuple[int, int, bytes]:
    """(cmd, version, attribute bytes) of a generic netlink payload."""
    if len(payload) < GENL_HDRLEN:
        raise MessageDecodeError(f"generic netlink payload of {len(payload)} bytes is too short")
    cmd, version, _ = _GENLMSGHDR.unpack_from(payload)
    return cmd, version, payload[GENL_HDRLEN:]


def _ext_ack(tlvs: bytes, code: int) -> NetlinkError:
    try:
        found = attrs.by_type(attrs.parse(tlvs))
    except attrs.AttrDecodeError:
        found = {}

    def u32(t: int) -> int | None:
        a = found.get(t)
        return a.u32() if a is not None and len(a.payload) == 4 else None

    msg = found.get(NLMSGERR_ATTR_MSG)
    return NetlinkError(
        code,
        ext_message=msg.string() if msg is not None else None,
        offset=u32(NLMSGERR_ATTR_OFFS),
        missing_type=u32(NLMSGERR_ATTR_MISS_TYPE),
        missing_nest=u32(NLMSGERR_ATTR_MISS_NEST),
    )


def error_of(msg: Message) -> NetlinkError | None:
    """For NLMSG_ERROR: None for an ack (error 0), else the error with its extended ack.

    Layout: s32 error, the request's nlmsghdr, the rest of the request unless the ack is
    NLM_F_CAPPED, then (with NLM_F_ACK_TLVS) the extended-ack attributes.
    """
    if msg.type != NLMSG_ERROR:
        raise ValueError(f"message type {msg.type} is not NLMSG_ERROR")
    if len(msg.payload) < _ERRNO.size:
        raise MessageDecodeError("NLMSG_ERROR without an error code")
    (code,) = _ERRNO.unpack_from(msg.payload)
    if code == 0:
        return None
    if not msg.flags & NLM_F_ACK_TLVS or len(msg.payload) < _ERRNO.size + NLMSG_HDRLEN:
        return NetlinkError(code)
    start = _ERRNO.size + NLMSG_HDRLEN
    if not msg.flags & NLM_F_CAPPED:
        (orig_len,) = struct.unpack_from("=I", msg.payload, _ERRNO.size)
        start = _ERRNO.size + align(max(orig_len, NLMSG_HDRLEN))
    return _ext_ack(msg.payload[start:], code)


def done_error(msg: Message) -> NetlinkError | None:
    """For NLMSG_DONE: the dump's final status (an s32, maybe followed by extended-ack TLVs);
    None when it is 0 or absent (old kernels sent an empty DONE)."""
    if msg.type != NLMSG_DONE:
        raise ValueError(f"message type {msg.type} is not NLMSG_DONE")
    if len(msg.payload) < _ERRNO.size:
        return None
    (code,) = _ERRNO.unpack_from(msg.payload)
    if code == 0:
        return None
    if msg.flags & NLM_F_ACK_TLVS:
        return _ext_ack(msg.payload[_ERRNO.size :], code)
    return NetlinkError(code)


def pack_error(
    code: int,
    request: bytes,
    *,
    seq: int,
    pid: int = 0,
    capped: bool = True,
    ext_message: str | None = None,
    offset: int | None = None,
) -> bytes:
    """An NLMSG_ERROR message as the kernel builds it (for tests and fakes). ``code`` is
    the kernel's value: 0 for an ack, negative for an error."""
    flags = 0
    body = _ERRNO.pack(code)
    if capped or code == 0:
        flags |= NLM_F_CAPPED
        body += request[:NLMSG_HDRLEN]
    else:
        body += request + bytes(align(len(request)) - len(request))
    tlvs = b""
    if ext_message is not None:
        tlvs += attrs.string(NLMSGERR_ATTR_MSG, ext_message)
    if offset is not None:
        tlvs += attrs.u32(NLMSGERR_ATTR_OFFS, offset)
    if tlvs:
        flags |= NLM_F_ACK_TLVS
    return pack(NLMSG_ERROR, flags, seq, body + tlvs, pid)
