"""A device read through ``protocol.ReadCache`` means exactly what the full parse says.

Random replies, read one after another through one cache as a device is read every few
seconds: peers come and go, their endpoints, allowed IPs, keepalives and counters change,
lines are reordered, boringtun's dialect and broken replies come along. Every read is
compared with the full parse of the same reply: the same device, or the same error.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgcable.wgctrl.errors import ProtocolError
from wgcable.wgctrl.key import Key
from wgcable.wgctrl.uapi import UAPIBackend, protocol

PRIV = Key.from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ZERO = "0" * 64
PUBS = [bytes([i]) * 32 for i in range(1, 5)]
PSK = Key(b"\x42" * 32)
NOW = datetime(2026, 12, 2, 5, 0, tzinfo=UTC)

HEX_KEY = st.sampled_from([k.hex() for k in PUBS])


def pick(good: list[str], bad: list[str], messy: bool) -> st.SearchStrategy[str]:
    """One of ``good``, or in a messy reply now and then one of ``bad``."""
    return st.sampled_from(good + bad if messy else good)


@st.composite
def peer_lines(draw: st.DrawFn, messy: bool) -> list[str]:
    """One peer in wireguard-go's layout; in a messy reply sometimes broken, shuffled,
    trimmed or added to."""
    counter = st.integers(0, 2**64 - 1).map(str)
    if messy:
        counter = st.one_of(counter, st.sampled_from(["00", "x", "", "-1", "1_0"]))
    lines = [f"public_key={draw(HEX_KEY)}",
             "preshared_key=" + draw(pick([ZERO, ZERO, PSK.hex()],
                                          ["42" * 31 + "4g", "42" * 31, PSK.hex().upper()],
                                          messy))]
    if draw(st.integers(0, 4)):
        lines.append("protocol_version=" + draw(pick(["1"], ["2", "one"], messy)))
    if draw(st.integers(0, 4)):
        lines.append("endpoint=" + draw(pick(
            ["192.0.2.1:51820", "192.0.2.2:51820", "[2001:db8::1]:4500", "198.18.0.1:1"],
            ["vpn.example.com:51820", "192.0.2.1:0", "2001:db8::1:51820",
             "[fe80::1%eth0]:51820"], messy)))
    lines += [
        f"last_handshake_time_sec={draw(st.sampled_from(['0', '1700000000', '5']))}",
        f"last_handshake_time_nsec={draw(st.sampled_from(['0', '500000000', '1000']))}",
        f"tx_bytes={draw(counter)}",
        f"rx_bytes={draw(counter)}",
    ]
    if draw(st.integers(0, 4)):
        lines.append("persistent_keepalive_interval=" + draw(pick(["0", "10"], ["x"], messy)))
    network = pick(["10.0.0.0/24", "10.0.1.0/24", "10.0.0.0/16", "fd00::/64", "0.0.0.0/0",
                    "10.0.0.1/24"], ["10.0.0.0/33", "not-an-ip"], messy)
    lines += [f"allowed_ip={n}" for n in draw(st.lists(network, max_size=3))]
    change = draw(st.sampled_from(["none"] * (6 if messy else 30)
                                  + ["shuffle", "drop", "unknown", "blank"]))
    if change == "shuffle":
        body = draw(st.permutations(lines[1:]))
        lines = [lines[0], *body]
    elif change == "drop" and len(lines) > 1:
        del lines[draw(st.integers(1, len(lines) - 1))]
    elif change == "unknown":
        lines.insert(draw(st.integers(1, len(lines))), "future_field=1")
    elif change == "blank":
        lines.insert(draw(st.integers(1, len(lines))), "")
    return lines


@st.composite
def replies(draw: st.DrawFn) -> bytes:
    messy = draw(st.integers(0, 3)) == 0
    head = draw(st.sampled_from([
        [f"private_key={PRIV.hex()}", "listen_port=51820", "fwmark=0"],
        ["listen_port=51820"],
        [],
        [f"own_public_key={PRIV.public_key().hex()}", "listen_port=51820"],  # boringtun
        *([["listen_port=x"], ["garbage line"]] if messy else []),
    ]))
    lines = [*head]
    for p in draw(st.lists(peer_lines(messy), max_size=5)):
        lines += p
    end = draw(pick(["errno=0"], ["errno=-22", "errno=22", "", "errno=x"], messy))
    if end:
        lines.append(end)
    if messy and draw(st.booleans()):  # something after the errno line
        lines.append(draw(st.sampled_from(["listen_port=1", "errno=0", "x"])))
    return ("\n".join(lines) + "\n\n").encode()


def outcome(reply: bytes, cache: protocol.ReadCache | None) -> object:
    try:
        return protocol.parse_get("wg0", reply, now=NOW, cache=cache)
    except ProtocolError as e:
        return ("error", str(e), e.key, e.errno)


def fed(reply: bytes, cache: protocol.ReadCache, cuts: list[int]) -> object:
    """``reply`` fed to a reader in pieces, as it arrives from the socket; the full parse
    where the reader gives up (as the backend does)."""
    reader = cache.reader("wg0", NOW)
    at = 0
    for cut in sorted(c % (len(reply) + 1) for c in cuts):
        reader.feed(reply[at:cut])
        at = max(at, cut)
    reader.feed(reply[at:])
    got = reader.finish()
    return got if got is not None else outcome(reply, None)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(replies(), st.lists(st.integers(0, 10_000), max_size=6)),
                min_size=1, max_size=6))
def test_reads_through_the_cache_are_the_full_parse(reads: list[tuple[bytes, list[int]]]) -> None:
    whole, pieces = protocol.ReadCache(), protocol.ReadCache()
    for reply, cuts in reads:
        expect = outcome(reply, None)
        assert outcome(reply, whole) == expect
        assert fed(reply, pieces, cuts) == expect


def canonical(peers: list[tuple[Key, str, str, list[str]]], counters: int = 0) -> bytes:
    lines = [f"private_key={PRIV.hex()}", "listen_port=51820", "fwmark=0"]
    for pub, psk, endpoint, nets in peers:
        lines += [f"public_key={pub.hex()}", f"preshared_key={psk}", "protocol_version=1",
                  f"endpoint={endpoint}", f"last_handshake_time_sec={1700000000 + counters}",
                  "last_handshake_time_nsec=0", f"tx_bytes={counters}",
                  f"rx_bytes={2 * counters}", "persistent_keepalive_interval=10",
                  *(f"allowed_ip={n}" for n in nets)]
    return ("\n".join([*lines, "errno=0"]) + "\n\n").encode()


def test_wireguard_go_replies_take_the_cache_and_keep_no_secret() -> None:
    a, b = Key(PUBS[0]), Key(PUBS[1])
    cache = protocol.ReadCache()
    first = canonical([(a, PSK.hex(), "192.0.2.1:51820", ["10.0.0.0/24"]),
                       (b, ZERO, "192.0.2.2:51820", ["10.0.1.0/24", "fd00::/64"])])
    got = protocol.parse_get("wg0", first, cache=cache).device
    assert got == protocol.parse_get("wg0", first).device
    assert got.peers[0].preshared_key == PSK
    assert len(cache) == 2  # both peers' settings kept ...
    kept = repr(vars(cache))
    assert PSK.hex() not in kept  # ... but no secret
    assert PRIV.hex() not in kept
    assert {e.public_key for e in cache._peers.values()} == {a, b}  # keys: public ones only

    # The counters moved and the second peer moved elsewhere: every read is fresh.
    second = canonical([(a, PSK.hex(), "192.0.2.1:51820", ["10.0.0.0/24"]),
                        (b, ZERO, "192.0.2.9:51820", ["10.0.1.0/24"])], counters=7)
    again = protocol.parse_get("wg0", second, cache=cache).device
    assert again == protocol.parse_get("wg0", second).device
    assert (again.peers[0].rx_bytes, again.peers[0].tx_bytes) == (14, 7)
    assert str(again.peers[1].endpoint) == "192.0.2.9:51820"
    assert len(cache) == 2  # only the last read's peers
    # The unchanged peer's settings are the same objects: the tracking relies on it.
    assert again.peers[0].allowed_ips[0] is got.peers[0].allowed_ips[0]
    assert again.peers[0].allowed_ips is not got.peers[0].allowed_ips  # a list of its own


def test_a_broken_peer_is_the_full_parse_error() -> None:
    cache = protocol.ReadCache()
    reply = canonical([(Key(PUBS[0]), ZERO, "192.0.2.1:51820", ["10.0.0.0/33"])])
    with pytest.raises(ProtocolError) as info:
        protocol.parse_get("wg0", reply, cache=cache)
    assert info.value.key == "allowed_ip"
    assert len(cache) == 0


def test_the_backend_forgets_a_device_that_is_gone(tmp_path: object) -> None:
    backend = UAPIBackend([str(tmp_path)])
    backend._reads["wg0"] = protocol.ReadCache()
    with pytest.raises(Exception, match="wg0"):
        backend.device("wg0")
    assert "wg0" not in backend._reads
