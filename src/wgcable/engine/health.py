"""Latency and health checking of remote gateways by ICMP echo (Submariner's health checker).

Each remote cluster publishes a ``healthCheckIP``; we ping it every ``interval`` seconds and
keep round-trip statistics over the last ``window`` replies. More than ``max_losses`` echoes in
a row without a reply make the target unhealthy; any reply makes it healthy again.

One raw socket per address family serves every target (raw ICMP sockets see all ICMP, so replies
are matched by identifier, sequence and source address). Where raw sockets are not allowed we
fall back to the kernel's unprivileged ping sockets (``SOCK_DGRAM``), which own the identifier
and deliver only our own replies. Where neither works, health checking is unavailable: targets
report healthy with no latency, because a missing probe is not a broken tunnel.

Statistics follow Submariner's pinger: population standard deviation (divide by n), and lost
echoes leave the statistics alone (only the loss counter moves). Unlike Submariner, min and max
are taken over the same window as the mean rather than since the pinger started.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import ipaddress
import logging
import math
import secrets
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from wgcable.cable.types import LatencyRTT
from wgcable.netlink.netns import call_in_netns

log = logging.getLogger(__name__)

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129

_ICMP_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
_SOL_RAW = 255  # Linux SOL_RAW; not exported by the socket module
_ICMP_FILTER = 1  # SOL_RAW option: bitmask of ICMP types (< 32) to drop
_ICMP6_FILTER = 1  # IPPROTO_ICMPV6 option: 256-bit mask of ICMPv6 types to drop
_PAYLOAD = b"wgcable-health\x00\x00"
_RETRY_OPEN_S = 5.0  # as Submariner's pinger, retry a socket that could not be opened
_NS_PER_S = 1_000_000_000


# --- packets ------------------------------------------------------------------------------------


def icmp_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): one's complement of the one's complement sum."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_echo_request(
    family: socket.AddressFamily, ident: int, seq: int, payload: bytes = _PAYLOAD
) -> bytes:
    """An ICMP (v4) or ICMPv6 echo request.

    The ICMPv6 checksum covers a pseudo-header with both addresses, which only the kernel knows
    for sure (source selection), so it is left 0: Linux always fills it for ICMPv6 raw and ping
    sockets. The ICMPv4 checksum is ours to compute (ping sockets recompute it anyway).
    """
    if family == AF_INET6:
        return _ICMP_HEADER.pack(ICMPV6_ECHO_REQUEST, 0, 0, ident, seq) + payload
    if family != AF_INET:
        raise ValueError(f"not an IP address family: {family!r}")
    unsummed = _ICMP_HEADER.pack(ICMP_ECHO_REQUEST, 0, 0, ident, seq) + payload
    return _ICMP_HEADER.pack(ICMP_ECHO_REQUEST, 0, icmp_checksum(unsummed), ident, seq) + payload


class EchoReply(NamedTuple):
    ident: int
    seq: int
    payload: bytes


def parse_echo_reply(
    family: socket.AddressFamily, data: bytes, *, ip_header: bool = False
) -> EchoReply | None:
    """The echo reply in ``data``, or None for anything else (other ICMP types, junk).

    ``ip_header``: IPv4 raw sockets deliver the IP header too; ping sockets and IPv6 raw
    sockets start at the ICMP header.
    """
    if ip_header:
        if len(data) < 20 or data[0] >> 4 != 4:
            return None
        ihl = (data[0] & 0x0F) * 4
        if ihl < 20 or data[9] != socket.IPPROTO_ICMP:
            return None
        data = data[ihl:]
    if len(data) < _ICMP_HEADER.size:
        return None
    kind, code, _, ident, seq = _ICMP_HEADER.unpack_from(data)
    want = ICMPV6_ECHO_REPLY if family == AF_INET6 else ICMP_ECHO_REPLY
    if kind != want or code != 0:
        return None
    # IPv4: a damaged packet sums to nonzero. (ICMPv6 needs the pseudo-header; the kernel
    # already dropped bad ones.)
    if family == AF_INET and icmp_checksum(data) != 0:
        return None
    return EchoReply(ident, seq, bytes(data[_ICMP_HEADER.size :]))


# --- statistics and per-target bookkeeping (pure: clocks are passed in) ----------------------


class RttStats:
    """Round-trip times of the last ``window`` replies."""

    def __init__(self, window: int = 60) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._rtts: collections.deque[int] = collections.deque(maxlen=window)

    def add(self, rtt_ns: int) -> None:
        self._rtts.append(rtt_ns)

    def __len__(self) -> int:
        return len(self._rtts)

    def latency(self) -> LatencyRTT | None:
        """Last/min/average/max/population std dev in seconds; None before the first reply."""
        if not self._rtts:
            return None
        n = len(self._rtts)
        mean = sum(self._rtts) / n
        variance = sum((r - mean) ** 2 for r in self._rtts) / n  # population, as Submariner
        return LatencyRTT(
            last=self._rtts[-1] / _NS_PER_S,
            min=min(self._rtts) / _NS_PER_S,
            average=mean / _NS_PER_S,
            max=max(self._rtts) / _NS_PER_S,
            std_dev=math.sqrt(variance) / _NS_PER_S,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthResult:
    """What the checker knows about one target now."""

    latency: LatencyRTT | None
    consecutive_losses: int
    healthy: bool
    last_reply_age: float | None  # seconds since the last counted reply
    ip: str = ""
    available: bool = True  # False: no ICMP socket could be opened for this address family


class EchoTracker:
    """Sequence numbers, outstanding echoes, losses and RTTs of one target.

    An echo counts as lost when the next one goes out unanswered. A reply still counts (for RTT
    and recovery) while it is at most ``reply_window_ns`` old, so a reply slower than the
    interval clears the losses it caused.
    """

    def __init__(
        self, ip: str, *, window: int = 60, max_losses: int = 5, reply_window_ns: int
    ) -> None:
        addr = _parse_ip(ip)
        self.ip = ip
        self.address = addr
        self.family = AF_INET6 if addr.version == 6 else AF_INET
        self.max_losses = max_losses
        self.reply_window_ns = reply_window_ns
        self.stats = RttStats(window)
        self.consecutive_losses = 0
        self.last_reply_ns: int | None = None
        self._seq = 0
        self._latest = -1  # sequence of the latest echo sent
        self._awaiting = False  # the latest echo is still unanswered
        self._pending: dict[int, int] = {}  # seq -> send time (ns)

    @property
    def healthy(self) -> bool:
        return self.consecutive_losses <= self.max_losses

    @property
    def never_sent(self) -> bool:
        return self._latest < 0

    def next_seq(self) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFFFF
        return seq

    def sent(self, seq: int, now_ns: int) -> None:
        """Record an echo as sent (also when sending failed: it will never be answered)."""
        if self._awaiting:
            self.consecutive_losses += 1
        self._awaiting = True
        self._pending = {
            s: t for s, t in self._pending.items() if now_ns - t <= self.reply_window_ns
        }
        self._pending[seq] = now_ns
        self._latest = seq

    def received(self, seq: int, now_ns: int) -> bool:
        """Account a reply; False when it matches no echo still in its reply window
        (a duplicate, a stranger's, or too late)."""
        sent_ns = self._pending.pop(seq, None)
        if sent_ns is None:
            return False
        rtt = now_ns - sent_ns
        if rtt > self.reply_window_ns:
            return False
        self.stats.add(max(rtt, 0))
        self.consecutive_losses = 0
        self.last_reply_ns = now_ns
        if seq == self._latest:
            self._awaiting = False
        return True

    def result(self, now_ns: int) -> HealthResult:
        age = None if self.last_reply_ns is None else (now_ns - self.last_reply_ns) / _NS_PER_S
        return HealthResult(
            latency=self.stats.latency(),
            consecutive_losses=self.consecutive_losses,
            healthy=self.healthy,
            last_reply_age=age,
            ip=self.ip,
        )


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # Scope ids (fe80::1%eth0) matter for sending only; replies are matched without them.
    return ipaddress.ip_address(text.split("%", 1)[0])


# --- sockets ------------------------------------------------------------------------------------


@dataclass(slots=True)
class IcmpSocket:
    sock: socket.socket
    family: socket.AddressFamily
    raw: bool  # raw: we own the identifier and see every ICMP packet; else a ping socket


def _family_name(family: socket.AddressFamily) -> str:
    return "IPv6" if family == AF_INET6 else "IPv4"


def _make_socket(
    family: socket.AddressFamily, kind: socket.SocketKind, source_ip: str | None
) -> socket.socket:
    proto = socket.IPPROTO_ICMPV6 if family == AF_INET6 else socket.IPPROTO_ICMP
    sock = socket.socket(family, kind, proto)
    try:
        if kind == socket.SOCK_RAW:
            # Let the kernel drop everything but echo replies before it reaches us.
            if family == AF_INET:
                sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", ~1 & 0xFFFFFFFF))
            else:
                words = [0xFFFFFFFF] * 8
                words[ICMPV6_ECHO_REPLY >> 5] &= ~(1 << (ICMPV6_ECHO_REPLY & 31))
                sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("8I", *words))
        if source_ip is not None:
            # Pings leave with the cluster-facing address, so they go through the tunnel.
            sock.bind((source_ip, 0))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def open_icmp_socket(
    family: socket.AddressFamily, source_ip: str | None = None, netns: str | None = None
) -> IcmpSocket:
    """A raw ICMP socket, else a ping socket, created in ``netns``. Raises OSError when
    neither can be had (the message names both failures)."""
    errors: list[str] = []
    for kind in (socket.SOCK_RAW, socket.SOCK_DGRAM):
        try:
            sock = call_in_netns(netns, functools.partial(_make_socket, family, kind, source_ip))
        except OSError as e:
            errors.append(f"{kind.name}: {e}")
            continue
        return IcmpSocket(sock, family, raw=kind == socket.SOCK_RAW)
    raise OSError("; ".join(errors))


