"""Hostile endpoints for the fuzz tests: hypothesis strategies that write store entries (well
formed Endpoint objects with weird values, and raw documents of any shape), and the checks
that whatever a gateway installed from them is safe.

Used by tests/unit/test_fuzz_endpoints.py (engine and driver in-process, kernel faked) and
tests/integration/test_fuzz_netns.py (a real wireguard-go device in a namespace).
"""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from hypothesis import strategies as st

from wgcable.cable.types import Endpoint
from wgcable.wgctrl import IPAddress, IPNetwork

T = TypeVar("T")

# Placeholders, replaced when written: the local gateway's own values are only known then.
LOCAL_PUBLIC_KEY = "<local public key>"
LOCAL_IP = "<local ip>"
# The hex public key of a peer the fuzzed gateway holds (a victim for injected UAPI lines).
VICTIM_KEY_HEX = "<victim key hex>"

# UAPI lines a value may try to smuggle in: remove the victim's peer, then go on as a peer
# of our own. Behind an IPv6 zone that wireguard-go accepts ("lo"), the first line is valid.
# (No '/': ipaddress refuses one anywhere in an address, zone included.)
INJECTED_LINES = f"\npublic_key={VICTIM_KEY_HEX}\nremove=true\npublic_key={'ab' * 32}"
CONTROL_CHARACTERS = ["\n", "\r", "\x00", "\t", "\u2028", "\u2029", "\x85", "\x1b[2J",
                      "\u202e", "\x7f"]
ZONES = ["lo", "1", "eth0", "x" + INJECTED_LINES, "lo]:5871" + INJECTED_LINES + "\nendpoint=[::1",
         "%", "", "\n"]
OVERSIZED = ["x" * 100_000, "1" * 5000, "9" * 400, "f" * 70_000 + "::1", "10." * 2000 + "0/8",
             "\n" * 10_000]

ANY4 = str(ipaddress.IPv4Address(0))  # "0.0.0.0"

# Ranges no remote cluster may route to us: they are this host's, or not unicast at all.
NOT_REMOTE = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "fe80::/10", "ff00::/8",
))


@dataclass(frozen=True)
class Local:
    """What the fuzzed gateway is: every installed prefix is checked against it."""

    cluster_id: str
    subnets: tuple[str, ...]
    addresses: tuple[str, ...]  # every address of the gateway, its private IP first
    public_key: str
    victim_key_hex: str = ""  # a peer the gateway holds, which injected lines try to remove

    @property
    def private_ip(self) -> str:
        return self.addresses[0]

    def nets(self) -> list[IPNetwork]:
        return [ipaddress.ip_network(s) for s in self.subnets]

    def ips(self) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in self.addresses]


def bad_prefixes(local: Local, prefixes: Iterable[IPNetwork]) -> list[str]:
    """Why each of ``prefixes`` (routes or allowed IPs installed for remotes) is unsafe."""
    out = []
    for n in prefixes:
        if n.prefixlen == 0:
            out.append(f"{n}: a default prefix")
        for mine in local.nets():
            if mine.version == n.version and mine.overlaps(n):
                out.append(f"{n}: overlaps the local cluster's {mine}")
        for ip in local.ips():
            if ip.version == n.version and ip in n:
                out.append(f"{n}: covers the gateway's own address {ip}")
        for special in NOT_REMOTE:
            if special.version == n.version and special.overlaps(n):
                out.append(f"{n}: overlaps {special}, not a remote cluster's range")
    return out


def classes(entries: list[tuple[str, object]]) -> set[str]:
    """Which hostile classes the drawn entries carry (for hypothesis ``event``s)."""
    text = repr(entries)  # repr escapes control characters: look for their escapes
    found = set()
    if "%" in text:
        found.add("zone")
    if any(repr(c)[1:-1] in text for c in CONTROL_CHARACTERS):
        found.add("control character")
    if "remove=true" in text:
        found.add("injected lines")
    if any(len(v) > 1000 for v in _strings(entries)):
        found.add("oversized")
    return found


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Endpoint):
        return _strings(value.to_json())
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def leaks(secret_forms: Iterable[str], texts: dict[str, str]) -> list[str]:
    """Which of ``texts`` (by name) contain any form of the secret."""
    forms = [f for f in secret_forms if f]
    return [name for name, text in texts.items() if any(f in text for f in forms)]


# --- strategies ---------------------------------------------------------------------------


