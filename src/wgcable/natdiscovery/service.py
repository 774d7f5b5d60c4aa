"""The NAT discovery service: two UDP sockets on one port and one thread that answers
requests and probes the targets.

One IPv4 and one IPv6 socket (``IPV6_V6ONLY``: no v4-mapped addresses to compare) share
the port; each target address is probed from the socket of its own family. The thread
waits in a selector on both sockets and a wake-up socket pair, with a timeout that is the
earliest probe deadline. Every datagram is judged by the pure modules beside this one
(``responder``, ``requester``); this module only moves bytes, keeps the tables and calls
back. Nothing escapes the thread: each round catches what goes wrong, logs it in the safe
form, and goes on.

Hostile input: datagrams over ``max_datagram`` bytes are dropped unread; what does not
decode is dropped (Submariner logs it and answers nothing either); answers go out at most
``Limits.rate`` a second per source address and ``Limits.total_rate`` in all, so a forged
source gets no flood from us; warnings about hostile datagrams are rate-limited too and
show untrusted text only through ``wgcable.safetext``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wgcable.natdiscovery.messages import (
    KNOWN_VERSIONS,
    MAX_DATAGRAM,
    VERSION,
    IPPort,
    Message,
    MessageError,
    Request,
    Response,
    ResponseType,
    decode,
    encode,
)
from wgcable.natdiscovery.ratelimit import SourceLimiter, TokenBucket
from wgcable.natdiscovery.requester import Fallback, ProbeSend, TargetProbe, Verdict
from wgcable.natdiscovery.responder import IPAddress, LocalIdentity, answer, parse_ip
from wgcable.natdiscovery.types import HOW_DISCOVERED, HOW_STATIC, Choice, Target, Timings
from wgcable.safetext import oneline, safe

log = logging.getLogger(__name__)

_MAX_WAIT = 5.0  # seconds: the thread looks at the clock at least this often
_READS_PER_ROUND = 64  # datagrams read from one socket before the timers get a turn
_WILDCARDS = ("", "0.0.0.0", "::")  # noqa: S104 (recognised, not bound)


@dataclass(frozen=True)
class Limits:
    """Answers per second per source IP and in all; warnings about hostile datagrams."""

    rate: float = 10.0  # a Submariner peer asks about 1/s; several gateways may share a NAT IP
    burst: float = 20.0
    total_rate: float = 500.0
    total_burst: float = 1000.0
    max_sources: int = 4096
    warnings_per_s: float = 1.0
    warnings_burst: float = 10.0


class NATDiscovery:
    """Answers NAT discovery requests for the local gateway and finds, for each remote
    gateway, the address to use and whether NAT is on the way (see ``requester``).

    ``on_change`` is called from the service thread when a choice appears or changes.
    ``static_rule(target)`` gives (ip, nat) for a target that discovery cannot decide.
    ``bind_v4``/``bind_v6`` are the addresses to listen on; None leaves that family out.
    """

    def __init__(
        self,
        *,
        cluster_id: str,
        endpoint_id: str,
        port: int,
        local_ips: Sequence[str],
        on_change: Callable[[], None],
        static_rule: Callable[[Target], tuple[str, bool]],
        clock: Callable[[], float] = time.monotonic,
        timings: Timings | None = None,
        limits: Limits | None = None,
        bind_v4: str | None = "0.0.0.0",  # noqa: S104 (the gateway listens on all addresses)
        bind_v6: str | None = "::",
        max_datagram: int = MAX_DATAGRAM,
    ) -> None:
        if bind_v4 is None and bind_v6 is None:
            raise ValueError("NAT discovery needs an IPv4 or an IPv6 socket")
        self._on_change = on_change
        self._static_rule = static_rule
        self._clock = clock
        self._timings = timings or Timings()
        self._limits = limits or Limits()
        self._bind = {4: bind_v4, 6: bind_v6}
        self._max_datagram = max_datagram
        self._port = port
        self._lock = threading.Lock()
        self._local = LocalIdentity.of(cluster_id, endpoint_id, local_ips)
        self._targets: dict[str, Target] = {}
        self._probes: dict[str, TargetProbe] = {}
        self._choices: dict[str, Choice] = {}
        self._versions = frozenset(v for v, host in self._bind.items() if host is not None)
        self._changed = False  # a choice changed and on_change is owed
        self._counts: Counter[str] = Counter()
        now = clock()
        self._answers = SourceLimiter(
            rate=self._limits.rate, burst=self._limits.burst, total_rate=self._limits.total_rate,
            total_burst=self._limits.total_burst, max_sources=self._limits.max_sources, now=now)
        self._warnings = TokenBucket(self._limits.warnings_per_s, self._limits.warnings_burst, now)
        self._sockets: dict[int, socket.socket] = {}
        self._selector: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    # --- the API ---------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the sockets on ``port`` (0: any free port, the same for both families) and
        start the thread. Raises OSError when the port cannot be bound."""
        with self._lock:
            if self._thread is not None or self._closed:
                raise RuntimeError("NAT discovery was started already, or closed")
            self._open_sockets()
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, selectors.EVENT_READ)
            for sock in self._sockets.values():
                self._selector.register(sock, selectors.EVENT_READ)
            # A family without a socket cannot be probed: targets set before start that
            # counted on it are probed again without it.
            versions = frozenset(self._sockets)
            if versions != self._versions:
                self._versions = versions
                now = self._clock()
                for cluster, target in self._targets.items():
                    self._probes[cluster] = self._new_probe(target, now)
            self._thread = threading.Thread(target=self._run, name="natdiscovery", daemon=True)
            self._thread.start()
        log.info("NAT discovery listening on UDP port %d (%s)", self._port,
                 ", ".join(f"IPv{v}" for v in sorted(self._sockets)))
        self._collect()

    @property
    def port(self) -> int:
        """The bound port (before ``start``: the port asked for)."""
        return self._port

    def set_targets(self, targets: Mapping[str, Target]) -> None:
        """The remote gateways, by cluster ID: a new one is probed, a changed one (any
        field) is probed again and has no choice until then, a missing one is forgotten."""
        new: list[str] = []
        with self._lock:
            for cluster in [c for c in self._targets if c not in targets]:
                del self._targets[cluster], self._probes[cluster]
                self._choices.pop(cluster, None)
            now = self._clock()
            for cluster, target in targets.items():
                if self._targets.get(cluster) == target:
                    continue
                self._targets[cluster] = target
                self._probes[cluster] = self._new_probe(target, now)
                self._choices.pop(cluster, None)
                new.append(cluster)
        if new:
            self._collect(new)
            self._wake()

    def choice(self, cluster_id: str) -> Choice | None:
        """The choice for a cluster; None while its first discovery is running (a reprobe
        keeps the previous choice until the new one is made)."""
        with self._lock:
            return self._choices.get(cluster_id)

    def reprobe(self, cluster_id: str) -> None:
        """Discover again (the chosen path stopped handshaking). Unknown clusters are
        ignored. The current choice stays until the new one replaces it."""
        with self._lock:
            target = self._targets.get(cluster_id)
            if target is None:
                return
            self._probes[cluster_id] = self._new_probe(target, self._clock())
        self._collect([cluster_id])
        self._wake()

    def set_local(self, cluster_id: str, endpoint_id: str, local_ips: Sequence[str]) -> None:
        """Our own identity and addresses changed (the local Endpoint did). Answers use them
        at once; probes under way still accept answers addressed to the old identity."""
        with self._lock:
            self._local = LocalIdentity.of(cluster_id, endpoint_id, local_ips)

    def counters(self) -> dict[str, int]:
        """What the service has seen and done, by name (for tests, logs and metrics)."""
        with self._lock:
            return dict(self._counts)

    def close(self) -> None:
        """Stop the thread and close the sockets. Safe to call more than once, and from
        ``on_change``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        if self._selector is not None:
            self._selector.close()
        for sock in (*self._sockets.values(), self._wake_r, self._wake_w):
            sock.close()

    # --- sockets ---------------------------------------------------------------------------

    def _open_sockets(self) -> None:
        asked = self._port
        for _ in range(8):  # port 0: v4 picks, and v6 may find that port taken
            try:
                self._bind_both(asked)
                return
            except OSError as e:
                for sock in self._sockets.values():
                    sock.close()
                self._sockets.clear()
                if not (asked == 0 and e.errno == errno.EADDRINUSE):
                    raise
        raise OSError(errno.EADDRINUSE, "NAT discovery found no free port for both families")

    def _bind_both(self, asked: int) -> None:
        port = asked
        for version, family in ((4, socket.AF_INET), (6, socket.AF_INET6)):
            host = self._bind[version]
            if host is None:
                continue
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
            except OSError as e:  # the family is off in this kernel
                log.warning("NAT discovery: no IPv%d socket (%s): IPv%d targets are not "
                            "probed", version, e.strerror, version)
                continue
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, port))
            except OSError as e:
                sock.close()
                if version == 6 and e.errno == errno.EADDRNOTAVAIL and self._sockets:
                    log.warning("NAT discovery: cannot bind IPv6 (%s): IPv6 targets are not "
                                "probed", e.strerror)  # IPv6 is off on this host
                    continue
                raise OSError(e.errno, f"NAT discovery cannot bind UDP port {port} "
                                       f"(IPv{version}): {e.strerror}") from None
            sock.setblocking(False)
            port = sock.getsockname()[1]
            self._sockets[version] = sock
        if not self._sockets:
            raise OSError(errno.EAFNOSUPPORT, "NAT discovery could open no UDP socket")
        self._port = port

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
            self._wake_w.send(b"\0")

    # --- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._selector is not None
        while not self._stop.is_set():
            try:
                self._round(self._selector)
            except Exception as e:  # never let the thread die: log, breathe, go on
                self._count("errors")
                log.error("NAT discovery: %s: %s", type(e).__name__, oneline(safe(str(e), 200)),
                          exc_info=log.isEnabledFor(logging.DEBUG))
                self._stop.wait(0.1)

    def _round(self, selector: selectors.BaseSelector) -> None:
        for key, _ in selector.select(self._wait()):
            if key.fileobj is self._wake_r:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
            elif isinstance(key.fileobj, socket.socket):
                self._receive(key.fileobj)
        if self._stop.is_set():
            return
        self._send_probes()
        self._collect()
        self._notify()

    def _wait(self) -> float:
        with self._lock:
            deadlines = [d for p in self._probes.values() if (d := p.next_deadline()) is not None]
            if self._changed:
                return 0.0
        if not deadlines:
            return _MAX_WAIT
        return min(max(min(deadlines) - self._clock(), 0.0), _MAX_WAIT)

    def _notify(self) -> None:
        with self._lock:
            changed, self._changed = self._changed, False
        if changed:
            try:
                self._on_change()
            except Exception as e:
                log.error("NAT discovery: on_change failed: %s", type(e).__name__,
                          exc_info=True)

    # --- receiving -------------------------------------------------------------------------

    def _receive(self, sock: socket.socket) -> None:
        for _ in range(_READS_PER_ROUND):
            try:
                # One byte more than allowed tells an oversized datagram from a full one.
                data, addr = sock.recvfrom(self._max_datagram + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. an ICMP error queued on the socket: not fatal
                self._count("receive_errors")
                log.debug("NAT discovery: receive: %s", e.strerror)
                return
            self._handle(sock, data, addr)

    def _handle(self, sock: socket.socket, data: bytes, addr: Any) -> None:
        self._count("received")
        host, port = str(addr[0]), int(addr[1])
        ip = parse_ip(host.split("%", 1)[0])  # a link-local source carries its zone
        if ip is None:
            self._count("bad_source")
            return
        if len(data) > self._max_datagram:
            self._count("oversize")
            self._warn("dropped a datagram over %d bytes from %s", self._max_datagram, ip)
            return
        try:
            msg = decode(data)
        except MessageError as e:
            self._count("undecodable")
            self._warn("dropped a datagram from %s: %s", ip, e)
            return
        if msg.version not in KNOWN_VERSIONS:
            self._count("unknown_version")
            self._warn("dropped a message of version %s from %s", safe(msg.version), ip)
            return
        if isinstance(msg.body, Request):
            self._answer(sock, msg, ip, port, addr)
        else:
            self._judge(msg.body, ip, port)

    def _answer(self, sock: socket.socket, msg: Message, ip: IPAddress, port: int,
                addr: tuple[object, ...]) -> None:
        if port == 0:  # nothing can be sent there
            self._count("bad_source")
            return
        if not self._answers.allow(ip, self._clock()):
            self._count("rate_limited")
            return
        with self._lock:
            local = self._local
        response = answer(msg, (ip, port), local)
        if response is None:
            return
        self._count(f"answered_{response.response.name.lower()}")
        if response.response not in (ResponseType.OK, ResponseType.NAT_DETECTED):
            request = msg.body
            assert isinstance(request, Request)
            receiver = request.receiver
            self._warn("request from %s for cluster %s, cable %s: answered %s", ip,
                       safe(receiver.cluster_id if receiver else None),
                       safe(receiver.endpoint_id if receiver else None), response.response.name)
        self._sendto(sock, encode(Message(VERSION, response)), addr)

    def _judge(self, response: Response, ip: IPAddress, port: int) -> None:
        # The request number finds the probe: it is the one thing a forger cannot know.
        cluster = response.sender.cluster_id if response.sender else None
        with self._lock:
            number = response.request_number
            probe = next((p for p in self._probes.values() if p.expects(number)), None)
            verdict = (probe.on_response(response, (ip, port), self._clock()) if probe
                       else Verdict.UNKNOWN_NUMBER)
        self._count(f"response_{verdict.name.lower()}")
        if verdict not in (Verdict.ACCEPTED, Verdict.HELD, Verdict.DECIDED):
            self._warn("ignored a response from %s (sender cluster %s): %s", ip, safe(cluster),
                       verdict.value)

    # --- probing ---------------------------------------------------------------------------

    def _send_probes(self) -> None:
        with self._lock:
            local = self._local
            now = self._clock()
            sends = [s for p in self._probes.values() for s in p.poll(now, local.details)]
        for send in sends:
            self._probe(send)

    def _probe(self, send: ProbeSend) -> None:
        sock = self._sockets.get(send.address.version)
        if sock is None:  # not reached: the probe was told which families we have
            return
        request = Request(
            request_number=send.request_number,
            sender=send.sender,
            receiver=send.receiver,
            using_src=IPPort(self._source_ip(sock, send), self._port),
            using_dst=IPPort(str(send.address), send.port),
        )
        self._count("probes_sent")
        self._sendto(sock, encode(Message(VERSION, request)), (str(send.address), send.port))

    def _source_ip(self, sock: socket.socket, send: ProbeSend) -> str:
        """The address our request leaves from: the bound one, or the kernel's choice of
        source for this destination (a connected UDP socket sends nothing). "" when unknown:
        the responder then does not compare it (as Submariner)."""
        bound = str(sock.getsockname()[0])
        if bound not in _WILDCARDS:
            return bound
        try:
            with socket.socket(sock.family, socket.SOCK_DGRAM) as probe:
                probe.connect((str(send.address), send.port))
                return str(probe.getsockname()[0]).split("%", 1)[0]
        except OSError:
            return ""

    def _sendto(self, sock: socket.socket, data: bytes, addr: tuple[object, ...]) -> None:
        try:
            sock.sendto(data, addr)
        except OSError as e:  # unreachable, no route, buffer full: the next probe may pass
            self._count("send_errors")
            log.debug("NAT discovery: send to %s: %s", safe(str(addr[0])), e.strerror)

    # --- choices ---------------------------------------------------------------------------

    def _new_probe(self, target: Target, now: float) -> TargetProbe:
        return TargetProbe(target, now, timings=self._timings, versions=self._versions)

    def _collect(self, only: Sequence[str] | None = None) -> None:
        """Turn new decisions into choices (of ``only`` these clusters: a caller's change
        must not cost a look at every remote). The static rule is the caller's code: it runs
        outside our lock, and its result counts only if the probe is still the current one."""
        with self._lock:
            probes = (self._probes.items() if only is None else
                      [(c, p) for c in only if (p := self._probes.get(c)) is not None])
            decided = [(c, p, d) for c, p in probes if (d := p.take_decision()) is not None]
        made: list[tuple[str, TargetProbe, Choice]] = []
        for cluster, probe, decision in decided:
            choice = decision if isinstance(decision, Choice) else self._static(probe, decision)
            if choice is not None:
                made.append((cluster, probe, choice))
        if not made:
            return
        with self._lock:
            for cluster, probe, choice in made:
                if self._probes.get(cluster) is not probe:
                    continue
                before = self._choices.get(cluster)
                self._choices[cluster] = choice
                # The caller acts on discovered paths only (it uses the static rule until
                # then): a static choice is owed a call only when it replaces a discovered
                # one. A broker of thousands of remotes without a discovery port costs
                # no call and no line at info level.
                if choice.how == HOW_DISCOVERED or (
                        before is not None and before.how == HOW_DISCOVERED):
                    self._changed = True
                    level = logging.INFO
                else:
                    level = logging.DEBUG
                log.log(level, "NAT discovery: cluster %s: %s %s, NAT %s (%s)", safe(cluster),
                        choice.how, safe(choice.use_ip), "on" if choice.use_nat else "off",
                        choice.detail)
        self._wake()  # on_change is the thread's to call

    def _static(self, probe: TargetProbe, fallback: Fallback) -> Choice | None:
        try:
            ip, nat = self._static_rule(probe.target)
        except Exception as e:
            log.error("NAT discovery: the static rule failed for cluster %s: %s",
                      safe(probe.target.cluster_id), type(e).__name__, exc_info=True)
            return None
        return Choice(ip, bool(nat), HOW_STATIC, fallback.detail)

    # --- bookkeeping -----------------------------------------------------------------------

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _warn(self, fmt: str, *args: object) -> None:
        """A warning about what a remote sent, at most ``Limits.warnings_per_s`` a second.
        Arguments are parsed addresses, numbers or ``safe()`` texts."""
        if self._warnings.take(self._clock()):
            log.warning("NAT discovery: " + fmt, *args)
        else:
            self._count("warnings_suppressed")
