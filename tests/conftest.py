"""Shared pytest configuration for the wgcable test suite."""

# kernel_vm runs the tests marked `kernel` inside a virtme-ng VM when this kernel lacks WireGuard.
pytest_plugins = ["kernel_vm"]
