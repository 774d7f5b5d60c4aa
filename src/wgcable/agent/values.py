"""Parsers of setting values: a raw value (a flag's or variable's string, or any YAML value)
in, a typed value out, or `Invalid` with one message per problem, each starting with the
offending value (the loader prefixes the setting's name and source)."""

from __future__ import annotations

import enum
import ipaddress
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, TypeVar

from wgcable.cable import driver_names
from wgcable.cable.wireguard import psk
from wgcable.wgctrl import Key

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LogLevel = Literal["debug", "info", "warning", "error"]

T = TypeVar("T")

LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
# Tables 253-255 are the kernel's default, main and local tables.
_RESERVED_TABLES = {253: "default", 254: "main", 255: "local"}


class Unset(enum.Enum):
    """What a setting with no value and no default gets: the loader fills it in or refuses."""

    REQUIRED = "required"  # refused: the setting must be given
    DETECT = "detect"  # found on the host at load time (also what "auto" asks for)


REQUIRED = Unset.REQUIRED
DETECT = Unset.DETECT


class Invalid(ValueError):
    """A value is wrong; one message per problem, each starting with the offending value."""

    def __init__(self, *messages: str) -> None:
        self.messages = list(messages)
        super().__init__("; ".join(messages))


def text(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid(f"{value!r} is not a string (quote it in YAML)")
    stripped = value.strip()
    if not stripped:
        raise Invalid(f"{value!r} is empty")
    return stripped


def integer(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        # bool is an int to Python, but `port: true` is surely a mistake.
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
            number = int(value)
        else:
            raise Invalid(f"{value!r} is not a whole number")
        if not low <= number <= high:
            raise Invalid(f"{value!r} is out of range ({low}-{high})")
        return number

    return parse


port = integer(1, 65535)
keepalive = integer(1, 65535)
metrics_port = integer(0, 65535)  # 0 turns the metrics endpoint off
optional_port = integer(0, 65535)  # 0 turns the service off
rule_priority = integer(1, 32765)  # 0, 32766 and 32767 are the kernel's own rules
_mtu_number = integer(1280, 65535)  # 1280: the IPv6 minimum


def table(value: object) -> int:
    number = integer(1, 2**32 - 1)(value)
    if number in _RESERVED_TABLES:
        raise Invalid(f"{value!r} is the kernel's {_RESERVED_TABLES[number]} table")
    return number


def mtu(value: object) -> int | None:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    return _mtu_number(value)


def seconds(value: object) -> float:
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or number <= 0:
        raise Invalid(f"{value!r} is not a positive number of seconds")
    return number


_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise Invalid(f"{value!r} is not a boolean (true/false, yes/no, 1/0)")


def choice(options: Sequence[T]) -> Callable[[object], T]:
    def parse(value: object) -> T:
        lowered = text(value).lower()
        for option in options:
            if option == lowered:
                return option
        raise Invalid(f"{value!r} is not one of {', '.join(map(str, options))}")

    return parse


def cable_driver(value: object) -> str:
    # Asks the registry each time, not at import: drivers may register after this module.
    return choice(driver_names())(value)


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?")


def dns_label(what: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        label = text(value)
        if len(label) > 63 or not _DNS_LABEL.fullmatch(label):
            raise Invalid(f"{value!r} is not {what}"
                          "(lowercase letters, digits and '-', at most 63)")
        return label

    return parse


cluster_id = dns_label("a DNS-1123 label ")
namespace = dns_label("a namespace name, a DNS-1123 label ")


def hostname(value: object) -> str:
    # Checked because stores name files after it: a '/' must never get through.
    name = text(value)
    labels = name.split(".")
    if len(name) > 253 or not all(len(x) <= 63 and _HOST_LABEL.fullmatch(x) for x in labels):
        raise Invalid(f"{value!r} is not a host name")
    return name


def device(value: object) -> str:
    # The kernel's dev_valid_name(): below IFNAMSIZ (16), no '/', ':' or space, not . or ..
    name = text(value)
    if len(name) > 15 or name in (".", "..") or re.search(r"[/:\s]", name):
        raise Invalid(f"{value!r} is not a network device name "
                      "(1-15 characters, no '/', ':' or whitespace)")
    return name


def address(value: object) -> IPAddress:
    stripped = text(value)
    try:
        return ipaddress.ip_address(stripped)
    except ValueError:
        raise Invalid(f"{value!r} is not an IP address") from None


def endpoint_address(value: object) -> IPAddress:
    """An address other gateways can aim at."""
    if isinstance(value, str) and "%" in value:  # a zone is free text: it would be published
        raise Invalid(f"{value!r} has a zone ('%'); give the address alone")
    found = address(value)
    if found.is_unspecified or found.is_multicast:
        raise Invalid(f"{value!r} is not a unicast address")
    return found


def health_check_ip(value: object) -> IPAddress | None:
    """An address, or ``none`` (None). (``auto``, detection, is the loader's.)"""
    if isinstance(value, str) and value.strip().lower() == "none":
        return None
    return endpoint_address(value)


def psk_text(value: object) -> Key:
    """A preshared key text, as Submariner's ``CE_IPSEC_PSK``: the key is its SHA-256. Any
    text, the empty one included, taken as it is. A secret: no message shows it."""
    if not isinstance(value, str):
        raise Invalid(f"(a {type(value).__name__}, not shown: a secret) is not a text "
                      "(quote it in YAML)")
    return psk.from_text(value)


def _items(value: object) -> Iterator[str]:
    """Comma-separated strings, alone or in a list (repeated flags, YAML lists)."""
    values = value if isinstance(value, list) else [value]
    for item in values:
        if not isinstance(item, str):
            raise Invalid(f"{item!r} is not a string (quote it in YAML)")
        yield from (x.strip() for x in item.split(",") if x.strip())


def cidrs(value: object) -> list[IPNetwork]:
    networks: list[IPNetwork] = []
    problems: list[str] = []
    for item in _items(value):
        if "/" not in item:  # ip_network() would take a bare address as a /32
            problems.append(f"{item!r} is not a CIDR")
            continue
        if "%" in item:
            problems.append(f"{item!r} has a zone ('%'); give the network alone")
            continue
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError:
            try:
                network = ipaddress.ip_network(item, strict=False)
            except ValueError:
                problems.append(f"{item!r} is not a CIDR")
            else:
                problems.append(f"{item!r} has host bits set (the network is {network})")
    if problems:
        raise Invalid(*problems)
    return networks
