"""The UAPI backend against a fake daemon speaking wireguard-go's and boringtun's dialects."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fake_uapi import CLOSE, FakePeer, FakeUAPI
from hypothesis import given, settings
from hypothesis import strategies as st

from wgcable.wgctrl.client import Client
from wgcable.wgctrl.errors import DeviceNotFoundError, InvalidConfigError, ProtocolError
from wgcable.wgctrl.key import Key
from wgcable.wgctrl.memory import apply_config
from wgcable.wgctrl.types import BackendKind, Config, Device, IPNetwork, PeerConfig, UDPAddr
from wgcable.wgctrl.uapi import UAPIBackend, protocol

PRIV = Key.from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
PUB = Key.from_hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
A = Key(b"\xaa" * 32)
B = Key(b"\xbb" * 32)
C = Key(b"\xcc" * 32)
PSK = Key(b"\x42" * 32)
ZERO = "0" * 64


def net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


def nets(*texts: str) -> set[IPNetwork]:
    return {net(t) for t in texts}


@pytest.fixture
def sockdir() -> Iterator[str]:
    # Short on purpose: a unix socket path must fit in 108 bytes, pytest's tmp_path may not.
    d = tempfile.mkdtemp(prefix="wgc-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def wggo(sockdir: str) -> Iterator[FakeUAPI]:
    with FakeUAPI(sockdir, "wg0", "wireguard-go") as fake:
        yield fake


@pytest.fixture
def btun(sockdir: str) -> Iterator[FakeUAPI]:
    with FakeUAPI(sockdir, "wg0", "boringtun") as fake:
        yield fake


@pytest.fixture
def backend(sockdir: str) -> UAPIBackend:
    return UAPIBackend([sockdir], timeout=2)


def exchange(path: str, request: bytes) -> bytes:
    """One raw request to a UAPI socket, the reply read to EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(path)
        s.sendall(request)
        out = b""
        while chunk := s.recv(4096):
            out += chunk
        return out


# --- the set request on the wire ----------------------------------------------------------

FULL_CONFIG = Config(
    private_key=PRIV,
    listen_port=51820,
    fwmark=0x1234,
    replace_peers=True,
    peers=[
        PeerConfig(
            A,
            preshared_key=PSK,
            endpoint=UDPAddr.parse("[2001:db8::1]:4500"),
            persistent_keepalive=25,
            replace_allowed_ips=True,
            allowed_ips=[net("10.0.0.0/24"), net("fd00::/64")],
        ),
        PeerConfig(B, remove=True, persistent_keepalive=5, allowed_ips=[net("10.9.0.0/16")]),
        PeerConfig(
            C,
            update_only=True,
            preshared_key=Key.zero(),
            endpoint=UDPAddr.parse("192.0.2.1:51820"),
            persistent_keepalive=0,
            allowed_ips=[net("10.1.0.0/16")],
        ),
    ],
)

FULL_REQUEST = (
    "set=1\n"
    f"private_key={PRIV.hex()}\n"
    "listen_port=51820\n"
    "fwmark=4660\n"
    "replace_peers=true\n"
    f"public_key={A.hex()}\n"
    f"preshared_key={PSK.hex()}\n"
    "endpoint=[2001:db8::1]:4500\n"
    "persistent_keepalive_interval=25\n"
    "replace_allowed_ips=true\n"
    "allowed_ip=10.0.0.0/24\n"
    "allowed_ip=fd00::/64\n"
    f"public_key={B.hex()}\n"
    "remove=true\n"  # nothing else is sent for a removed peer
    f"public_key={C.hex()}\n"
    "update_only=true\n"
    f"preshared_key={ZERO}\n"
    "endpoint=192.0.2.1:51820\n"
    "persistent_keepalive_interval=0\n"
    "allowed_ip=10.1.0.0/16\n"
    "\n"
).encode()


