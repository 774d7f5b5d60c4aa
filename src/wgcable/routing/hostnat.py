"""Whether the host has NAT of its own, so that our SNAT exemption's NAT chain is needed.

Our exemption is a null binding in a postrouting NAT chain (``nftables.py``). It only
matters where something else may rewrite the pods' source: another NAT chain on the
postrouting hook. Where there is none, the chain exempts from nothing and only costs: a NAT
chain turns connection tracking on for every packet of the namespace (issue 16: TCP
through the tunnel 0.89x of a hand-built one with it, 1.01x without).

The host has NAT when:

- any nftables table but ours, of any family (iptables-nft's ``ip nat`` included), has a
  chain of type ``nat`` on the postrouting hook, whatever its rules. ``inet wgcable_*``
  tables are wgcable's own (this driver's, another device's, the route agent's) and hold
  null bindings only: they rewrite nothing, so they do not count;
- or legacy iptables has its ``nat`` table in this namespace: ``nat`` in
  ``/proc/net/ip_tables_names`` or ``ip6_tables_names``. Legacy rules send no nftables
  notifications; the files are opened once in the namespace and re-read (one small read
  each) on the driver's periodic paths.

``found`` is pure; ``LegacyNat`` reads the files; ``netlink/nfwatch.py`` says when the
nftables part may have changed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from typing import Any

from wgcable.netlink.netns import call_in_netns
from wgcable.routing.nftables import TABLE_PREFIX

LEGACY_FILES = ("ip_tables_names", "ip6_tables_names")
NO_NAT = "no NAT on this host"


def nat_chains(chains: Iterable[Mapping[str, Any]]) -> list[str]:
    """Each postrouting NAT chain outside wgcable's own tables, as ``table ip X chain Y``
    (``chains``: ``nft -j list chains`` chain objects)."""
    out = []
    for c in chains:
        if c.get("type") != "nat" or c.get("hook") != "postrouting":
            continue
        family, table = str(c.get("family")), str(c.get("table"))
        if family == "inet" and table.startswith(TABLE_PREFIX):
            continue  # ours, or another wgcable's: null bindings, no NAT
        out.append(f"table {family} {table} chain {c.get('name')}")
    return out


def legacy_nat(texts: Iterable[str]) -> bool:
    """Whether legacy iptables has a ``nat`` table: the contents of ``LEGACY_FILES``."""
    return any("nat" in text.split() for text in texts)


def found(chains: Iterable[Mapping[str, Any]], legacy: bool) -> str | None:
    """Why the host has NAT (for the log: ``host NAT found in ...``), or None."""
    where = nat_chains(chains)
    if where:
        return "host NAT found in " + ", ".join(where)
    if legacy:
        return "host NAT found in legacy iptables (table nat)"
    return None


class LegacyNat:
    """Legacy iptables' table names of one namespace, from files opened there once.

    A /proc/net file belongs to the namespace it was opened in; re-reading an open one is
    one small read, no thread and no namespace switch. A file that is missing (the
    ``ip_tables`` module not loaded: then there are no legacy tables at all) is looked for
    again by ``reopen``, on the driver's resync."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._fds: dict[str, int] = {}

    def reopen(self) -> None:
        """Open the files not open yet (in the namespace: a thread there opens them)."""
        missing = [n for n in LEGACY_FILES if n not in self._fds]
        if not missing:
            return

        def open_all() -> dict[str, int]:
            fds = {}
            for name in missing:
                # thread-self: the calling thread's namespace (self is the process's).
                with contextlib.suppress(OSError):
                    fds[name] = os.open(f"/proc/thread-self/net/{name}",
                                        os.O_RDONLY | os.O_CLOEXEC)
            return fds
        self._fds.update(call_in_netns(self.netns, open_all))

    def present(self) -> bool:
        """Whether ``nat`` is among the legacy tables now (of the files open)."""
        texts = []
        for name, fd in list(self._fds.items()):
            try:
                texts.append(os.pread(fd, 4096, 0).decode(errors="replace"))
            except OSError:  # the namespace went away: looked for again at the next reopen
                self._close(name)
        return legacy_nat(texts)

    def _close(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        for name in list(self._fds):
            self._close(name)