# --- the checker ----------------------------------------------------------------------------


def _source_ips(source_ip: str | Sequence[str] | None) -> dict[socket.AddressFamily, str]:
    items = [source_ip] if isinstance(source_ip, str) else list(source_ip or ())
    out: dict[socket.AddressFamily, str] = {}
    for ip in items:
        family = AF_INET6 if _parse_ip(ip).version == 6 else AF_INET
        if family in out:
            raise ValueError(f"more than one {_family_name(family)} source address: {items}")
        out[family] = ip
    return out


class HealthChecker:
    """Pings each target's health check IP from one thread and keeps per-target results.

    ``source_ip``: one address, or one per family, that the sockets bind to. ``netns``: the
    network namespace (``ip netns`` name or path) the sockets are created in; everything else
    runs in the caller's namespace.
    """

    def __init__(
        self,
        interval: float = 1.0,
        max_losses: int = 5,
        window: int = 60,
        *,
        source_ip: str | Sequence[str] | None = None,
        netns: str | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        if max_losses < 0:
            raise ValueError("max_losses must not be negative")
        if window < 1:
            raise ValueError("window must be at least 1")
        self.interval = interval
        self.max_losses = max_losses
        self.window = window
        self.netns = netns
        self._sources = _source_ips(source_ip)
        self._interval_ns = int(interval * _NS_PER_S)
        self.ident = secrets.randbits(16)  # one identifier per checker (raw sockets)
        self._lock = threading.Lock()
        self._targets: dict[str, EchoTracker] = {}
        self._invalid: set[tuple[str, str]] = set()  # (cluster, ip) already warned about
        # Owned by the checker thread while it runs:
        self._socks: dict[socket.AddressFamily, IcmpSocket] = {}
        self._retry_at: dict[socket.AddressFamily, float] = {}
        self._warned: set[socket.AddressFamily] = set()
        # Read by result() from other threads, so guarded by the lock:
        self._unavailable: set[socket.AddressFamily] = set()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._ping_new = False  # targets were added: ping those never pinged, now
        # Called (on the checker's thread) with the cluster ID when a target's first reply
        # arrives: the engine reports the connection connected then, not a status later.
        self.on_first_reply: Callable[[str], None] | None = None

    # --- targets and results --------------------------------------------------------------

    def set_targets(self, targets: Mapping[str, str]) -> None:
        """Replace the targets (cluster ID -> health check IP). Unchanged targets keep their
        statistics; a new IP for a cluster starts afresh. Empty or invalid IPs are skipped."""
        with self._lock:
            kept: dict[str, EchoTracker] = {}
            fresh = False
            for cluster, ip in targets.items():
                if not ip:
                    continue
                old = self._targets.get(cluster)
                if old is not None and old.ip == ip:
                    kept[cluster] = old
                    continue
                try:
                    kept[cluster] = EchoTracker(
                        ip,
                        window=self.window,
                        max_losses=self.max_losses,
                        reply_window_ns=2 * self._interval_ns,
                    )
                    fresh = True
                except ValueError:
                    if (cluster, ip) not in self._invalid:
                        self._invalid.add((cluster, ip))
                        log.warning("cluster %s: health check IP %r is not an IP address",
                                    cluster, ip)
            self._targets = kept
            # A new target's first echo goes out now, not at the next tick: its connection
            # is ``connecting`` until the first reply (Engine._with_health).
            self._ping_new = self._ping_new or fresh
        wake = self._wake
        if fresh and wake is not None:
            with contextlib.suppress(OSError):
                wake[1].send(b"\x01")

    def targets(self) -> dict[str, str]:
        with self._lock:
            return {cluster: t.ip for cluster, t in self._targets.items()}

    def result(self, cluster_id: str) -> HealthResult | None:
        """The target's state now; None when the cluster is not a target."""
        now = time.monotonic_ns()
        with self._lock:
            tracker = self._targets.get(cluster_id)
            if tracker is None:
                return None
            if tracker.family in self._unavailable:
                return HealthResult(
                    latency=None,
                    consecutive_losses=0,
                    healthy=True,
                    last_reply_age=None,
                    ip=tracker.ip,
                    available=False,
                )
            return tracker.result(now)

    def results(self) -> dict[str, HealthResult]:
        out: dict[str, HealthResult] = {}
        for cluster in self.targets():
            r = self.result(cluster)
            if r is not None:
                out[cluster] = r
        return out

    # --- thread ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._wake = socket.socketpair()
        for s in self._wake:
            s.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="wgcable-health", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        thread, wake = self._thread, self._wake
        if thread is None or wake is None:
            return
        self._stop.set()
        with contextlib.suppress(OSError):
            wake[1].send(b"\x00")  # wake the select() at once
        thread.join(timeout)
        if thread.is_alive():
            log.warning("health checker thread did not stop within %.1fs", timeout)
            return  # it still owns the sockets and the wake pair
        self._thread = self._wake = None
        for s in wake:
            s.close()

    def __enter__(self) -> HealthChecker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        assert self._wake is not None
        wake = self._wake[0]
        next_tick = time.monotonic_ns()
        try:
            while not self._stop.is_set():
                now = time.monotonic_ns()
                if now >= next_tick:
                    self._tick()
                    next_tick += self._interval_ns
                    if next_tick <= now:  # fell behind (suspend, slow host): do not burst
                        next_tick = now + self._interval_ns
                timeout = max(0, next_tick - time.monotonic_ns()) / _NS_PER_S
                fds = [s.sock for s in self._socks.values()]
                try:
                    readable, _, _ = select.select([wake, *fds], [], [], timeout)
                except OSError:
                    log.exception("health checker: select failed")
                    self._stop.wait(self.interval)
                    continue
                for sock in readable:
                    if sock is wake:
                        with contextlib.suppress(OSError):
                            wake.recv(64)
                        if self._ping_new:
                            self._tick(only_new=True)
                        continue
                    for icmp in self._socks.values():
                        if icmp.sock is sock:
                            self._receive(icmp)
        except Exception:
            log.exception("health checker stopped on an unexpected error")
        finally:
            for icmp in self._socks.values():
                icmp.sock.close()
            self._socks.clear()

    def _tick(self, only_new: bool = False) -> None:
        with self._lock:
            self._ping_new = False
            trackers = [t for t in self._targets.values() if not only_new or t.never_sent]
        self._ensure_sockets({t.family for t in trackers})
        for tracker in trackers:
            icmp = self._socks.get(tracker.family)
            if icmp is None:
                continue
            with self._lock:
                seq = tracker.next_seq()
                tracker.sent(seq, time.monotonic_ns())
            packet = build_echo_request(tracker.family, self.ident, seq)
            try:
                icmp.sock.sendto(packet, (tracker.ip, 0))
            except OSError as e:  # unreachable, filtered, no route: the echo is simply lost
                log.debug("ping %s: %s", tracker.ip, e)

    def _ensure_sockets(self, needed: set[socket.AddressFamily]) -> None:
        for family in list(self._socks):
            if family not in needed:  # a raw socket sees all ICMP: do not keep idle ones
                self._socks.pop(family).sock.close()
        now = time.monotonic()
        for family in needed - set(self._socks):
            if now < self._retry_at.get(family, 0.0):
                continue
            try:
                icmp = open_icmp_socket(family, self._sources.get(family), self.netns)
            except OSError as e:
                self._retry_at[family] = now + _RETRY_OPEN_S
                with self._lock:
                    self._unavailable.add(family)
                if family not in self._warned:
                    self._warned.add(family)
                    log.warning(
                        "%s health checking unavailable (%s): reporting those targets healthy "
                        "without latency", _family_name(family), e)
                continue
            if not icmp.raw:
                log.info("%s health checking uses an unprivileged ping socket",
                         _family_name(family))
            self._socks[family] = icmp
            self._warned.discard(family)
            with self._lock:
                self._unavailable.discard(family)

    def _receive(self, icmp: IcmpSocket) -> None:
        ip_header = icmp.raw and icmp.family == AF_INET
        for _ in range(256):  # bounded, so a flood cannot starve the send schedule
            try:
                data, addr = icmp.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # a queued ICMP error for an earlier send
                log.debug("health checker recv: %s", e)
                continue
            now = time.monotonic_ns()
            reply = parse_echo_reply(icmp.family, data, ip_header=ip_header)
            # Ping sockets rewrite the identifier and filter for us; raw sockets see everyone's.
            if reply is None or (icmp.raw and reply.ident != self.ident):
                continue
            try:
                source = _parse_ip(str(addr[0]))
            except ValueError:
                continue
            self._match(icmp.family, source, reply.seq, now)

    def _match(
        self,
        family: socket.AddressFamily,
        source: ipaddress.IPv4Address | ipaddress.IPv6Address,
        seq: int,
        now_ns: int,
    ) -> None:
        first = ""
        with self._lock:
            for tracker in self._candidates(family, source):
                was = tracker.last_reply_ns
                if tracker.received(seq, now_ns):
                    if was is None:
                        first = next((c for c, t in self._targets.items() if t is tracker), "")
                    break
        callback = self.on_first_reply
        if first and callback is not None:
            callback(first)

    def _candidates(
        self,
        family: socket.AddressFamily,
        source: ipaddress.IPv4Address | ipaddress.IPv6Address,
    ) -> Iterable[EchoTracker]:
        return (t for t in self._targets.values() if t.family == family and t.address == source)
