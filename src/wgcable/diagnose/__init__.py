"""`wgcable diagnose`: one line per check of a gateway, each pass, warn or fail with its fix.

`result.py` the outcome of a check and its forms (text line, JSON); `checks.py` the pure
judgement of facts; `masquerade.py` which NAT rules of the ruleset would hit cross-cluster
traffic (pure); `host.py` reads the live state (device, routes, rules, nft, sysctls, key
file, the agent's status); `probes.py` sends the probes (ping through the tunnel, DF at the
tunnel MTU, NAT discovery); `broker.py` the Kubernetes broker (reachability, clock skew,
RBAC by dry-run writes); `gateway.py` runs them all for one gateway's settings.
"""
