"""Cable drivers: Submariner's API types, the driver contract and the registry of drivers."""

from wgcable.cable.driver import (
    Driver,
    DriverFactory,
    UnknownDriverError,
    driver_names,
    new_driver,
    register_driver,
    unregister_driver,
)
from wgcable.cable.types import (
    Connection,
    ConnectionStatus,
    Endpoint,
    EndpointFormatError,
    GatewayStatus,
    HAStatus,
    LatencyRTT,
    NATEndpointInfo,
    cable_name_for,
)

__all__ = [
    "Connection",
    "ConnectionStatus",
    "Driver",
    "DriverFactory",
    "Endpoint",
    "EndpointFormatError",
    "GatewayStatus",
    "HAStatus",
    "LatencyRTT",
    "NATEndpointInfo",
    "UnknownDriverError",
    "cable_name_for",
    "driver_names",
    "new_driver",
    "register_driver",
    "unregister_driver",
]

# Drivers register themselves on import; importing them here makes them always available.
from wgcable.cable import wireguard as _wireguard  # noqa: F401
