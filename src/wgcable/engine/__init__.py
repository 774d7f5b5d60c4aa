"""The engine: reconcile the store's endpoints into cables, with health and metrics."""
