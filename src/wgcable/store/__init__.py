"""Endpoint stores: the embedded directory store, and (separately) Kubernetes."""

from wgcable.store.base import EndpointStore, Snapshot

__all__ = ["EndpointStore", "Snapshot"]