def test_encode_set_is_exact() -> None:
    assert protocol.encode_set(FULL_CONFIG) == FULL_REQUEST
    without = protocol.encode_set(FULL_CONFIG, update_only_supported=False)
    assert without == FULL_REQUEST.replace(b"update_only=true\n", b"")


ZONED = "2001:db8::1%x\npublic_key=" + "ab" * 32 + "\nremove=true"


@pytest.mark.parametrize("where", ["endpoint", "allowed_ip"])
def test_hostile_injection_zoned_values_are_never_encoded(
    where: str, wggo: FakeUAPI, backend: UAPIBackend
) -> None:
    """A zone is free text (newlines included): the encoder refuses it instead of sending
    the extra lines it carries."""
    peer = PeerConfig(public_key=A, allowed_ips=[net("10.1.0.0/16")])
    if where == "endpoint":
        peer.endpoint = UDPAddr(ipaddress.ip_address(ZONED), 51820)
    else:
        peer.allowed_ips.append(ipaddress.ip_network(ZONED))
    config = Config(peers=[peer])
    with pytest.raises(InvalidConfigError) as exc:
        protocol.encode_set(config)
    assert exc.value.field == where
    assert "remove=true" not in str(exc.value)
    backend.configure("wg0", Config(private_key=PRIV))
    wggo.requests.clear()
    with pytest.raises(InvalidConfigError):
        backend.configure("wg0", config)
    assert wggo.requests == [] or all(b"remove=true" not in r for r in wggo.requests)


def test_hostile_injection_every_value_is_one_line() -> None:
    """Whatever reaches a value: nothing that could end the line or add a key."""
    for bad in ("10\n", "a=b", "\x00", "x\u2028y", ""):
        with pytest.raises(InvalidConfigError):
            protocol._value("fwmark", bad)


def test_set_request_bytes_on_the_wire(wggo: FakeUAPI, backend: UAPIBackend) -> None:
    backend.configure("wg0", Config(private_key=Key.generate()))
    wggo.requests.clear()
    backend.configure("wg0", FULL_CONFIG)
    # update_only peers make the backend read the device first, to learn its dialect.
    assert wggo.requests == [protocol.GET_REQUEST, FULL_REQUEST]
    dev = backend.device("wg0")
    assert dev.private_key == PRIV.clamped()
    assert dev.public_key == PUB
    assert (dev.listen_port, dev.fwmark) == (51820, 0x1234)
    assert [p.public_key for p in dev.peers] == [A]  # B removed, C update_only: not created
    a = dev.peers[0]
    assert a.preshared_key == PSK
    assert a.endpoint == UDPAddr(ipaddress.ip_address("2001:db8::1"), 4500)
    assert a.persistent_keepalive == 25
    assert set(a.allowed_ips) == nets("10.0.0.0/24", "fd00::/64")


def test_device_only_config_has_no_peer_lines(wggo: FakeUAPI, backend: UAPIBackend) -> None:
    backend.configure("wg0", Config(fwmark=0))
    backend.configure("wg0", Config(listen_port=0))
    backend.configure("wg0", Config(replace_peers=True))
    assert wggo.requests == [
        b"set=1\nfwmark=0\n\n",
        b"set=1\nlisten_port=0\n\n",
        b"set=1\nreplace_peers=true\n\n",
    ]


def test_a_peer_with_nothing_to_change_is_its_key(wggo: FakeUAPI, backend: UAPIBackend) -> None:
    backend.configure("wg0", Config(peers=[PeerConfig(A)]))
    assert wggo.requests == [f"set=1\npublic_key={A.hex()}\n\n".encode()]
    assert [p.public_key for p in backend.device("wg0").peers] == [A]


def test_empty_config_sends_nothing(wggo: FakeUAPI, backend: UAPIBackend) -> None:
    backend.configure("wg0", Config())
    assert wggo.requests == []


# --- set then get, against the memory model -----------------------------------------------

