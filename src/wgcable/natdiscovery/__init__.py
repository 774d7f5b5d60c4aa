"""NAT discovery, wire-compatible with Submariner's: which address of a remote gateway to use
(private or public) and whether NAT is on the way, found by asking it over UDP."""
