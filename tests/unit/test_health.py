"""Health checker: packets, statistics, loss counting, and the checker loop over a fake wire.

Nothing here opens a real ICMP socket or sends a packet: the loop tests swap the socket
factory for an in-process fake.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import statistics
import struct
import time
from collections.abc import Callable
from typing import cast

import pytest

from wgcable.engine import health
from wgcable.engine.health import (
    AF_INET,
    AF_INET6,
    EchoTracker,
    HealthChecker,
    HealthResult,
    IcmpSocket,
    RttStats,
    build_echo_request,
    icmp_checksum,
    parse_echo_reply,
)

MS = 1_000_000  # ns
INTERVAL_NS = 1000 * MS

# --- checksum and packets ---------------------------------------------------------------------


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3: these bytes sum to 0xddf2, so the checksum is its complement.
    assert icmp_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_checksum_odd_length_pads_with_zero() -> None:
    assert icmp_checksum(b"\x01\x02\x03") == icmp_checksum(b"\x01\x02\x03\x00")


def test_echo_request_v4_matches_a_known_packet() -> None:
    # The echo request Windows' ping sends (id 1, seq 1, payload a..w a..i), as seen on
    # the wire: checksum 0x4d5a.
    payload = b"abcdefghijklmnopqrstuvwabcdefghi"
    packet = build_echo_request(AF_INET, 1, 1, payload)
    assert packet == bytes.fromhex("08004d5a00010001") + payload
    assert icmp_checksum(packet) == 0  # a correct packet sums to zero


def test_echo_request_v4_fields() -> None:
    packet = build_echo_request(AF_INET, 0x1234, 1, b"")
    assert packet == bytes.fromhex("0800e5ca12340001")


def test_echo_request_v6_leaves_checksum_to_the_kernel() -> None:
    packet = build_echo_request(AF_INET6, 0xBEEF, 0x0102, b"xy")
    assert packet == bytes.fromhex("80000000beef0102") + b"xy"


def test_echo_request_other_family_refused() -> None:
    with pytest.raises(ValueError, match="family"):
        build_echo_request(socket.AF_UNIX, 1, 1)


def _reply_v4(ident: int, seq: int, payload: bytes = b"data") -> bytes:
    unsummed = struct.pack("!BBHHH", 0, 0, 0, ident, seq) + payload
    return struct.pack("!BBHHH", 0, 0, icmp_checksum(unsummed), ident, seq) + payload


def _ipv4_header(proto: int = 1, ihl: int = 5) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 0, 0, 0, 64, proto, 0,
                       bytes([198, 18, 0, 2]), bytes([198, 18, 0, 1]))
    return head + b"\x00" * (ihl * 4 - 20)


def test_parse_v4_reply_without_and_with_ip_header() -> None:
    icmp = _reply_v4(0x4242, 7)
    assert parse_echo_reply(AF_INET, icmp) == (0x4242, 7, b"data")
    assert parse_echo_reply(AF_INET, _ipv4_header() + icmp, ip_header=True) == (0x4242, 7, b"data")
    # IP options (IHL 6) are skipped too.
    with_options = _ipv4_header(ihl=6) + icmp
    assert parse_echo_reply(AF_INET, with_options, ip_header=True) == (0x4242, 7, b"data")


def test_parse_v4_rejects_others() -> None:
    request = build_echo_request(AF_INET, 1, 1)
    assert parse_echo_reply(AF_INET, request) is None  # our own request, not a reply
    unreachable = bytes.fromhex("0301fcfe00000000")
    assert parse_echo_reply(AF_INET, unreachable) is None
    damaged = bytearray(_reply_v4(1, 1))
    damaged[-1] ^= 0xFF
    assert parse_echo_reply(AF_INET, bytes(damaged)) is None
    assert parse_echo_reply(AF_INET, b"\x00\x00\x00") is None
    udp = _ipv4_header(proto=17) + _reply_v4(1, 1)
    assert parse_echo_reply(AF_INET, udp, ip_header=True) is None
    assert parse_echo_reply(AF_INET, b"\x60" + b"\x00" * 27, ip_header=True) is None


def test_parse_v6_reply() -> None:
    reply = struct.pack("!BBHHH", 129, 0, 0xABCD, 9, 65535) + b"p"
    assert parse_echo_reply(AF_INET6, reply) == (9, 65535, b"p")
    # A v6 request, or a v4 reply type on the v6 socket, is not a reply.
    assert parse_echo_reply(AF_INET6, build_echo_request(AF_INET6, 9, 1)) is None
    assert parse_echo_reply(AF_INET6, _reply_v4(9, 1)) is None


def test_build_then_parse_round_trip_both_families() -> None:
    for family, reply_type in ((AF_INET, 0), (AF_INET6, 129)):
        request = bytearray(build_echo_request(family, 0x7777, 300, b"payload"))
        request[0] = reply_type  # what the remote sends back: same id, seq and payload
        request[2:4] = b"\x00\x00"
        request[2:4] = struct.pack("!H", icmp_checksum(bytes(request)))
        assert parse_echo_reply(family, bytes(request)) == (0x7777, 300, b"payload")


# --- statistics ---------------------------------------------------------------------------------


def test_stats_empty_is_none() -> None:
    assert RttStats().latency() is None


def test_stats_single_reply() -> None:
    s = RttStats()
    s.add(5 * MS)
    lat = s.latency()
    assert lat is not None
    assert lat.last == lat.min == lat.average == lat.max == pytest.approx(0.005)
    assert lat.std_dev == 0


def test_stats_follow_submariner_sample() -> None:
    # Submariner's pinger test sample (ns): mean 693424 and population std dev 205994
    # (its integers truncate; the sample std dev would be 217136).
    sample = [404351, 490406, 530333, 609556, 609650, 685106, 726265, 785707, 1048263, 1044609]
    s = RttStats(window=60)
    for rtt in sample:
        s.add(rtt)
    lat = s.latency()
    assert lat is not None
    assert lat.last == pytest.approx(1044609e-9)
    assert lat.min == pytest.approx(404351e-9)
    assert lat.max == pytest.approx(1048263e-9)
    assert int(lat.average * 1e9) == 693424
    assert int(lat.std_dev * 1e9) == 205994
    assert lat.std_dev == pytest.approx(statistics.pstdev(sample) / 1e9)


def test_stats_window_slides() -> None:
    s = RttStats(window=3)
    for rtt in (100 * MS, 1 * MS, 2 * MS, 3 * MS):
        s.add(rtt)
    lat = s.latency()
    assert lat is not None
    assert len(s) == 3
    assert lat.max == pytest.approx(0.003)  # the 100 ms reply fell out of the window
    assert lat.min == pytest.approx(0.001)
    assert lat.average == pytest.approx(0.002)
    assert lat.std_dev == pytest.approx(statistics.pstdev([1, 2, 3]) / 1000)


def test_stats_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window"):
        RttStats(window=0)


# --- losses ----------------------------------------------------------------------------------


def _tracker(max_losses: int = 2, ip: str = "198.18.0.2") -> EchoTracker:
    return EchoTracker(ip, window=60, max_losses=max_losses, reply_window_ns=2 * INTERVAL_NS)


def _send(t: EchoTracker, now: int) -> int:
    seq = t.next_seq()
    t.sent(seq, now)
    return seq


def test_losses_count_and_turn_unhealthy_after_max() -> None:
    t = _tracker(max_losses=2)
    now = 0
    results = []
    for _ in range(4):  # four echoes, none answered
        _send(t, now)
        results.append((t.consecutive_losses, t.healthy))
        now += INTERVAL_NS
    # An echo is lost when the next goes out unanswered; unhealthy once losses > max_losses.
    assert results == [(0, True), (1, True), (2, True), (3, False)]
    r = t.result(now)
    assert not r.healthy
    assert r.latency is None
    assert r.last_reply_age is None


def test_reply_recovers_and_keeps_statistics_through_losses() -> None:
    t = _tracker(max_losses=1)
    seq = _send(t, 0)
    assert t.received(seq, 3 * MS)
    for i in range(1, 4):
        _send(t, i * INTERVAL_NS)
    assert not t.healthy
    lat = t.result(4 * INTERVAL_NS).latency
    assert lat is not None  # losses leave the statistics alone (as Submariner's pinger)
    assert lat.last == pytest.approx(0.003)
    seq = _send(t, 4 * INTERVAL_NS)
    assert t.received(seq, 4 * INTERVAL_NS + 5 * MS)
    r = t.result(4 * INTERVAL_NS + 105 * MS)
    assert r.healthy
    assert r.consecutive_losses == 0
    assert r.latency is not None
    assert r.latency.last == pytest.approx(0.005)
    assert r.last_reply_age == pytest.approx(0.1)


def test_late_reply_within_two_intervals_counts() -> None:
    t = _tracker()
    first = _send(t, 0)
    _send(t, INTERVAL_NS)  # first is now counted lost
    assert t.consecutive_losses == 1
    assert t.received(first, 1500 * MS)  # 1.5 intervals: still counts
    assert t.consecutive_losses == 0
    lat = t.stats.latency()
    assert lat is not None
    assert lat.last == pytest.approx(1.5)


def test_too_late_duplicate_and_unknown_replies_ignored() -> None:
    t = _tracker()
    seq = _send(t, 0)
    assert not t.received(seq + 1, 1 * MS)  # never sent
    assert t.received(seq, 1 * MS)
    assert not t.received(seq, 2 * MS)  # duplicate
    late = _send(t, INTERVAL_NS)
    assert not t.received(late, INTERVAL_NS + 2 * INTERVAL_NS + 1)  # beyond 2x interval
    assert len(t.stats) == 1


def test_old_pending_echoes_are_forgotten() -> None:
    t = _tracker()
    seq = _send(t, 0)
    for i in range(1, 4):
        _send(t, i * INTERVAL_NS)
    # Dropped from the pending table once out of the reply window.
    assert not t.received(seq, 3 * INTERVAL_NS + 1)


def test_sequence_wraps_at_16_bits() -> None:
    t = _tracker()
    t._seq = 0xFFFF
    assert t.next_seq() == 0xFFFF
    assert t.next_seq() == 0


# --- the checker: targets, unavailability --------------------------------------------------------


def test_checker_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="interval"):
        HealthChecker(interval=0)
    with pytest.raises(ValueError, match="max_losses"):
        HealthChecker(max_losses=-1)
    with pytest.raises(ValueError, match="window"):
        HealthChecker(window=0)
    with pytest.raises(ValueError, match="more than one IPv4"):
        HealthChecker(source_ip=["198.18.0.1", "198.18.0.3"])


def test_set_targets_skips_empty_and_invalid_and_keeps_unchanged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = HealthChecker()
    with caplog.at_level(logging.WARNING, logger="wgcable.engine.health"):
        c.set_targets({"a": "198.18.0.2", "b": "", "c": "not-an-ip", "d": "fdce:18::2"})
        c.set_targets({"a": "198.18.0.2", "c": "not-an-ip", "d": "fdce:18::2"})
    assert c.targets() == {"a": "198.18.0.2", "d": "fdce:18::2"}
    assert len([r for r in caplog.records if "not-an-ip" in r.message]) == 1  # warned once
    before = c._targets["a"]
    c.set_targets({"a": "198.18.0.2", "d": "fdce:18::3"})
    assert c._targets["a"] is before  # unchanged: statistics kept
    r = c.result("d")
    assert r is not None
    assert r.ip == "fdce:18::3"
    assert c.result("c") is None
    assert c.result("nobody") is None
    # Not started: nothing sent yet, so nothing lost.
    assert c.result("a") == HealthResult(
        latency=None, consecutive_losses=0, healthy=True, last_reply_age=None, ip="198.18.0.2"
    )


def test_no_icmp_sockets_means_healthy_without_latency(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[socket.AddressFamily] = []

    def refuse(
        family: socket.AddressFamily, source_ip: str | None, netns: str | None
    ) -> IcmpSocket:
        calls.append(family)
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(health, "open_icmp_socket", refuse)
    monkeypatch.setattr(health, "_RETRY_OPEN_S", 0.0)  # retry every tick: still log once
    c = HealthChecker(interval=0.02, max_losses=0)
    c.set_targets({"a": "198.18.0.2"})
    with caplog.at_level(logging.WARNING, logger="wgcable.engine.health"), c:
        time.sleep(0.2)
        r = c.result("a")
    assert len(calls) > 2
    assert r == HealthResult(
        latency=None,
        consecutive_losses=0,
        healthy=True,
        last_reply_age=None,
        ip="198.18.0.2",
        available=False,
    )
    assert len([rec for rec in caplog.records if "unavailable" in rec.message]) == 1


# --- the checker loop over a fake wire -----------------------------------------------------------


class FakeWire:
    """Stands in for a raw ICMP socket: answers echo requests as ``behaviour`` says, through
    a real socketpair so that select() works. Nothing leaves the process."""

    def __init__(self, family: socket.AddressFamily, behaviour: dict[str, str]) -> None:
        self.family = family
        self.behaviour = behaviour
        self.sent: list[tuple[str, bytes]] = []
        self.queue: collections.deque[tuple[bytes, tuple[str, int]]] = collections.deque()
        self._r, self._w = socket.socketpair()
        self.closed = False

    def fileno(self) -> int:
        return self._r.fileno()

    def sendto(self, packet: bytes, addr: tuple[str, int]) -> int:
        ip = addr[0]
        self.sent.append((ip, packet))
        _, _, _, ident, seq = struct.unpack_from("!BBHHH", packet)
        what = self.behaviour.get(ip, "silent")
        if what == "unreachable":
            raise OSError(113, "No route to host")
        if what == "answer":
            self._reply(ident, seq, ip)
        elif what == "stranger":  # someone else's ping with the same seq
            self._reply(ident ^ 0xFFFF, seq, ip)
        elif what == "spoof":  # right id and seq, wrong source
            self._reply(ident, seq, "198.18.0.99" if self.family == AF_INET else "fdce:18::99")
        return len(packet)

    def _reply(self, ident: int, seq: int, src: str) -> None:
        if self.family == AF_INET:
            data = _ipv4_header() + _reply_v4(ident, seq)
        else:
            data = struct.pack("!BBHHH", 129, 0, 0, ident, seq)
        self.queue.append((data, (src, 0)))
        self._w.send(b"x")

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int]]:
        with contextlib.suppress(BlockingIOError):
            self._r.recv(1)  # the wake byte; the queue holds the packet
        if not self.queue:
            raise BlockingIOError
        return self.queue.popleft()

    def close(self) -> None:
        self.closed = True
        self._r.close()
        self._w.close()


def _fake_sockets(
    monkeypatch: pytest.MonkeyPatch, behaviour: dict[str, str]
) -> dict[socket.AddressFamily, FakeWire]:
    wires: dict[socket.AddressFamily, FakeWire] = {}

    def fake_open(family: socket.AddressFamily, source_ip: str | None,
                  netns: str | None) -> IcmpSocket:
        wire = FakeWire(family, behaviour)
        wire._r.setblocking(False)
        wires[family] = wire
        return IcmpSocket(cast(socket.socket, wire), family, raw=True)

    monkeypatch.setattr(health, "open_icmp_socket", fake_open)
    return wires


def _until(pred: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_loop_matches_by_id_seq_and_source(monkeypatch: pytest.MonkeyPatch) -> None:
    wires = _fake_sockets(monkeypatch, {
        "198.18.0.2": "answer",
        "fdce:18::2": "answer",
        "198.18.0.3": "stranger",
        "198.18.0.4": "spoof",
        "fdce:18::4": "spoof",
        "198.18.0.5": "unreachable",
    })
    c = HealthChecker(interval=0.02, max_losses=2)
    c.set_targets({
        "ok4": "198.18.0.2",
        "ok6": "fdce:18::2",
        "stranger": "198.18.0.3",
        "spoof4": "198.18.0.4",
        "spoof6": "fdce:18::4",
        "unreach": "198.18.0.5",
    })

    def settled() -> bool:
        results = c.results()
        bad = ("stranger", "spoof4", "spoof6", "unreach")
        return all(not results[k].healthy for k in bad) and all(
            results[k].latency is not None for k in ("ok4", "ok6"))

    with c:
        _until(settled)
        results = c.results()
    for cluster in ("ok4", "ok6"):
        r = results[cluster]
        assert r.healthy, cluster
        assert r.consecutive_losses == 0, cluster
        assert r.latency is not None, cluster
        assert 0 <= r.latency.average < 0.02, cluster
    for cluster in ("stranger", "spoof4", "spoof6", "unreach"):
        r = results[cluster]
        assert not r.healthy, cluster
        assert r.latency is None, cluster
    # One identifier for the whole checker, a sequence per target starting at 0.
    v4 = wires[AF_INET].sent
    idents = {struct.unpack_from("!H", p, 4)[0] for _, p in v4}
    assert idents == {c.ident}
    seqs = [struct.unpack_from("!H", p, 6)[0] for ip, p in v4 if ip == "198.18.0.2"]
    assert seqs[:3] == [0, 1, 2]
    # stop() closed the sockets.
    assert all(w.closed for w in wires.values())


def test_loop_closes_idle_family_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    wires = _fake_sockets(monkeypatch, {"198.18.0.2": "answer", "fdce:18::2": "answer"})
    c = HealthChecker(interval=0.02)
    c.set_targets({"a": "198.18.0.2", "b": "fdce:18::2"})
    with c:
        _until(lambda: AF_INET6 in wires and len(wires[AF_INET6].sent) > 0)
        c.set_targets({"a": "198.18.0.2"})
        _until(lambda: wires[AF_INET6].closed)
        assert wires[AF_INET6].closed  # a raw socket sees all ICMP: idle ones are closed
        assert not wires[AF_INET].closed


def test_stop_is_prompt_and_restartable(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_sockets(monkeypatch, {"198.18.0.2": "answer"})
    c = HealthChecker(interval=10.0)  # a long interval: stop must not wait for it
    c.set_targets({"a": "198.18.0.2"})
    c.start()
    _until(lambda: (r := c.result("a")) is not None and r.latency is not None)
    t0 = time.monotonic()
    c.stop()
    assert time.monotonic() - t0 < 1.0
    assert c._thread is None
    c.start()
    c.stop()
    c.stop()  # idempotent


def test_connected_a_new_target_is_pinged_at_once_and_its_first_reply_reported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16: a connection waits for its first health reply, so a new target is not left
    waiting for the next tick (10 s here), and the first reply is reported as it comes."""
    wires = _fake_sockets(monkeypatch, {"198.18.0.2": "answer", "198.18.0.3": "answer"})
    firsts: list[str] = []
    c = HealthChecker(interval=10.0)
    c.on_first_reply = firsts.append
    c.set_targets({"a": "198.18.0.2"})
    with c:
        _until(lambda: firsts == ["a"])  # the first tick is at the start
        c.set_targets({"a": "198.18.0.2", "b": "198.18.0.3"})
        _until(lambda: firsts == ["a", "b"])
        assert firsts == ["a", "b"]  # b's echo went out long before the next tick
        assert [ip for ip, _ in wires[AF_INET].sent] == ["198.18.0.2", "198.18.0.3"]
        r = c.result("b")
        assert r is not None
        assert r.last_reply_age is not None