POOL = [Key(bytes([i]) * 32) for i in range(1, 6)]
NETS = [
    net(t)
    for t in ("10.0.0.0/24", "10.0.1.0/24", "10.0.0.7/32", "0.0.0.0/0", "fd00::/64", "::/0")
]
endpoints = st.builds(UDPAddr, st.ip_addresses(), st.integers(1, 65535))
peer_configs = st.builds(
    PeerConfig,
    public_key=st.sampled_from(POOL),
    remove=st.booleans(),
    update_only=st.booleans(),
    preshared_key=st.none() | st.sampled_from([Key.zero(), PSK, Key(b"\x43" * 32)]),
    endpoint=st.none() | endpoints,
    persistent_keepalive=st.none() | st.integers(0, 65535),
    replace_allowed_ips=st.booleans(),
    allowed_ips=st.lists(st.sampled_from(NETS), max_size=4),
)
private_keys = st.binary(min_size=32, max_size=32).filter(any).map(Key)


def configs(unique_peers: bool = False) -> st.SearchStrategy[Config]:
    peers = (
        st.lists(peer_configs, max_size=5, unique_by=lambda p: p.public_key)
        if unique_peers
        else st.lists(peer_configs, max_size=5)
    )
    return st.builds(
        Config,
        private_key=st.none() | private_keys,
        listen_port=st.none() | st.integers(0, 65535),
        fwmark=st.none() | st.integers(0, 0xFFFFFFFF),
        replace_peers=st.booleans(),
        peers=peers,
    )


def comparable(d: Device) -> tuple[object, ...]:
    return (
        d.public_key,
        d.listen_port,
        d.fwmark,
        [
            (p.public_key, p.preshared_key, p.endpoint, p.persistent_keepalive, p.allowed_ips)
            for p in d.peers
        ],
    )


@settings(max_examples=75, deadline=None)
@given(st.lists(configs(), min_size=1, max_size=4))
def test_wireguard_go_set_then_get_matches_the_memory_model(cfgs: list[Config]) -> None:
    with tempfile.TemporaryDirectory(prefix="wgc-") as d, FakeUAPI(d, "wg0") as fake:
        b = UAPIBackend([d], timeout=2)
        model = Device("wg0", BackendKind.USERSPACE)
        for cfg in cfgs:
            b.configure("wg0", cfg)
            model = apply_config(model, cfg)
            got = b.device("wg0")
            assert got == model
        assert all(r.endswith(b"\n\n") for r in fake.requests)


@settings(max_examples=75, deadline=None)
@given(st.lists(configs(unique_peers=True), min_size=1, max_size=4))
def test_boringtun_set_then_get_matches_the_memory_model(cfgs: list[Config]) -> None:
    # update_only is emulated for boringtun, so the result must still be wireguard-go's.
    with tempfile.TemporaryDirectory(prefix="wgc-") as d, FakeUAPI(d, "wg0", "boringtun") as fake:
        b = UAPIBackend([d], timeout=2)
        model = Device("wg0", BackendKind.USERSPACE)
        for cfg in cfgs:
            b.configure("wg0", cfg)  # boringtun rejects update_only: this would raise
            model = apply_config(model, cfg)
            got = b.device("wg0")
            assert got.private_key is None  # boringtun never reports it
            assert comparable(got) == comparable(model)
        assert not any(b"update_only" in r for r in fake.requests)


# --- parsing wireguard-go replies ---------------------------------------------------------

WG_GO_HEAD = [f"private_key={PRIV.hex()}", "listen_port=51820", "fwmark=0"]
WG_GO_PEER_A = [
    f"preshared_key={ZERO}",
    "protocol_version=1",
    "endpoint=192.0.2.1:51820",
    "last_handshake_time_sec=0",
    "last_handshake_time_nsec=0",
    "tx_bytes=100",
    "rx_bytes=200",
    "persistent_keepalive_interval=25",
    "allowed_ip=10.0.0.0/24",
    "allowed_ip=10.0.1.0/24",
]
WG_GO_PEER_B = [
    f"preshared_key={PSK.hex()}",
    "protocol_version=1",
    "endpoint=[2001:db8::1]:4500",
    "last_handshake_time_sec=1700000000",
    "last_handshake_time_nsec=500000000",
    "tx_bytes=0",
    "rx_bytes=0",
    "persistent_keepalive_interval=0",
    "allowed_ip=fd00::/64",
]
UNKNOWN = ["future_field=1", "frobnicate=not a number at all", "x_transport=quic=yes"]


