"""A minimal netlink socket: send one request, collect every part of its reply."""

from __future__ import annotations

import contextlib
import errno as _errno
import itertools
import socket as _socket
from collections.abc import Iterator, Sequence
from types import TracebackType

from wgcable.netlink import message as nlmsg
from wgcable.netlink.message import DumpInterruptedError, Message, NetlinkError

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12
NETLINK_GENERIC = 16

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
NETLINK_ADD_MEMBERSHIP = 1
_SO_RCVBUFFORCE = 33

RCVBUF = 1 << 20  # dumps of many peers arrive faster than we read them
# Requests sent in one datagram by ``batch``: if all fail, their errors (about 1 KiB of
# buffer each, as the kernel counts it) must fit in RCVBUF before we read them.
BATCH_CHUNK = 256
_PEEK_FLAGS = _socket.MSG_PEEK | _socket.MSG_TRUNC


def notification_socket(protocol: int, groups: int = 0,
                        group: int | None = None) -> _socket.socket:
    """A socket for the kernel's notifications of ``protocol``: the legacy ``groups`` bitmask
    bound to, or ``group`` joined by number; its buffer past rmem_max where allowed (root),
    so that a burst is not lost while nobody reads."""
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC,
                          protocol)
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(_socket.SOL_SOCKET, _SO_RCVBUFFORCE, RCVBUF)
        sock.bind((0, groups))
        if group is not None:
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
    except BaseException:
        sock.close()
        raise
    return sock


def pending(sock: _socket.socket) -> Iterator[bytes | None]:
    """Every datagram waiting on a non-blocking notification socket, without waiting; None
    each time some were lost (ENOBUFS: the buffer ran over, anything may have changed).
    Each notification is one small message: one cut short would not parse, and the caller
    counts that as a change too."""
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno == _errno.ENOBUFS:
                yield None
                continue
            raise
        yield data


