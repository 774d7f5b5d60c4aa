"""Whether the SNAT exemption's NAT chain belongs in our table now, and a thread that says
when that may have changed (``routing/hostnat.py`` has the rule, ``netlink/nfwatch.py``
the notifications).

The driver asks ``check`` on its own paths: ``full`` on start-up and resync (the chains
listed, the legacy files looked for again), cheap on status reads (the legacy files
re-read; the nftables part as the watcher last left it, or listed when there is no
watcher). The watcher thread calls back within milliseconds of another table's tables or
chains changing; the callback takes the driver's lock and writes through its usual path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Any, Protocol

from wgcable.netlink.netns import call_in_netns
from wgcable.netlink.nfwatch import NFPROTO_INET, NftWatch
from wgcable.routing import hostnat

log = logging.getLogger(__name__)


def unbind_logged(delete: Callable[[], int]) -> None:
    """Run ``delete`` (``conntrack.delete_masqueraded`` for a table's networks, in its
    namespace) and log what it did. A failure is logged, never raised: a pass or a status
    read must not fail for a clean-up."""
    try:
        n = delete()
    except Exception as e:
        log.warning("deleting connection tracking entries masqueraded before the SNAT "
                    "exemption's chain was loaded failed: %s", e)
        return
    if n:
        log.info("deleted %d connection tracking entr%s masqueraded before the SNAT "
                 "exemption's chain was loaded", n, "y" if n == 1 else "ies")


class Chains(Protocol):
    name: str

    def chains(self, family: str | None = None) -> list[dict[str, Any]]: ...


class NatChain:
    """The decision (``needed``, ``why``) and its watcher, for one table in one namespace."""

    def __init__(self, nft: Chains, netns: str | None, watch: bool = True) -> None:
        self.nft = nft
        self.netns = netns
        self._want_watch = watch
        self._legacy = hostnat.LegacyNat(netns)
        self._nft_why: str | None = None  # the nftables part, as last listed
        # The watcher's count of changes seen, and its value when the chains were last
        # listed: a change during a listing is listed again at the next look.
        self._changes = 0
        self._listed_at = -1
        self.why: str | None = None  # why the host has NAT; None: it has none
        self.needed = True  # until known: an idle chain costs, a missing one breaks
        self._decided = False
        self._watch: NftWatch | None = None
        self._thread: threading.Thread | None = None
        self._stop_fds: tuple[int, int] | None = None

    @property
    def watching(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def own_changes(self) -> int | None:
        """How many changes of our own table's tables and chains the watcher has seen (a
        count that moves on any, lost notifications included); None without a watcher."""
        watch = self._watch
        return watch.own if watch is not None and self.watching else None

    def check(self, full: bool) -> bool:
        """Look again; True when ``needed`` changed (or was decided for the first time).
        Raises when the chains cannot be listed (the decision then stays as it was)."""
        changes = self._changes
        if full or self._listed_at != changes or not self.watching:
            self._listed_at = -1
            chains = [c for c in self.nft.chains() if not (
                c.get("family") == "inet" and c.get("table") == self.nft.name)]
            self._nft_why = hostnat.found(chains, legacy=False)
            self._listed_at = changes
        if full:
            self._legacy.reopen()
        why = self._nft_why or hostnat.found((), legacy=self._legacy.present())
        changed = (why is not None) != self.needed or not self._decided
        self.why, self.needed, self._decided = why, why is not None, True
        return changed

    def reason(self) -> str:
        return self.why or hostnat.NO_NAT

    # --- the watcher ------------------------------------------------------------------

    def start(self, on_change: Callable[[], None]) -> None:
        """Watch the namespace's nftables notifications; ``on_change`` runs on the
        watcher's thread when another table's tables or chains changed. Without the
        socket (no permission, an old kernel) status reads list the chains instead."""
        if not self._want_watch or self._thread is not None:
            return
        try:
            self._watch = call_in_netns(self.netns, NftWatch)
        except OSError as e:
            log.warning("cannot watch nftables notifications (%s): host NAT is looked for "
                        "at each status read", e)
            return
        self._stop_fds = os.pipe()
        self._thread = threading.Thread(target=self._run,
                                        args=(self._watch, self._stop_fds[0], on_change),
                                        name=f"nat-watch:{self.nft.name}", daemon=True)
        self._thread.start()

    def _run(self, watch: NftWatch, stop_fd: int, on_change: Callable[[], None]) -> None:
        poller = select.poll()
        poller.register(watch.fileno(), select.POLLIN)
        poller.register(stop_fd, select.POLLIN)
        ours = (NFPROTO_INET, self.nft.name)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if stop_fd in ready:
                return
            try:
                if not watch.changed(ours):
                    continue
                self._changes += 1  # the next check lists again, whoever makes it
                on_change()
            except Exception:  # status reads take over: they list the chains
                log.exception("watching nftables notifications failed; host NAT is looked "
                              "for at each status read from now")
                return

    def close(self) -> None:
        """Stop the watcher and close its socket and the legacy files (idempotent)."""
        if self._stop_fds is not None:
            with contextlib.suppress(OSError):
                os.write(self._stop_fds[1], b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._thread = None
        for fd in self._stop_fds or ():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stop_fds = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._legacy.close()