def reply(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n\n").encode()


def wg_go_reply(peer_a: list[str] = WG_GO_PEER_A, peer_b: list[str] = WG_GO_PEER_B) -> bytes:
    return reply(
        *WG_GO_HEAD, f"public_key={A.hex()}", *peer_a, f"public_key={B.hex()}", *peer_b, "errno=0"
    )


def check_wg_go_device(dev: Device) -> None:
    assert dev.name == "wg0"
    assert dev.kind is BackendKind.USERSPACE
    assert dev.private_key == PRIV
    assert dev.public_key == PUB  # derived: the wire does not carry it
    assert (dev.listen_port, dev.fwmark) == (51820, 0)
    assert [p.public_key for p in dev.peers] == [A, B]
    a, b = dev.peers
    assert a.preshared_key is None  # all zeros = none
    assert a.endpoint == UDPAddr(ipaddress.ip_address("192.0.2.1"), 51820)
    assert a.last_handshake is None  # 0/0 = never
    assert (a.tx_bytes, a.rx_bytes, a.persistent_keepalive) == (100, 200, 25)
    assert set(a.allowed_ips) == nets("10.0.0.0/24", "10.0.1.0/24")
    assert b.preshared_key == PSK
    assert b.endpoint == UDPAddr(ipaddress.ip_address("2001:db8::1"), 4500)
    assert b.last_handshake == datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC)
    assert b.last_handshake.utcoffset() == timedelta(0)
    assert (b.tx_bytes, b.rx_bytes, b.persistent_keepalive) == (0, 0, 0)
    assert b.allowed_ips == [net("fd00::/64")]
    assert b.protocol_version == 1


def test_parse_wireguard_go_reply(wggo: FakeUAPI, backend: UAPIBackend) -> None:
    wggo.script(wg_go_reply())
    check_wg_go_device(backend.device("wg0"))
    assert wggo.requests == [b"get=1\n\n"]


@given(st.permutations(WG_GO_PEER_A + UNKNOWN), st.permutations(WG_GO_PEER_B + UNKNOWN))
def test_key_order_within_a_peer_does_not_matter(pa: list[str], pb: list[str]) -> None:
    check_wg_go_device(protocol.parse_get("wg0", wg_go_reply(pa, pb)).device)


def test_unknown_device_keys_are_ignored() -> None:
    raw = wg_go_reply().replace(b"listen_port=", b"tx_queue_len=500\nlisten_port=")
    got = protocol.parse_get("wg0", raw)
    check_wg_go_device(got.device)
    assert not got.boringtun


def test_nonzero_nsec_alone_is_a_handshake() -> None:
    lines = [*WG_GO_PEER_A]
    lines[lines.index("last_handshake_time_nsec=0")] = "last_handshake_time_nsec=1000"
    a = protocol.parse_get("wg0", wg_go_reply(lines)).device.peers[0]
    assert a.last_handshake == datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC)


def test_model_handshake_round_trip(wggo: FakeUAPI, backend: UAPIBackend) -> None:
    backend.configure("wg0", Config(peers=[PeerConfig(A), PeerConfig(B)]))
    wggo.peers[A.hex()].last_handshake = 1_700_000_123.25
    a, b = backend.device("wg0").peers
    assert a.last_handshake == datetime(2023, 11, 14, 22, 15, 23, 250000, tzinfo=UTC)
    assert b.last_handshake is None


# --- boringtun ----------------------------------------------------------------------------