class NetlinkSocket:
    """One netlink socket of a protocol (NETLINK_GENERIC, NETLINK_ROUTE).

    Not thread-safe: requests are strictly one at a time. ``sock`` lets tests pass a
    datagram socket of their own (e.g. one end of a socketpair) playing the kernel.
    """

    def __init__(
        self,
        protocol: int,
        *,
        timeout: float | None = 10.0,
        sock: _socket.socket | None = None,
    ) -> None:
        self.protocol = protocol
        if sock is None:
            sock = _socket.socket(
                _socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, protocol
            )
            try:
                sock.bind((0, 0))
                self._tune(sock)
            except BaseException:
                sock.close()
                raise
        sock.settimeout(timeout)
        self._sock = sock
        # Replies carry our sequence number; after a timed-out request, late replies to it
        # are recognised by their older number and skipped.
        self._seq = itertools.count(1)
        self._buf = bytearray(1 << 16)

    @staticmethod
    def _tune(sock: _socket.socket) -> None:
        # Each option is an improvement, not a requirement: older kernels lack some.
        try:
            sock.setsockopt(_socket.SOL_SOCKET, _SO_RCVBUFFORCE, RCVBUF)  # root: past rmem_max
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, RCVBUF)
        # EXT_ACK: error strings and attribute offsets; CAP_ACK: errors need not echo the
        # whole request back.
        for opt in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):
            with contextlib.suppress(OSError):
                sock.setsockopt(SOL_NETLINK, opt, 1)

    def strict_dumps(self) -> None:
        """Have the kernel check dump requests strictly and filter by what they name (a
        route table), where it can; older kernels ignore the option (the caller filters)."""
        with contextlib.suppress(OSError):
            self._sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NetlinkSocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def next_seq(self) -> int:
        return next(self._seq) & 0xFFFFFFFF

    def _recv(self) -> bytes:
        # Peek at the size first so a datagram larger than our buffer is never cut short.
        size = self._sock.recv_into(self._buf, len(self._buf), _PEEK_FLAGS)
        if size > len(self._buf):
            self._buf = bytearray(size)
        n = self._sock.recv_into(self._buf, len(self._buf))
        return bytes(self._buf[:n])

    def request(
        self, msg_type: int, payload: bytes, flags: int = 0, *, dump: bool = False
    ) -> list[Message]:
        """Send one request and return the reply's data messages.

        A dump (NLM_F_DUMP) collects NLM_F_MULTI parts until NLMSG_DONE; anything else asks
        for an ack and returns whatever came before it. Raises NetlinkError on a kernel
        error and DumpInterruptedError when a dump was inconsistent.
        """
        seq = self.next_seq()
        flags |= nlmsg.NLM_F_REQUEST | (nlmsg.NLM_F_DUMP if dump else nlmsg.NLM_F_ACK)
        self._sock.send(nlmsg.pack(msg_type, flags, seq, payload))
        out: list[Message] = []
        interrupted = False
        while True:
            for msg in nlmsg.parse(self._recv()):
                if msg.seq != seq:
                    continue  # a stale reply to an earlier, abandoned request
                if msg.type == nlmsg.NLMSG_NOOP:
                    continue
                if msg.type == nlmsg.NLMSG_OVERRUN:
                    raise NetlinkError(_errno.ENOBUFS, "netlink overrun")
                if msg.type == nlmsg.NLMSG_ERROR:
                    err = nlmsg.error_of(msg)
                    if err is not None:
                        raise err
                    return out  # the ack
                interrupted |= bool(msg.flags & nlmsg.NLM_F_DUMP_INTR)
                if msg.type == nlmsg.NLMSG_DONE:
                    err = nlmsg.done_error(msg)
                    if err is not None:
                        raise err
                    if interrupted:
                        raise DumpInterruptedError()
                    return out
                out.append(msg)

    def batch(self, requests: Sequence[tuple[int, int, bytes]]
              ) -> list[NetlinkError | None]:
        """Send many (type, flags, payload) requests, many to a datagram, and return each
        one's error or None, in order. The kernel handles every request on its own: one
        failure does not stop the others. Only the last request of a datagram asks for an
        ack; the kernel answers the others only when they fail, and handles a datagram's
        requests in order, so that ack ends the datagram's answers."""
        results: list[NetlinkError | None] = []
        for start in range(0, len(requests), BATCH_CHUNK):
            chunk = requests[start:start + BATCH_CHUNK]
            seqs = [self.next_seq() for _ in chunk]
            last = len(chunk) - 1
            self._sock.send(b"".join(
                nlmsg.pack(t, f | nlmsg.NLM_F_REQUEST | (nlmsg.NLM_F_ACK if i == last else 0),
                           seq, payload)
                for i, ((t, f, payload), seq) in enumerate(zip(chunk, seqs, strict=True))))
            index = {seq: i for i, seq in enumerate(seqs)}
            got: list[NetlinkError | None] = [None] * len(chunk)
            done = False
            while not done:
                for msg in nlmsg.parse(self._recv()):
                    if msg.type == nlmsg.NLMSG_OVERRUN:
                        raise NetlinkError(_errno.ENOBUFS, "netlink overrun")
                    i = index.get(msg.seq)
                    if msg.type != nlmsg.NLMSG_ERROR or i is None:
                        continue  # stale, or not an answer
                    got[i] = nlmsg.error_of(msg)
                    done |= i == last
            results += got
        return results

    def dump_raw(self, msg_type: int, payload: bytes) -> list[tuple[bytes, int, int]]:
        """A dump's data messages as (datagram, payload start, payload end), not copied
        one by one: for dumps of thousands of small messages (routes) parsed in one tight
        loop. Errors as ``request``."""
        seq = self.next_seq()
        self._sock.send(nlmsg.pack(msg_type, nlmsg.NLM_F_REQUEST | nlmsg.NLM_F_DUMP, seq,
                                   payload))
        out: list[tuple[bytes, int, int]] = []
        interrupted = False
        hdr = nlmsg.HEADER
        while True:
            data = self._recv()
            pos, end = 0, len(data)
            while end - pos >= nlmsg.NLMSG_HDRLEN:
                length, type_, flags, mseq, _ = hdr.unpack_from(data, pos)
                if length < nlmsg.NLMSG_HDRLEN or pos + length > end:
                    raise nlmsg.MessageDecodeError(
                        f"message at {pos} has bad length {length} ({end - pos} left)")
                if mseq == seq and type_ >= nlmsg.NLMSG_MIN_TYPE:
                    interrupted |= bool(flags & nlmsg.NLM_F_DUMP_INTR)
                    out.append((data, pos + nlmsg.NLMSG_HDRLEN, pos + length))
                elif mseq == seq and type_ in (nlmsg.NLMSG_ERROR, nlmsg.NLMSG_DONE,
                                               nlmsg.NLMSG_OVERRUN):
                    msg = Message(type_, flags, mseq, 0,
                                  bytes(data[pos + nlmsg.NLMSG_HDRLEN:pos + length]))
                    if type_ == nlmsg.NLMSG_OVERRUN:
                        raise NetlinkError(_errno.ENOBUFS, "netlink overrun")
                    err = (nlmsg.error_of(msg) if type_ == nlmsg.NLMSG_ERROR
                           else nlmsg.done_error(msg))
                    if err is not None:
                        raise err
                    if interrupted:
                        raise DumpInterruptedError()
                    return out
                pos += nlmsg.align(length)
