"""The NAT discovery service over real UDP sockets on loopback (127.0.0.1 and ::1 only):
two instances probing each other, unreachable addresses, the static fallback, and hostile
datagrams from a plain socket.

An "unreachable" address is a socket of the test's own (a hole) bound to that loopback
address and the target's port: it swallows the probes and answers nothing, and what it
swallowed shows that the address was probed. Timings are the defaults, except the
fallback's timeout, which is shortened.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_engine import wait_for

from wgcable.natdiscovery import (
    HOW_DISCOVERED,
    HOW_STATIC,
    Choice,
    Limits,
    NATDiscovery,
    Target,
    Timings,
)
from wgcable.natdiscovery import service as service_module
from wgcable.natdiscovery.messages import (
    EndpointDetails,
    IPPort,
    Message,
    Request,
    Response,
    ResponseType,
    decode,
    encode,
)

V4, V6 = "127.0.0.1", "::1"



def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind((V6, 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) here")


class Node:
    """A NATDiscovery on loopback with a record of its callbacks."""

    def __init__(self, cluster: str, *, v4: bool = True, v6: bool = False, port: int = 0,
                 local_ips: tuple[str, ...] = (V4, V6), timings: Timings | None = None,
                 limits: Limits | None = None, max_datagram: int | None = None,
                 on_change: Callable[[], None] | None = None,
                 static_rule: Callable[[Target], tuple[str, bool]] | None = None) -> None:
        self.cluster = cluster
        self.cable = f"submariner-cable-{cluster}"
        self.changes = 0
        self.static_calls: list[Target] = []
        self._on_change = on_change
        self._static_rule = static_rule
        extra: dict[str, Any] = {}
        if max_datagram is not None:
            extra["max_datagram"] = max_datagram
        self.nd = NATDiscovery(
            cluster_id=cluster, endpoint_id=self.cable, port=port, local_ips=local_ips,
            on_change=self._changed, static_rule=self._static, timings=timings, limits=limits,
            bind_v4=V4 if v4 else None, bind_v6=V6 if v6 else None, **extra)

    def _changed(self) -> None:
        self.changes += 1
        if self._on_change is not None:
            self._on_change()

    def _static(self, target: Target) -> tuple[str, bool]:
        self.static_calls.append(target)
        if self._static_rule is not None:
            return self._static_rule(target)
        if target.nat_enabled and target.public_ip:
            return target.public_ip, True
        return target.private_ip, False

    def target(self, private: str, public: str, *, port: int | None = None,
               cable: str | None = None) -> Target:
        """This node as another node's target."""
        return Target(self.cluster, cable or self.cable, private, public,
                      self.nd.port if port is None else port, nat_enabled=True)

    def count(self, name: str) -> int:
        return self.nd.counters().get(name, 0)


@pytest.fixture
def closing() -> Iterator[Callable[[Any], Any]]:
    """Registers nodes and sockets to close at the end of the test."""
    things: list[Any] = []

    def add(thing: Any) -> Any:
        things.append(thing)
        return thing

    yield add
    for thing in reversed(things):
        (thing.nd if isinstance(thing, Node) else thing).close()  # NATDiscovery or socket