BORINGTUN_REPLY = reply(
    f"own_public_key={PUB.hex()}",
    "listen_port=51820",
    f"public_key={A.hex()}",
    "persistent_keepalive_interval=25",
    "endpoint=192.0.2.1:51820",
    "allowed_ip=10.0.0.0/24",
    "last_handshake_time_sec=100",
    "last_handshake_time_nsec=500000000",
    "rx_bytes=7",
    "tx_bytes=8",
    f"public_key={B.hex()}",
    "rx_bytes=0",
    "tx_bytes=0",
    "errno=0",
)


def test_parse_boringtun_reply_with_a_fixed_clock() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    got = protocol.parse_get("wg0", BORINGTUN_REPLY, now=now)
    assert got.boringtun
    dev = got.device
    assert dev.private_key is None
    assert dev.public_key == PUB  # from own_public_key
    a, b = dev.peers
    assert a.last_handshake == now - timedelta(seconds=100.5)  # an age, not an epoch
    assert (a.rx_bytes, a.tx_bytes, a.persistent_keepalive) == (7, 8, 25)
    assert a.allowed_ips == [net("10.0.0.0/24")]
    assert a.preshared_key is None
    assert b.last_handshake is None  # no handshake lines = never


def test_parse_boringtun_reply_through_the_socket(btun: FakeUAPI, backend: UAPIBackend) -> None:
    btun.script(BORINGTUN_REPLY)
    before = datetime.now(UTC)
    dev = backend.device("wg0")
    after = datetime.now(UTC)
    hs = dev.peers[0].last_handshake
    assert hs is not None
    assert before - timedelta(seconds=100.5) <= hs <= after - timedelta(seconds=100.5)


def test_boringtun_model_reports_public_key_and_age(btun: FakeUAPI, backend: UAPIBackend) -> None:
    backend.configure("wg0", Config(private_key=PRIV, peers=[PeerConfig(A)]))
    frozen = time.time()
    btun.now = lambda: frozen
    btun.peers[A.hex()].last_handshake = frozen - 42
    dev = backend.device("wg0")
    assert dev.private_key is None
    assert dev.public_key == PUB
    hs = dev.peers[0].last_handshake
    assert hs is not None
    assert abs((datetime.now(UTC) - hs).total_seconds() - 42) < 5


# --- update_only --------------------------------------------------------------------------


def update_a_and_b() -> Config:
    return Config(
        peers=[
            PeerConfig(A, update_only=True, persistent_keepalive=10),
            PeerConfig(B, update_only=True, persistent_keepalive=20),
            PeerConfig(C, allowed_ips=[net("10.3.0.0/16")]),
        ]
    )


def test_update_only_with_a_keyless_wireguard_go_is_emulated(
    wggo: FakeUAPI, backend: UAPIBackend
) -> None:
    # No private_key in the reply: the dialect is unknown, emulation is right for both.
    backend.configure("wg0", Config(peers=[PeerConfig(A)]))
    backend.configure("wg0", update_a_and_b())
    assert not any(b"update_only" in r for r in wggo.requests)
    dev = backend.device("wg0")
    assert [(p.public_key, p.persistent_keepalive) for p in dev.peers] == [(A, 10), (C, 0)]


def test_update_only_with_wireguard_go_is_sent(wggo: FakeUAPI, backend: UAPIBackend) -> None:
    backend.configure("wg0", Config(private_key=PRIV, peers=[PeerConfig(A)]))
    wggo.requests.clear()
    backend.configure("wg0", update_a_and_b())
    get, setreq = wggo.requests
    assert get == b"get=1\n\n"
    assert setreq.count(b"update_only=true\n") == 2
    dev = backend.device("wg0")
    assert [(p.public_key, p.persistent_keepalive) for p in dev.peers] == [(A, 10), (C, 0)]


def test_update_only_with_boringtun_is_emulated(btun: FakeUAPI, backend: UAPIBackend) -> None:
    backend.configure("wg0", Config(private_key=PRIV, peers=[PeerConfig(A)]))
    btun.requests.clear()
    backend.configure("wg0", update_a_and_b())
    get, setreq = btun.requests
    assert get == b"get=1\n\n"
    assert b"update_only" not in setreq
    assert A.hex().encode() in setreq
    assert B.hex().encode() not in setreq  # does not exist: filtered out, not created
    assert C.hex().encode() in setreq  # not update_only: kept
    dev = backend.device("wg0")
    assert [(p.public_key, p.persistent_keepalive) for p in dev.peers] == [(A, 10), (C, 0)]


