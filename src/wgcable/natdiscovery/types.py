"""What NAT discovery is asked about and what it answers: a target, a choice, the timings."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PORT = 4490  # Submariner's default NAT discovery port
BACKEND_CONFIG_KEY = "natt-discovery-port"  # where an Endpoint publishes it

HOW_DISCOVERED = "discovered"
HOW_STATIC = "static rule"


@dataclass(frozen=True)
class Target:
    """One remote gateway to probe: its Endpoint's addresses and discovery port.

    ``port`` 0 means the remote publishes no discovery port: it is not probed, and the
    static rule decides at once (as Submariner does for a remote that does not speak the
    protocol). Text here comes from another cluster; it is parsed before use and shown only
    through ``wgcable.safetext``.
    """

    cluster_id: str
    endpoint_id: str  # the remote's bare cable name; the wire form is the requester's to pick
    private_ip: str  # "" when absent
    public_ip: str  # "" when absent
    port: int  # the remote's natt-discovery-port; 0 = not published -> not probed
    nat_enabled: bool  # for the static fallback rule


@dataclass(frozen=True)
class Choice:
    """The address to use for a remote gateway, whether NAT is on the way, and why."""

    use_ip: str  # one of the target's own strings (private_ip or public_ip), as given
    use_nat: bool
    how: str  # HOW_DISCOVERED or HOW_STATIC
    detail: str  # short and safe to log: built from parsed addresses and numbers only


@dataclass(frozen=True)
class Timings:
    """How the requester paces itself (seconds). Submariner resends every 2 s, prefers a
    private answer that comes within 1 s of a public one, and gives up after 60 s.

    Ours resends sooner after the first probe (``resend``: the gaps between sends, the last
    one repeating), so that one lost datagram costs 0.5 s, not 2 s. A public answer is held
    for ``private_window`` before it is taken, so that a private answer (better: no NAT, no
    hairpin) that comes just after it still wins, without a second, changed choice.
    """

    resend: tuple[float, ...] = (0.5, 1.0, 2.0)
    private_window: float = 1.0
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if not self.resend or any(gap <= 0 for gap in self.resend):
            raise ValueError("resend gaps must be positive, and there must be one at least")
        if self.private_window < 0 or self.timeout <= 0:
            raise ValueError("private_window must be >= 0 and timeout > 0")

    def gap(self, sent: int) -> float:
        """The wait after the ``sent``-th probe to one address (1 = the first)."""
        return self.resend[min(sent, len(self.resend)) - 1]