def _hole(host: str, port: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _started(closing: Callable[[Any], Any], cluster: str, *, hole_on: str | None = None,
             **kw: Any) -> tuple[Node, socket.socket | None]:
    """A started node; with ``hole_on``, also a hole on that loopback address and the node's
    port (the node is made anew if that port is taken there)."""
    for _ in range(10):
        node = Node(cluster, **kw)
        node.nd.start()
        if hole_on is None:
            return closing(node), None
        try:
            return closing(node), closing(_hole(hole_on, node.nd.port))
        except OSError:
            node.nd.close()
    raise AssertionError("no port free on both loopback addresses")


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


def _drain_at_least(sock: socket.socket, n: int, timeout: float = 5.0) -> list[bytes]:
    """What arrived, once ``n`` datagrams have (or ``timeout`` passed): the service counts
    an answer before its datagram lands here, and under load the gap is seen."""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        out += _drain(sock)
        if len(out) >= n or time.monotonic() > deadline:
            return out
        time.sleep(0.005)


def _assert_safe_logs(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        text = record.getMessage()
        assert len(text) < 600, text[:200]
        assert all(0x20 <= ord(ch) < 0x7F for ch in text), repr(text[:200])


# --- discovery between two instances -----------------------------------------------------------


def test_private_discovered_when_the_public_address_is_unreachable(
        closing: Callable[[Any], Any]) -> None:
    a, _ = _started(closing, "a", v6=True)
    b, hole6 = _started(closing, "b", hole_on=V6)  # b has no IPv6 socket: [::1]:port is a hole
    assert hole6 is not None
    t0 = time.monotonic()
    a.nd.set_targets({"b": b.target(private=V4, public=V6)})
    wait_for(lambda: a.nd.choice("b") is not None, 3.0, "a choice")
    assert time.monotonic() - t0 < 3.0
    choice = a.nd.choice("b")
    assert choice is not None
    assert (choice.use_ip, choice.use_nat, choice.how) == (V4, False, HOW_DISCOVERED)
    assert choice.detail.startswith(f"private {V4} answered in ")
    wait_for(lambda: a.changes == 1, 2.0, "on_change")  # called just after the choice is stored
    # The public address was probed too: the hole got a request for b.
    request = decode(_drain(hole6)[0]).body
    assert isinstance(request, Request)
    assert request.receiver == EndpointDetails("b", b.cable + "-v6")
    assert request.using_dst == IPPort(V6, b.nd.port)


def test_public_discovered_when_the_private_address_is_unreachable(
        closing: Callable[[Any], Any]) -> None:
    a, _ = _started(closing, "a", v6=True)
    # b's own addresses do not include the public one: NAT in front of b.
    b, hole6 = _started(closing, "b", hole_on=V6, local_ips=(V6,))
    assert hole6 is not None
    t0 = time.monotonic()
    a.nd.set_targets({"b": b.target(private=V6, public=V4)})
    wait_for(lambda: a.nd.choice("b") is not None, 3.0, "a choice")
    took = time.monotonic() - t0
    assert 0.9 < took < 3.0  # held for the 1 s private window, no longer
    assert a.nd.choice("b") == Choice(
        V4, True, HOW_DISCOVERED, a.nd.choice("b").detail)  # type: ignore[union-attr]
    assert f"private {V6} did not answer within 1 s" in a.nd.choice("b").detail  # type: ignore[union-attr]
    assert len(_drain(hole6)) >= 2  # the private address was probed, and probed again
    assert b.count("answered_nat_detected") >= 1


def test_static_rule_after_the_timeout_when_nothing_answers(
        closing: Callable[[Any], Any]) -> None:
    a, _ = _started(closing, "a", v6=True, timings=Timings(timeout=0.6))
    hole4 = closing(_hole(V4))
    port = hole4.getsockname()[1]
    try:
        hole6 = closing(_hole(V6, port))
    except OSError:
        pytest.skip("the port of the IPv4 hole is taken on ::1")
    t0 = time.monotonic()
    a.nd.set_targets({"b": Target("b", "cable-b", V6, V4, port, nat_enabled=True)})
    wait_for(lambda: a.nd.choice("b") is not None, 3.0, "a choice")
    assert time.monotonic() - t0 >= 0.6
    assert a.nd.choice("b") == Choice(V4, True, HOW_STATIC, "no answer in 0.6 s")
    assert [t.cluster_id for t in a.static_calls] == ["b"]
    assert _drain(hole4)
    assert _drain(hole6)


def test_ipv6_loopback(closing: Callable[[Any], Any]) -> None:
    a, _ = _started(closing, "a", v4=False, v6=True)
    b, _ = _started(closing, "b", v4=False, v6=True)
    a.nd.set_targets({"b": b.target(private=V6, public="")})
    wait_for(lambda: a.nd.choice("b") is not None, 3.0, "a choice")
    choice = a.nd.choice("b")
    assert choice is not None
    assert (choice.use_ip, choice.use_nat, choice.how) == (V6, False, HOW_DISCOVERED)
    assert b.count("answered_ok") >= 1


def test_two_instances_probe_each_other(closing: Callable[[Any], Any]) -> None:
    a, _ = _started(closing, "a")
    b, _ = _started(closing, "b")
    a.nd.set_targets({"b": b.target(private=V4, public="")})
    b.nd.set_targets({"a": a.target(private=V4, public="")})
    wait_for(lambda: a.nd.choice("b") is not None and b.nd.choice("a") is not None, 3.0)
    for node, other in ((a, "b"), (b, "a")):
        choice = node.nd.choice(other)
        assert choice is not None
        assert (choice.use_ip, choice.how) == (V4, HOW_DISCOVERED)


def test_a_remote_without_a_discovery_port_is_not_probed(closing: Callable[[Any], Any]) -> None:
    a, _ = _started(closing, "a")
    a.nd.set_targets({"b": Target("b", "cable-b", "10.1.0.1", "198.51.100.1", 0, False)})
    # Decided at once (no thread round needed), and nothing was sent anywhere.
    assert a.nd.choice("b") == Choice("10.1.0.1", False, HOW_STATIC,
                                      "no discovery port published")
    # The caller already uses the static rule: no call is owed (a broker of thousands of
    # such remotes must not cost a plan each).
    time.sleep(0.3)
    assert a.changes == 0
    assert a.count("probes_sent") == 0


def test_reprobe_keeps_the_choice_until_the_new_one(closing: Callable[[Any], Any]) -> None:
    a, _ = _started(closing, "a")
    b, _ = _started(closing, "b")
    a.nd.set_targets({"b": b.target(private=V4, public="")})
    wait_for(lambda: a.changes == 1, 3.0, "the first choice")
    first = a.nd.choice("b")
    sent = a.count("probes_sent")
    a.nd.reprobe("b")
    assert a.nd.choice("b") == first  # still there while probing again
    wait_for(lambda: a.changes == 2, 3.0, "the second choice")
    assert a.count("probes_sent") > sent
    second = a.nd.choice("b")
    assert second is not None
    assert second.use_ip == V4
    a.nd.reprobe("nobody")  # unknown: ignored


def test_changed_and_removed_targets(closing: Callable[[Any], Any]) -> None:
    a, _ = _started(closing, "a")
    b, _ = _started(closing, "b")
    c, _ = _started(closing, "c")
    a.nd.set_targets({"b": b.target(private=V4, public="")})
    wait_for(lambda: a.nd.choice("b") is not None, 3.0)
    a.nd.set_targets({"b": b.target(private=V4, public="")})  # the same: nothing happens
    assert a.nd.choice("b") is not None
    # b's cluster now answers from another gateway (c's socket, under b's name).
    moved = Target("b", c.cable, V4, "", c.nd.port, True)
    c.nd.set_local("b", c.cable, [V4])
    a.nd.set_targets({"b": moved})
    assert a.nd.choice("b") is None  # the old choice was for another address
    wait_for(lambda: a.nd.choice("b") is not None, 3.0)
    assert c.count("answered_ok") >= 1
    a.nd.set_targets({})
    assert a.nd.choice("b") is None


def test_set_local_changes_what_we_answer_to(closing: Callable[[Any], Any]) -> None:
    a, _ = _started(closing, "a", timings=Timings(timeout=0.5))
    b, _ = _started(closing, "b")
    b.nd.set_local("b", "cable-b-renamed", [V4])
    a.nd.set_targets({"b": b.target(private=V4, public="")})  # the old cable name
    wait_for(lambda: a.count("response_refused") >= 1, 3.0, "UNKNOWN_DST_ENDPOINT")
    assert b.count("answered_unknown_dst_endpoint") >= 1
    assert a.nd.choice("b") is None
    # Without another answer, the fallback says what the remote said.
    wait_for(lambda: a.nd.choice("b") is not None, 3.0)
    assert a.nd.choice("b") == Choice(
        V4, False, HOW_STATIC, "no answer in 0.5 s (the remote answered UNKNOWN_DST_ENDPOINT)")
    a.nd.set_targets({"b": b.target(private=V4, public="", cable="cable-b-renamed")})
    wait_for(lambda: a.nd.choice("b") is not None, 3.0)
    assert a.nd.choice("b").how == HOW_DISCOVERED  # type: ignore[union-attr]


def test_start_twice_is_refused_and_close_is_idempotent(closing: Callable[[Any], Any]) -> None:
    a, _ = _started(closing, "a", v6=True)
    assert a.nd.port != 0
    with pytest.raises(RuntimeError):
        a.nd.start()
    a.nd.close()
    a.nd.close()


def test_default_binding_is_one_port_for_both_families_v6_only(
        closing: Callable[[Any], Any]) -> None:
    # All addresses, as a gateway listens (nothing is sent here). Without IPV6_V6ONLY the
    # IPv6 wildcard would take IPv4 as well, and its bind would fail on the IPv4 socket's port.
    node = closing(NATDiscovery(
        cluster_id="a", endpoint_id="cable-a", port=0, local_ips=[], on_change=lambda: None,
        static_rule=lambda t: ("", False)))
    node.start()
    sockets = node._sockets
    assert sorted(sockets) == [4, 6]
    assert sockets[4].getsockname()[1] == sockets[6].getsockname()[1] == node.port
    assert sockets[6].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1


def test_a_port_in_use_is_a_clear_error(closing: Callable[[Any], Any]) -> None:
    taken = closing(_hole(V4))
    node = Node("a", port=taken.getsockname()[1])
    with pytest.raises(OSError, match="NAT discovery cannot bind UDP port"):
        node.nd.start()
    node.nd.close()


def test_close_from_on_change(closing: Callable[[Any], Any]) -> None:
    holder: list[Node] = []
    a, _ = _started(closing, "a", on_change=lambda: holder[0].nd.close())
    b, _ = _started(closing, "b")
    holder.append(a)
    a.nd.set_targets({"b": b.target(private=V4, public="")})
    wait_for(lambda: a.changes == 1, 2.0)
    thread = a.nd._thread
    assert thread is not None
    thread.join(2.0)
    assert not thread.is_alive()


# --- hostile datagrams and callbacks -----------------------------------------------------------


def _client(closing: Callable[[Any], Any]) -> socket.socket:
    sock = closing(_hole(V4))
    assert isinstance(sock, socket.socket)
    return sock


def _request(receiver: EndpointDetails, *, version: int = 1, number: int = 42,
             using_dst: IPPort | None = None) -> bytes:
    return encode(Message(version, Request(
        number, EndpointDetails("evil", "cable-evil"), receiver, IPPort(V4, 1), using_dst)))


def test_hostile_oversized_datagram_is_dropped_unanswered(
        closing: Callable[[Any], Any], caplog: pytest.LogCaptureFixture) -> None:
    b, _ = _started(closing, "b")
    client = _client(closing)
    request = _request(EndpointDetails("b", b.cable), using_dst=IPPort(V4, 1))
    client.sendto(request + b"\x00" * (1025 - len(request)), (V4, b.nd.port))
    wait_for(lambda: b.count("oversize") == 1, 2.0)
    assert _drain(client) == []
    client.sendto(request, (V4, b.nd.port))  # the same request within the bound is answered
    wait_for(lambda: b.count("answered_nat_detected") == 1, 2.0)
    _assert_safe_logs(caplog)


def test_hostile_garbage_is_dropped_unanswered(closing: Callable[[Any], Any]) -> None:
    b, _ = _started(closing, "b")
    client = _client(closing)
    for junk in (b"\xff" * 20, b"", b"\x12\x05abc"):
        client.sendto(junk, (V4, b.nd.port))
    wait_for(lambda: b.count("undecodable") == 3, 2.0)
    assert _drain(client) == []


def test_hostile_wrong_version_is_dropped_unanswered(closing: Callable[[Any], Any]) -> None:
    b, _ = _started(closing, "b")
    client = _client(closing)
    client.sendto(_request(EndpointDetails("b", b.cable), version=2), (V4, b.nd.port))
    wait_for(lambda: b.count("unknown_version") == 1, 2.0)
    assert _drain(client) == []


def test_hostile_malformed_request_gets_malformed_at_a_limited_rate(
        closing: Callable[[Any], Any], caplog: pytest.LogCaptureFixture) -> None:
    limits = Limits(rate=0.001, burst=3)
    b, _ = _started(closing, "b", limits=limits)
    client = _client(closing)
    malformed = _request(EndpointDetails("b", b.cable))  # no using_dst
    for batch in range(10):  # in batches: a full socket buffer would drop some
        for _ in range(10):
            client.sendto(malformed, (V4, b.nd.port))
        wait_for(lambda n=batch: b.count("received") == 10 * (n + 1), 2.0)
    wait_for(lambda: b.count("rate_limited") == 97, 3.0)
    replies = [decode(r).body for r in _drain_at_least(client, 3)]
    assert len(replies) == 3
    reply = replies[0]
    assert isinstance(reply, Response)
    assert reply.response is ResponseType.MALFORMED
    assert reply.request_number == 42
    assert reply.received_src == IPPort(V4, client.getsockname()[1])
    assert len(caplog.records) < 20  # warnings are rate-limited too
    _assert_safe_logs(caplog)


def test_hostile_control_characters_never_reach_the_logs_raw(
        closing: Callable[[Any], Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    b, _ = _started(closing, "b")
    client = _client(closing)
    evil = EndpointDetails("\x1b[2J\nFAKE LOG LINE\r\x00", "\u202e" + "x" * 500)
    client.sendto(_request(evil, using_dst=IPPort(V4, 1)), (V4, b.nd.port))
    wait_for(lambda: b.count("answered_unknown_dst_cluster") == 1, 2.0)
    reply = decode(_drain_at_least(client, 1)[0]).body
    assert isinstance(reply, Response)
    assert reply.response is ResponseType.UNKNOWN_DST_CLUSTER
    assert any("answered UNKNOWN_DST_CLUSTER" in r.getMessage() for r in caplog.records)
    _assert_safe_logs(caplog)


class _FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> int:
        self.sent.append((data, addr))
        return len(data)


def test_hostile_100kb_ids_are_answered_and_logged_short(
        caplog: pytest.LogCaptureFixture) -> None:
    # No UDP datagram holds 100 KB: the datagram path is fed directly, with the bound lifted.
    caplog.set_level(logging.DEBUG)
    node = Node("b", max_datagram=10_000_000)
    try:
        huge = EndpointDetails("\x07\n" * 50_000, "\x1b" * 100_000)
        fake = _FakeSocket()
        handle = node.nd._handle
        handle(fake, _request(huge, using_dst=IPPort(V4, 1)), (V4, 5555))  # type: ignore[arg-type]
        assert len(fake.sent) == 1
        reply = decode(fake.sent[0][0]).body
        assert isinstance(reply, Response)
        assert reply.response is ResponseType.UNKNOWN_DST_CLUSTER
        forged = encode(Message(0, Response(1, ResponseType.OK, huge, huge, received_src=IPPort(
            "\n" * 100_000, 1))))
        handle(fake, forged, (V4, 5555))  # type: ignore[arg-type]
        assert node.count("response_unknown_number") == 1
        _assert_safe_logs(caplog)
        assert caplog.records
    finally:
        node.nd.close()


def test_hostile_spoofed_and_replayed_responses_are_ignored(
        closing: Callable[[Any], Any]) -> None:
    a, _ = _started(closing, "a")
    hole = closing(_hole(V4))  # plays the remote gateway by hand
    port = hole.getsockname()[1]
    a.nd.set_targets({"b": Target("b", "cable-b", V4, "", port, False)})
    wait_for(lambda: bool(_peek(hole)), 2.0, "a probe")
    request = decode(_drain(hole)[0]).body
    assert isinstance(request, Request)
    assert request.sender == EndpointDetails("a", a.cable + "-v4")
    assert request.receiver == EndpointDetails("b", "cable-b-v4")
    good = Response(request.request_number, ResponseType.OK, request.receiver,
                    request.sender, received_src=IPPort(V4, a.nd.port))
    forger = _client(closing)
    to_a = (V4, a.nd.port)
    # The right number from the wrong port of the private address: refused.
    forger.sendto(encode(Message(0, good)), to_a)
    wait_for(lambda: a.count("response_wrong_source") == 1, 2.0)
    # A wrong number, and the wrong sender, from the right address: refused.
    wrong_number = Response(request.request_number ^ 1, ResponseType.OK, good.sender,
                            good.receiver, received_src=good.received_src)
    hole.sendto(encode(Message(0, wrong_number)), to_a)
    wait_for(lambda: a.count("response_unknown_number") == 1, 2.0)
    wrong_sender = Response(request.request_number, ResponseType.OK,
                            EndpointDetails("b", "cable-x-v4"), good.receiver,
                            received_src=good.received_src)
    hole.sendto(encode(Message(0, wrong_sender)), to_a)
    wait_for(lambda: a.count("response_wrong_sender") == 1, 2.0)
    assert a.nd.choice("b") is None
    # The real answer, as Submariner sends it (no version), decides.
    hole.sendto(encode(Message(0, good)), to_a)
    wait_for(lambda: a.nd.choice("b") is not None, 2.0)
    before = a.nd.choice("b")
    assert before is not None
    assert before.how == HOW_DISCOVERED
    # A replay with the NAT flag changes nothing: its number was used.
    replay = Response(good.request_number, ResponseType.NAT_DETECTED, good.sender,
                      good.receiver, received_src=good.received_src)
    hole.sendto(encode(Message(0, replay)), to_a)
    wait_for(lambda: a.count("response_unknown_number") == 2, 2.0)
    assert a.nd.choice("b") == before
    assert a.changes == 1  # the replay was handled (counted above) after the choice's call


def _peek(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536, socket.MSG_PEEK)
    except BlockingIOError:
        return b""


def test_hostile_an_internal_error_does_not_stop_the_thread(
        closing: Callable[[Any], Any], monkeypatch: pytest.MonkeyPatch) -> None:
    b, _ = _started(closing, "b")
    real_answer = service_module.answer
    calls = {"n": 0}

    def broken_once(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom\nwith a second line")
        return real_answer(*args)

    monkeypatch.setattr(service_module, "answer", broken_once)
    client = _client(closing)
    request = _request(EndpointDetails("b", b.cable), using_dst=IPPort(V4, 1))
    client.sendto(request, (V4, b.nd.port))
    wait_for(lambda: b.count("errors") == 1, 2.0)
    client.sendto(request, (V4, b.nd.port))
    wait_for(lambda: b.count("answered_nat_detected") == 1, 2.0)
    assert b.nd._thread is not None
    assert b.nd._thread.is_alive()


def test_failing_callbacks_do_not_stop_the_thread(closing: Callable[[Any], Any]) -> None:
    def bad_rule(target: Target) -> tuple[str, bool]:
        raise ValueError("no rule")

    def bad_change() -> None:
        raise RuntimeError("engine asleep")

    a, _ = _started(closing, "a", on_change=bad_change, static_rule=bad_rule)
    b, _ = _started(closing, "b")
    a.nd.set_targets({"x": Target("x", "cable-x", V4, "", 0, False)})  # static rule raises
    assert a.nd.choice("x") is None
    a.nd.set_targets({"x": Target("x", "cable-x", V4, "", 0, False),
                      "b": b.target(private=V4, public="")})
    wait_for(lambda: a.nd.choice("b") is not None, 3.0)  # on_change raised; the thread goes on
    wait_for(lambda: a.changes == 1, 2.0, "on_change")  # called just after the choice is stored
    assert a.nd._thread is not None
    assert a.nd._thread.is_alive()


def test_on_change_runs_on_the_service_thread(closing: Callable[[Any], Any]) -> None:
    seen: list[str] = []
    a, _ = _started(closing, "a", on_change=lambda: seen.append(threading.current_thread().name))
    b, _ = _started(closing, "b")
    a.nd.set_targets({"b": b.target(private=V4, public="")})
    wait_for(lambda: bool(seen), 2.0)
    assert seen == ["natdiscovery"]