def test_update_only_with_a_keyless_boringtun(btun: FakeUAPI, backend: UAPIBackend) -> None:
    # Without a private key boringtun sends no own_public_key: its dialect cannot be told
    # from the reply, and update_only must still not reach it.
    backend.configure("wg0", Config(peers=[PeerConfig(A)]))
    btun.requests.clear()
    backend.configure("wg0", update_a_and_b())
    assert not any(b"update_only" in r for r in btun.requests)
    dev = backend.device("wg0")
    assert [(p.public_key, p.persistent_keepalive) for p in dev.peers] == [(A, 10), (C, 0)]


def test_update_only_after_replace_peers_with_boringtun(
    btun: FakeUAPI, backend: UAPIBackend
) -> None:
    # replace_peers drops A before the update_only line for A: like wireguard-go, A must not
    # come back from a partial config.
    backend.configure("wg0", Config(private_key=PRIV, peers=[PeerConfig(A)]))
    backend.configure(
        "wg0",
        Config(replace_peers=True, peers=[PeerConfig(A, update_only=True, persistent_keepalive=5)]),
    )
    assert backend.device("wg0").peers == []


def test_update_only_after_remove_in_one_config_with_boringtun(
    btun: FakeUAPI, backend: UAPIBackend
) -> None:
    backend.configure("wg0", Config(private_key=PRIV, peers=[PeerConfig(A), PeerConfig(B)]))
    backend.configure(
        "wg0",
        Config(
            peers=[
                PeerConfig(A, remove=True),
                PeerConfig(A, update_only=True, persistent_keepalive=5),
                PeerConfig(C),
                PeerConfig(C, update_only=True, persistent_keepalive=7),
            ]
        ),
    )
    dev = backend.device("wg0")
    assert [(p.public_key, p.persistent_keepalive) for p in dev.peers] == [(B, 0), (C, 7)]


def test_boringtun_itself_rejects_update_only(btun: FakeUAPI) -> None:
    # The fake is faithful: what the emulation protects against.
    req = f"set=1\npublic_key={A.hex()}\nupdate_only=true\n\n".encode()
    assert exchange(btun.path, req) == b"errno=22\n\n"


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", [b"errno=-22\n\n", b"errno=22\n\n"])
def test_errno_either_sign_on_set(wggo: FakeUAPI, backend: UAPIBackend, answer: bytes) -> None:
    wggo.script(answer)
    with pytest.raises(ProtocolError) as info:
        backend.configure("wg0", Config(listen_port=1))
    assert info.value.errno == 22
    assert info.value.device == "wg0"
    assert "EINVAL" in str(info.value)


@pytest.mark.parametrize("answer", [b"errno=-22\n\n", b"errno=22\n\n"])
def test_errno_either_sign_on_get(wggo: FakeUAPI, backend: UAPIBackend, answer: bytes) -> None:
    wggo.script(answer)
    with pytest.raises(ProtocolError) as info:
        backend.device("wg0")
    assert info.value.errno == 22


def test_errno_after_data_on_get(wggo: FakeUAPI, backend: UAPIBackend) -> None:
    wggo.script(wg_go_reply().replace(b"errno=0", b"errno=-5"))
    with pytest.raises(ProtocolError) as info:
        backend.device("wg0")
    assert info.value.errno == 5


def test_a_failed_set_is_partly_applied(wggo: FakeUAPI, backend: UAPIBackend) -> None:
    # wireguard-go applies line by line: the caller must re-read after an error.
    req = b"set=1\nlisten_port=1000\nfwmark=oops\nlisten_port=2000\n\n"
    assert exchange(wggo.path, req) == b"errno=-22\n\n"
    assert backend.device("wg0").listen_port == 1000


