"""The lab: simulated clusters in network namespaces on one machine."""
