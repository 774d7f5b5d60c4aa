"""The ``wireguard`` cable driver."""

from wgcable.cable.driver import register_driver
from wgcable.cable.wireguard.config import WireGuardConfig
from wgcable.cable.wireguard.desired import EndpointRejectedError
from wgcable.cable.wireguard.driver import DRIVER_NAME, WireGuardDriver

register_driver(DRIVER_NAME, WireGuardDriver)

__all__ = ["EndpointRejectedError", "WireGuardConfig", "WireGuardDriver"]