def test_boringtun_set_error_is_positive(btun: FakeUAPI, backend: UAPIBackend) -> None:
    btun.script(b"errno=22\n\n")
    with pytest.raises(ProtocolError) as info:
        backend.configure("wg0", Config(fwmark=1))
    assert info.value.errno == 22


def test_missing_errno_on_get(wggo: FakeUAPI, backend: UAPIBackend) -> None:
    wggo.script(reply(*WG_GO_HEAD))
    with pytest.raises(ProtocolError, match="no errno") as info:
        backend.device("wg0")
    assert info.value.errno == 71


def test_missing_errno_on_set(wggo: FakeUAPI, backend: UAPIBackend) -> None:
    wggo.script(b"listen_port=1\n\n")
    with pytest.raises(ProtocolError, match="no errno"):
        backend.configure("wg0", Config(listen_port=1))


def test_bad_errno_value_names_errno(wggo: FakeUAPI, backend: UAPIBackend) -> None:
    wggo.script(b"errno=lots\n\n")
    with pytest.raises(ProtocolError) as info:
        backend.configure("wg0", Config(listen_port=1))
    assert info.value.key == "errno"
    assert "'errno'" in str(info.value)


@pytest.mark.parametrize(
    "script",
    [
        CLOSE,
        f"private_key={PRIV.hex()}\nlisten_port=51".encode(),  # truncated
        reply(*WG_GO_HEAD).rstrip(b"\n"),  # no terminating blank line, no errno
    ],
    ids=["closed", "truncated", "unterminated"],
)
def test_closed_mid_reply(wggo: FakeUAPI, backend: UAPIBackend, script: object) -> None:
    wggo.script(script)
    with pytest.raises(ProtocolError, match="closed") as info:
        backend.device("wg0")
    assert info.value.errno == 71
    assert PRIV.hex() not in str(info.value)


def test_closed_without_reply_on_set(wggo: FakeUAPI, backend: UAPIBackend) -> None:
    wggo.script(CLOSE)
    with pytest.raises(ProtocolError, match="closed"):
        backend.configure("wg0", Config(listen_port=1))


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("listen_port=abc", "listen_port"),
        ("fwmark=0x10", "fwmark"),
        (f"private_key={'g' * 64}", "private_key"),
        (f"private_key={PRIV.hex()[:62]}", "private_key"),
        (f"own_public_key={'z' * 64}", "own_public_key"),
        ("public_key=abcd", "public_key"),
        ("PEER:endpoint=vpn.example.com:51820", "endpoint"),
        ("PEER:endpoint=2001:db8::1:51820", "endpoint"),
        ("PEER:endpoint=192.0.2.1:0", "endpoint"),
        ("PEER:allowed_ip=10.0.0.0/33", "allowed_ip"),
        ("PEER:allowed_ip=not-an-ip", "allowed_ip"),
        ("PEER:rx_bytes=many", "rx_bytes"),
        ("PEER:tx_bytes=", "tx_bytes"),
        ("PEER:last_handshake_time_sec=yesterday", "last_handshake_time_sec"),
        ("PEER:last_handshake_time_nsec=1.5", "last_handshake_time_nsec"),
        ("PEER:persistent_keepalive_interval=often", "persistent_keepalive_interval"),
        (f"PEER:preshared_key={PSK.hex()[:-2]}", "preshared_key"),
        ("PEER:protocol_version=one", "protocol_version"),
    ],
)
def test_bad_value_names_the_key(
    wggo: FakeUAPI, backend: UAPIBackend, line: str, key: str
) -> None:
    lines = [f"public_key={A.hex()}", line[5:]] if line.startswith("PEER:") else [line]
    wggo.script(reply(*lines, "errno=0"))
    with pytest.raises(ProtocolError) as info:
        backend.device("wg0")
    assert info.value.key == key
    assert repr(key) in str(info.value)
    assert info.value.errno == 71
    assert PRIV.hex()[:62] not in str(info.value)  # key material is never echoed
    assert PSK.hex()[:62] not in str(info.value)


