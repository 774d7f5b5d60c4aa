"""The gateway agent: configuration, the run loop, and its local status file."""
