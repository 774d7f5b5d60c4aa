"""Gateway high availability: a lease per cluster, one active gateway, warm standbys."""