def test_line_without_equals(wggo: FakeUAPI, backend: UAPIBackend) -> None:
    wggo.script(reply("listen_port=1", "garbage line", "errno=0"))
    with pytest.raises(ProtocolError, match="without '='"):
        backend.device("wg0")


# --- finding devices ----------------------------------------------------------------------


def test_missing_socket_is_device_not_found(sockdir: str, backend: UAPIBackend) -> None:
    assert backend.device_names() == []
    assert not backend.owns("wg0")
    with pytest.raises(DeviceNotFoundError, match="wg0"):
        backend.device("wg0")
    with pytest.raises(DeviceNotFoundError):
        backend.configure("wg0", Config(listen_port=1))


def test_missing_socket_dir(sockdir: str) -> None:
    b = UAPIBackend([f"{sockdir}/nope", sockdir])
    assert b.device_names() == []
    with pytest.raises(DeviceNotFoundError):
        b.device("wg0")


def test_stale_socket_is_device_not_found(sockdir: str, backend: UAPIBackend) -> None:
    # A daemon that died without unlinking its socket: the file is there, nobody listens.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(f"{sockdir}/wg0.sock")
    s.close()
    with pytest.raises(DeviceNotFoundError, match="nothing listens"):
        backend.device("wg0")
    with pytest.raises(DeviceNotFoundError):
        backend.configure("wg0", Config(listen_port=1))
    with Client([backend]) as client, pytest.raises(DeviceNotFoundError):
        client.device("wg0")


def test_device_names_lists_sockets_only(sockdir: str) -> None:
    with FakeUAPI(sockdir, "wg1"), FakeUAPI(sockdir, "wg0", "boringtun"):
        open(f"{sockdir}/notes.txt", "w").close()
        b = UAPIBackend([sockdir, sockdir], timeout=2)  # the same dir twice counts once
        assert b.device_names() == ["wg0", "wg1"]
        assert b.owns("wg0")
        assert b.owns("wg1")
        assert not b.owns("notes")


def test_client_picks_the_backend_that_owns_the_device() -> None:
    d1, d2 = tempfile.mkdtemp(prefix="wgc-"), tempfile.mkdtemp(prefix="wgc-")
    try:
        with FakeUAPI(d1, "wg0") as go, FakeUAPI(d2, "wg1", "boringtun") as bt:
            go.peers[A.hex()] = FakePeer(A.hex(), allowed_ips=["10.0.0.0/24"])
            with Client([UAPIBackend([d1], timeout=2), UAPIBackend([d2], timeout=2)]) as client:
                dev = client.device("wg1")
                assert dev.name == "wg1"
                assert go.requests == []
                assert bt.requests == [b"get=1\n\n"]

                client.configure("wg0", Config(listen_port=4242))
                assert go.requests == [b"set=1\nlisten_port=4242\n\n"]
                assert len(bt.requests) == 1

                devs = client.devices()
                assert [d.name for d in devs] == ["wg0", "wg1"]
                assert devs[0].listen_port == 4242
                assert devs[0].peers[0].public_key == A

                with pytest.raises(DeviceNotFoundError):
                    client.device("wg2")
            bt.stop()
            with pytest.raises(DeviceNotFoundError):
                client.device("wg1")
            assert [d.name for d in client.devices()] == ["wg0"]
    finally:
        shutil.rmtree(d1, ignore_errors=True)
        shutil.rmtree(d2, ignore_errors=True)


@pytest.mark.parametrize("reply", [
    b"listen_port=" + b"9" * 5000 + b"\x1b[2J\nerrno=0\n\n",
    b"\x1b[2J" + b"x" * 5000 + b"\nerrno=0\n\n",
])
def test_hostile_device_reply_is_short_and_escaped_in_errors(reply: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.parse_get("wg0", reply)
    message = str(info.value)
    assert "\x1b" not in message
    assert len(message) < 200
