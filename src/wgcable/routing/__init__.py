"""Routing: the routes and rule that send cross-cluster traffic into the WireGuard device."""

from wgcable.routing.iproute import IPRoute, RoutingError
from wgcable.routing.table import Route, RouteTable

__all__ = ["IPRoute", "Route", "RouteTable", "RoutingError"]
