"""wgcable: a WireGuard cable driver for multi-cluster Kubernetes networking."""

__version__ = "0.1.0"
