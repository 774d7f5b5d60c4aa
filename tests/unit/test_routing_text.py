"""What reaches ``ip -batch``: one command per line, never a zone (issue 15)."""

from __future__ import annotations

import ipaddress

import pytest

from wgcable.routing.iproute import IPRoute, RoutingError
from wgcable.routing.table import Route

ZONED = "fd00:5::%x\nroute flush table main\n"


def test_injection_a_route_with_a_zoned_destination_is_refused() -> None:
    with pytest.raises(ValueError, match="zone"):
        Route(ipaddress.ip_network(ZONED + "/64"), "subwg0")


def test_injection_a_route_with_a_zoned_source_is_refused() -> None:
    with pytest.raises(ValueError, match="zone"):
        Route(ipaddress.ip_network("fd00:5::/64"), "subwg0", ipaddress.ip_address(ZONED))


def test_injection_ip_batch_refuses_a_command_with_a_newline(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    ran: list[object] = []
    monkeypatch.setattr("subprocess.run", lambda *a, **k: ran.append(a))
    with pytest.raises(RoutingError, match="control character"):
        IPRoute().batch(["route replace 10.2.0.0/16 dev subwg0 table 220\nroute flush table main"])
    assert ran == []  # nothing was started