def _mostly(good: st.SearchStrategy[str], hostile: st.SearchStrategy[str]
            ) -> st.SearchStrategy[str]:
    """Mostly ``good``: an endpoint must pass every other check before its subnets reach
    the routing table, so uniformly hostile fields would seldom get there. (Both are drawn
    and one kept: a flatmap would make shrinking very slow.)"""
    return st.tuples(st.integers(0, 3), good, hostile).map(lambda t: t[2] if t[0] == 3 else t[1])


def _spliced(good: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A good value with a control character (or injected lines) put in somewhere."""
    return st.builds(lambda v, c, i: v[:i] + c + v[i:], good,
                     st.sampled_from([*CONTROL_CHARACTERS, INJECTED_LINES]), st.integers(0, 40))


def hostile_text(good: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """The classes every field gets: control characters, oversized values, any text."""
    return st.one_of(_spliced(good), _pick(OVERSIZED), st.text(max_size=30))


def _pick(values: Sequence[T]) -> st.SearchStrategy[T]:
    """``sampled_from`` by index: hypothesis shows a strategy's repr in its reports, and
    these values are 100 kB long."""
    return st.sampled_from(range(len(values))).map(lambda i: values[i])


_ZONED_IPS = st.builds(
    lambda a, z: f"{a}%{z}",
    st.sampled_from(["2001:db8::9", "fe80::1", "fdce:18::2", "::ffff:198.18.0.3"]),
    st.sampled_from(ZONES))
_ZONED_CIDRS = st.builds(lambda a, z, p: f"{a}%{z}/{p}",
                         st.sampled_from(["fd00:9::", "fe80::", "::", "fd00:1::"]),
                         st.sampled_from(ZONES), st.sampled_from([0, 48, 64, 128]))


_v4_nets = st.builds(lambda a, p: str(ipaddress.ip_network(f"{a}/{p}", strict=False)),
                     st.ip_addresses(v=4), st.integers(0, 32))
_v6_nets = st.builds(lambda a, p: str(ipaddress.ip_network(f"{a}/{p}", strict=False)),
                     st.ip_addresses(v=6), st.integers(0, 128))

_HOSTILE_CIDRS = st.one_of(
    st.sampled_from([
        "0.0.0.0/0", "::/0", "0.0.0.0/1", "128.0.0.0/1", "::/1",
        "10.1.0.0/16", "10.1.2.0/24", "10.0.0.0/8", "10.101.0.0/16", "fd00:1::/48", "fd00::/8",
        "198.18.0.0/15", "198.18.0.0/24", f"{LOCAL_IP}/32", "198.18.0.2/32",
        "169.254.0.0/16", "fe80::/64", "224.0.0.0/4", "ff02::/16", "127.0.0.0/8", "::1/128",
        "255.255.255.255/32", "0.0.0.0/32",
        "10.2.0.0/16", "10.2.0.0/16", "10.2.128.0/17", "10.3.0.0/16", "fd00:2::/48",
        "10.2.3.4/16", "10.0.0.0/33", "10.0.0/8", "fd00::/129", "abc", "", " 10.4.0.0/16",
        "\uff11\uff10.\uff15.\uff10.\uff10/\uff11\uff16",  # fullwidth digits
        "10.6.0.0/16\n", "10.7.0.0/16\x00", "x" * 5000,
    ]),
    st.text(max_size=30),
    _ZONED_CIDRS, _ZONED_CIDRS,
    hostile_text(st.sampled_from(["10.9.0.0/16", "fd00:9::/64"])),
)

_HOSTILE_IPS = st.one_of(
    st.sampled_from([
        LOCAL_IP, "198.18.0.2", "198.18.0.3", ANY4, "::", "255.255.255.255", "224.0.0.1",
        "ff02::1", "127.0.0.1", "::1", "fe80::1", "10.1.0.1", "", "not an ip",
        "198.18.0.2:5871", "[::1]", "1.2.3", "x" * 5000,
        "\u0661\u0669\u0668.\u0661\u0668.\u0660.\u0662",  # Arabic-Indic digits
    ]),
    st.ip_addresses().map(str), st.text(max_size=20),
    _ZONED_IPS, _ZONED_IPS,
    hostile_text(st.sampled_from(["198.18.0.9", "2001:db8::9"])),
)

_HOSTILE_KEYS = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda b: base64.b64encode(b).decode()),
    st.sampled_from([
        LOCAL_PUBLIC_KEY, "", " ", "A" * 44, "A" * 43 + "=", "=" * 44, "A" * 42 + "==",
        base64.b64encode(bytes(32)).decode(), base64.b64encode(bytes(31)).decode(),
        base64.b64encode(bytes(33)).decode(), "ÿ" * 43 + "=", "x" * 5000,
    ]),
    st.text(max_size=50),
    hostile_text(st.binary(min_size=32, max_size=32).map(
        lambda b: base64.b64encode(b).decode())),
)

_HOSTILE_PORTS = st.one_of(
    st.sampled_from(["", "0", "1", "5871", "65535", "65536", "-1", "²", "٣", "0x10", " 80",
                     "1" * 1000, "00000000005871", str(10**400), "5871\n", "5871%lo"]),
    st.integers().map(str), st.text(max_size=8), hostile_text(st.just("5871")),
)

_HOSTILE_CLUSTER_IDS = st.one_of(
    st.sampled_from(["cluster1", "", "cluster2", "cluster3", "cluster2", "c-ü", "a/b", "..",
                     "x" * 5000, " cluster2", "CLUSTER2"]),
    st.text(max_size=20), hostile_text(st.just("cluster7")),
)


# Plausible cluster ranges (most are accepted, unless they hit the local 10.1/16, 10.101/16).
_v4_cluster_nets = st.builds(
    lambda b, c, p: str(ipaddress.ip_network(f"10.{b}.{c}.0/{p}", strict=False)),
    st.integers(0, 255), st.integers(0, 255), st.integers(12, 28))
_KEY = st.binary(min_size=32, max_size=32).map(lambda b: base64.b64encode(b).decode())
CIDRS = _mostly(st.one_of(st.sampled_from([
    "10.2.0.0/16", "10.3.0.0/16", "10.102.0.0/16", "fd00:2::/48", "10.2.128.0/17",
    "198.18.0.0/15", "198.18.0.0/24", "0.0.0.0/1", "128.0.0.0/1", "10.0.0.0/8", "127.0.0.0/8",
    "169.254.0.0/16", "224.0.0.0/4", "fe80::/64", "ff02::/16", "::1/128", "8000::/1",
    f"{LOCAL_IP}/32", "198.18.0.2/32",
]), _v4_cluster_nets, _v4_cluster_nets, _v4_nets, _v6_nets), _HOSTILE_CIDRS)
IPS = _mostly(st.sampled_from(["198.18.0.2", "198.18.0.3", "198.18.0.4", "fdce:18::2"]),
              _HOSTILE_IPS)
KEYS = _mostly(_KEY, _HOSTILE_KEYS)
PORTS = _mostly(st.sampled_from(["", "5871", "4500"]), _HOSTILE_PORTS)
CLUSTER_IDS = _mostly(st.sampled_from(["cluster2", "cluster3", "cluster4", "cluster5"]),
                      _HOSTILE_CLUSTER_IDS)


TEXT = _mostly(st.sampled_from(["cable", "gw2", "wireguard", "gw-2.example.com"]),
               hostile_text(st.just("gw2")))
IP_LISTS: st.SearchStrategy[list[str]] = st.one_of(st.just([]), st.lists(IPS, max_size=3),
                     st.just(["198.18.0.9"] * 2000))  # oversized lists too


@st.composite
def endpoints(draw: st.DrawFn) -> Endpoint:
    """A well-formed Endpoint object (right JSON types) with hostile values in every field:
    zones, control characters, injected UAPI lines and oversized values among them."""
    config = {"publicKey": draw(KEYS)}
    if draw(st.booleans()):
        config["udp-port"] = draw(PORTS)
    if draw(st.booleans()):
        config[draw(_mostly(st.just("interface-name"), TEXT))] = draw(TEXT)
    return Endpoint(
        cluster_id=draw(CLUSTER_IDS),
        cable_name=draw(TEXT),
        hostname=draw(TEXT),
        subnets=draw(st.lists(CIDRS, min_size=draw(st.sampled_from([0, 1, 1, 1])), max_size=4)),
        private_ip=draw(IPS),
        public_ip=draw(st.one_of(st.just(""), IPS)),
        nat_enabled=draw(st.booleans()),
        health_check_ip=draw(st.one_of(st.just(""), IPS)),
        backend=draw(_mostly(st.just("wireguard"), st.one_of(
            st.sampled_from(["", "libreswan", "ü"]), hostile_text(st.just("wireguard"))))),
        backend_config=config,
        private_ips=draw(_mostly_list(IP_LISTS)),
        public_ips=draw(_mostly_list(IP_LISTS)),
        health_check_ips=draw(_mostly_list(IP_LISTS)),
    )


def _mostly_list(hostile: st.SearchStrategy[list[str]]) -> st.SearchStrategy[list[str]]:
    return st.tuples(st.integers(0, 3), hostile).map(lambda t: t[1] if t[0] == 3 else [])


HUGE_NUMBERS: list[int | float] = [10**400, -(10**400), 2**64, 1e308, -1e308]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | _pick(HUGE_NUMBERS) | _pick(OVERSIZED),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12,
)
_FIELDS = ["cluster_id", "cable_name", "hostname", "subnets", "private_ip", "public_ip",
           "nat_enabled", "backend", "backend_config", "healthCheckIP", "private_ips",
           "public_ips", "healthCheckIPs"]


@st.composite
def raw_documents(draw: st.DrawFn) -> tuple[str, str]:
    """(suffix, text): a document that is not what an Endpoint should be, in some way."""
    kind = draw(st.sampled_from(["wrong-types", "any-json", "bytes", "yaml"]))
    if kind == "wrong-types":
        ep = draw(endpoints()).to_k8s_object()
        spec = ep["spec"]
        for field in draw(st.lists(st.sampled_from(_FIELDS), min_size=1, max_size=3)):
            spec[field] = draw(_json)
        return ".json", json.dumps(ep)
    if kind == "any-json":
        return ".json", json.dumps(draw(_json))
    if kind == "bytes":
        return draw(st.sampled_from([".json", ".yaml"])), draw(st.text(max_size=200))
    return ".yaml", draw(st.sampled_from([
        "spec: {cluster_id: y, subnets: [10.9.0.0/16], backend_config: {publicKey: !!binary AAAA}}",
        "!!python/object/apply:os.system ['true']",
        "a: &a [*a]",
        "a: &a ['x','x']\nb: &b [*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b]\nspec: [*c,*c,*c,*c]",
        "spec:\n  cluster_id: yaml\n  subnets: ['0.0.0.0/0']\n  private_ip: 198.18.0.9\n"
        "  backend_config: {publicKey: " + base64.b64encode(b"k" * 32).decode() + "}",
        "[" * 10000,
        "---\n...\n---\n",
    ]))


# An address whose zone wireguard-go accepts ("lo"), so that the ``endpoint=`` line it is
# rendered into is valid and the lines smuggled after it are applied too.
WORKING_INJECTION = "2001:db8::9%lo]:5871" + INJECTED_LINES + "\nendpoint=[2001:db8::9"


@st.composite
def injections(draw: st.DrawFn) -> Endpoint:
    """An endpoint valid in every way but one address, which carries UAPI lines that would
    work: the random fields of ``endpoints`` seldom line up for that."""
    nat = draw(st.booleans())
    good = draw(st.sampled_from(["198.18.0.9", "2001:db8::9"]))
    return Endpoint(
        cluster_id=draw(st.sampled_from(["cluster6", "cluster7"])),
        cable_name="cable", hostname="gw6",
        subnets=[draw(st.sampled_from(["10.6.0.0/16", "fd00:6::/64"]))],
        private_ip=good if nat else WORKING_INJECTION,
        public_ip=WORKING_INJECTION if nat else draw(st.sampled_from(["", good])),
        nat_enabled=nat,
        health_check_ip=draw(st.sampled_from(["", "10.6.0.1", WORKING_INJECTION])),
        backend="wireguard",
        backend_config={"publicKey": draw(_KEY)},
    )


STORE_ENTRIES = st.lists(
    st.one_of(endpoints().map(lambda e: ("endpoint", e)),
              raw_documents().map(lambda d: ("raw", d)),
              injections().map(lambda e: ("endpoint", e))),
    max_size=8,
)


def write_entries(directory: Path, entries: list[tuple[str, object]], local: Local,
                  prefix: str = "fuzz") -> None:
    """Write the drawn entries as store files named ``<prefix><n>`` (file names are not
    fuzzed: the store's own tests cover those)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, (kind, item) in enumerate(entries):
        if kind == "endpoint":
            assert isinstance(item, Endpoint)
            suffix, text = ".json", json.dumps(item.to_k8s_object())
        else:
            assert isinstance(item, tuple)
            suffix, text = item
        text = (text.replace(LOCAL_PUBLIC_KEY, local.public_key)
                .replace(LOCAL_IP, local.private_ip)
                .replace(VICTIM_KEY_HEX, local.victim_key_hex or "cd" * 32))
        (directory / f"{prefix}{i}{suffix}").write_text(text)
