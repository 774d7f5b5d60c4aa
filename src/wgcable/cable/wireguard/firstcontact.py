"""First contact between two gateways: one of them answers first.

Two gateways that learn of each other at the same moment (both agents starting, both
Endpoints published together) would both send a handshake initiation at once. Crossed
initiations each overwrite the other side's handshake state: both answers are dropped and
the tunnel waits out WireGuard's 5 s retry (the kernel too). On wireguard-go it can be
worse: its two handshake workers race, and one direction may stay dead for 15 s while both
sides show a handshake (docs/architecture.md has the figures).

So the side with the greater public key adds a *new* peer without its keepalive, which is
what makes WireGuard initiate the moment a peer is added; it then only answers, unless it
has data to send. Once a handshake came in, or after the wait if none did, the peer gets
its keepalive (which initiates, if no handshake came). A peer is not new when the device
lost it or we removed it lately: the remote most likely still has us and will not initiate
soon, so we do, at once. Nor is the peer of a new key that replaces a remote's tunnel that
had handshakes (``replacing``): the remote rotated its key (``WireGuardDriver.rotate_key``),
already switched, and holds packets for us until a handshake, which it initiated while we
did not know its key; it retries only after 5 s.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass

from wgcable.wgctrl import Key, Peer, UDPAddr

# WireGuard's REJECT_AFTER_TIME: a remote's session with a peer we removed is dead after
# this, and it initiates again itself.
RECENTLY_REMOVED = 180.0
REMOVED_KEPT = 4096  # beyond this many remembered removals, the expired ones are dropped


@dataclass(slots=True)
class Waiting:
    due: float  # clock time at which we initiate ourselves
    want: Peer  # the peer as wanted now
    published: UDPAddr | None  # its endpoint when it was added


class FirstContact:
    def __init__(self, wait: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.wait = wait  # 0: never wait
        self.clock = clock
        self.own_key: Key | None = None  # ours; None: never wait
        self.waiting: dict[Key, Waiting] = {}
        self.removed: dict[Key, float] = {}  # when we removed a peer lately
        self.replacing: set[Key] = set()  # new keys of remotes whose tunnel was up

    def _answers_first(self, p: Peer) -> bool:
        return (self.wait > 0 and self.own_key is not None and p.persistent_keepalive > 0
                and p.endpoint is not None and self.own_key.raw > p.public_key.raw)

    def _removed_lately(self, key: Key) -> bool:
        removed = self.removed.get(key)
        return removed is not None and self.clock() - removed <= RECENTLY_REMOVED

    def shape(self, p: Peer, *, present: bool, written: bool) -> Peer:
        """``p`` as it goes to the device now. ``present``: the peer is there (as far as
        this write knows); ``written``: we wrote it before (a peer the device lost)."""
        w = self.waiting.get(p.public_key)
        if w is not None and present:
            w.want = p  # still waiting
        elif (not present and not written and not self._removed_lately(p.public_key)
              and p.public_key not in self.replacing and self._answers_first(p)):
            self.waiting[p.public_key] = Waiting(self.clock() + self.wait, p, p.endpoint)
        else:
            self.waiting.pop(p.public_key, None)  # lost while waiting: able to initiate
            return p
        return dataclasses.replace(p, persistent_keepalive=0)

    def keep_only(self, wanted: Container[Key]) -> None:
        """Forget the waiting peers that are no longer wanted (cheap: few ever wait)."""
        for k in [k for k in self.waiting if k not in wanted]:
            del self.waiting[k]
        self.replacing = {k for k in self.replacing if k in wanted}

    def replaces(self, key: Key) -> None:
        """``key`` is a remote's new key, replacing its tunnel that had handshakes: its
        peer initiates at once (a key rotation, not a first contact)."""
        self.replacing.add(key)

    def note_removed(self, keys: Iterable[Key]) -> None:
        now = self.clock()
        if len(self.removed) > REMOVED_KEPT:  # bounded: forget the expired ones
            self.removed = {k: t for k, t in self.removed.items()
                            if now - t <= RECENTLY_REMOVED}
        self.removed.update((k, now) for k in keys)

    def next_due(self) -> float | None:
        return min((w.due for w in self.waiting.values()), default=None)

    def release(self, on_device: Mapping[Key, Peer], *, all_now: bool = False
                ) -> list[tuple[Peer, Peer]]:
        """The waiting peers that had a handshake or are due (all, ``all_now``), no longer
        waiting: (as on the device, as wanted now). One with a handshake keeps the endpoint
        it roamed to, unless a new one was published meanwhile."""
        out = []
        now = self.clock()
        for key, w in list(self.waiting.items()):
            have = on_device.get(key)
            if have is None:
                del self.waiting[key]  # removed meanwhile
            elif have.last_handshake is not None or now >= w.due or all_now:
                del self.waiting[key]
                roamed = have.last_handshake is not None and w.want.endpoint == w.published
                out.append((have, dataclasses.replace(w.want, endpoint=None) if roamed
                            else w.want))
        return out
