"""Routing: the routes and rule that send cross-cluster traffic into the WireGuard device,
and our nftables table (SNAT exemption, MSS clamping) in ``nftables``."""

from wgcable.routing.iproute import IPRoute, RoutingError
from wgcable.routing.nftables import NftError, NftTable
from wgcable.routing.table import Route, RouteTable

__all__ = ["IPRoute", "NftError", "NftTable", "Route", "RouteTable", "RoutingError"]
