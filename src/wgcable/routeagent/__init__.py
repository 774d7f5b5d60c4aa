"""The route agent: on every node, send the remote clusters' CIDRs to the cluster's active
gateway over a VXLAN device, and let the gateway node take that traffic into the cable."""
