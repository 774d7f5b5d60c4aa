"""Probing one remote gateway: what to send when, which answers count, and the choice (pure:
the time is passed in, and nothing here touches a socket).

As Submariner's requester: both the private and the public IP are probed (the public one
only when present and different); a private answer counts only when it comes from that
private IP and the discovery port; an answer counts only for an outstanding request of ours
and from the remote we addressed; NAT_DETECTED means "use NAT"; the other response types
are refusals; without an answer the static rule decides after the timeout; a remote with no
discovery port is not probed.

Endpoint IDs go out in the form of Submariner's dual-stack code (``<cable>-v4``/``-v6``);
a remote that refuses it as UNKNOWN_DST_ENDPOINT (its earlier releases know only the bare
cable name) is asked again at once with bare names, and the other way round.

Beyond Submariner:
- Request numbers are 64 random bits each (Submariner counts up from a random start, so one
  seen request tells the next), and each is used once: a replayed answer finds nothing.
  An answer to an earlier probe of the same address still counts (a resent probe's first
  copy may be the one that arrived).
- Resends back off from 0.5 s (``Timings``), and a public answer is held for
  ``private_window`` before it is taken, so a private answer just after it wins without a
  second, changed choice. With one address dead the choice comes within about 1 s.
- Each address is probed in its own family (IPv4 or IPv6); an address of a family we have
  no socket for is not probed.
"""

from __future__ import annotations

import enum
import secrets
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from wgcable.natdiscovery.messages import (
    EndpointDetails,
    Response,
    ResponseType,
    family_endpoint_id,
)
from wgcable.natdiscovery.responder import IPAddress, parse_ip
from wgcable.natdiscovery.types import HOW_DISCOVERED, Choice, Target, Timings

_MAX_OUTSTANDING = 16  # per address: 60 s of resends every 2 s stay well within it
_NEVER = float("inf")


class Path(enum.Enum):
    PRIVATE = "private"
    PUBLIC = "public"


class Verdict(enum.Enum):
    """What became of an answer."""

    ACCEPTED = "accepted"  # it made the choice
    HELD = "held"  # a public answer, taken when the private window has passed
    DECIDED = "already decided"
    MALFORMED = "malformed response"  # no sender, receiver or received_src (as Submariner)
    WRONG_SENDER = "unexpected sender"
    UNKNOWN_NUMBER = "unknown or used request number"
    WRONG_RECEIVER = "receiver is not who asked"
    WRONG_SOURCE = "private answer from another address"
    REFUSED = "remote refused the request"  # UNKNOWN_DST_* or MALFORMED, for one of ours


@dataclass(frozen=True)
class ProbeSend:
    """One request to send: to ``address``:``port``, numbered ``request_number``, from
``sender`` (us) to ``receiver`` (the remote), each in the naming form of the moment."""

    path: Path
    address: IPAddress
    port: int
    request_number: int
    sender: EndpointDetails
    receiver: EndpointDetails


@dataclass(frozen=True)
class Fallback:
    """No discovery: the caller's static rule decides. ``detail`` says why (safe)."""

    detail: str


@dataclass
class _Sent:
    at: float
    sender: EndpointDetails
    receiver: EndpointDetails


@dataclass
class _Address:
    path: Path
    text: str  # the target's own string, returned in the choice
    address: IPAddress
    next_at: float
    sent: int = 0
    outstanding: OrderedDict[int, _Sent] = field(default_factory=OrderedDict)


@dataclass(frozen=True)
class _Held:
    choice: Choice
    until: float


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _new_number() -> int:
    return secrets.randbits(64)


class TargetProbe:
    """The discovery of one target, from its first probe to its choice."""

    def __init__(self, target: Target, now: float, *, timings: Timings,
                 versions: Collection[int] = (4, 6),
                 new_number: Callable[[], int] = _new_number) -> None:
        self.target = target
        self.timings = timings
        self.started = now
        self._new_number = new_number
        self._bare_names = False  # True: Submariner's names before dual-stack (see above)
        self._renamed = False
        self._decision: Choice | Fallback | None = None
        self._taken = False
        self._held: _Held | None = None
        self._refusal: ResponseType | None = None
        self._addresses: list[_Address] = []
        if target.port == 0:
            self._decide(Fallback("no discovery port published"))
            return
        if not 0 < target.port < 65536:
            self._decide(Fallback("discovery port out of range"))
            return
        private = parse_ip(target.private_ip)
        public = parse_ip(target.public_ip)
        if private is not None and private.version in versions:
            self._addresses.append(_Address(Path.PRIVATE, target.private_ip, private, now))
        if public is not None and public.version in versions and public != private:
            self._addresses.append(_Address(Path.PUBLIC, target.public_ip, public, now))
        if not self._addresses:
            self._decide(Fallback("no address to probe"))

    # --- the outcome -----------------------------------------------------------------------

    @property
    def decision(self) -> Choice | Fallback | None:
        return self._decision

    def take_decision(self) -> Choice | Fallback | None:
        """The decision, once: None before it is made and after it was taken."""
        if self._decision is None or self._taken:
            return None
        self._taken = True
        return self._decision

    def _decide(self, decision: Choice | Fallback) -> None:
        self._decision = decision
        self._held = None
        for entry in self._addresses:
            entry.next_at = _NEVER
            entry.outstanding = OrderedDict()

    # --- time --------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When ``poll`` has something to do next; None once decided."""
        if self._decision is not None:
            return None
        times = [entry.next_at for entry in self._addresses]
        times.append(self.started + self.timings.timeout)
        if self._held is not None:
            times.append(self._held.until)
        return min(times)

    def poll(self, now: float, local: EndpointDetails) -> list[ProbeSend]:
        """Decide what time decides (a held public answer, the timeout), then the probes
        due now, sent as ``local`` (our cluster ID and bare cable name)."""
        if self._decision is None and self._held is not None and now >= self._held.until:
            self._decide(self._held.choice)
        if self._decision is None and now >= self.started + self.timings.timeout:
            self._decide(self._held.choice if self._held else Fallback(self._timeout_detail()))
        if self._decision is not None:
            return []
        sends = []
        for entry in self._addresses:
            if now < entry.next_at:
                continue
            number = self._unused_number()
            sender, receiver = self._names(local, entry.address.version)
            entry.outstanding[number] = _Sent(now, sender, receiver)
            if len(entry.outstanding) > _MAX_OUTSTANDING:
                entry.outstanding.popitem(last=False)
            entry.sent += 1
            entry.next_at = now + self.timings.gap(entry.sent)
            sends.append(ProbeSend(entry.path, entry.address, self.target.port, number,
                                   sender, receiver))
        return sends

    def _names(self, local: EndpointDetails,
               version: int) -> tuple[EndpointDetails, EndpointDetails]:
        remote = EndpointDetails(self.target.cluster_id, self.target.endpoint_id)
        if self._bare_names:
            return local, remote
        return (EndpointDetails(local.cluster_id, family_endpoint_id(local.endpoint_id, version)),
                EndpointDetails(remote.cluster_id, family_endpoint_id(remote.endpoint_id, version)))

    def _unused_number(self) -> int:
        while True:
            number = self._new_number()
            # 0 is absent on the wire (proto3), so it would match a response without one.
            if number and not any(number in e.outstanding for e in self._addresses):
                return number

    def _timeout_detail(self) -> str:
        detail = f"no answer in {self.timings.timeout:g} s"
        if self._refusal is not None:
            detail += f" (the remote answered {self._refusal.name})"
        return detail

    # --- answers -----------------------------------------------------------------------------

    def on_response(self, response: Response, source: tuple[IPAddress, int],
                    now: float) -> Verdict:
        """Judge an answer received from ``source``; an accepted one may make the choice."""
        if self._decision is not None:
            return Verdict.DECIDED
        if response.sender is None or response.receiver is None or response.received_src is None:
            return Verdict.MALFORMED
        # The request number is what proves an answer ours (64 random bits, never sent
        # elsewhere); the sender is checked after it, so that a refusal from whatever gateway
        # holds the address now (a renamed cable, a port mapped elsewhere) is still told.
        found = self._outstanding(response.request_number)
        if found is None:
            return Verdict.UNKNOWN_NUMBER
        entry, sent = found
        if response.receiver != sent.sender:
            return Verdict.WRONG_RECEIVER
        if entry.path is Path.PRIVATE and source != (entry.address, self.target.port):
            # NAT on a private path is unlikely; Submariner filters it for safety too. The
            # number stays outstanding: the real answer may still come.
            return Verdict.WRONG_SOURCE
        if response.response not in (ResponseType.OK, ResponseType.NAT_DETECTED):
            del entry.outstanding[response.request_number]  # used once
            self._refusal = response.response
            if response.response is ResponseType.UNKNOWN_DST_ENDPOINT:
                self._rename(sent, now)
            return Verdict.REFUSED
        if response.sender != sent.receiver:
            return Verdict.WRONG_SENDER
        # Each number is used once: deciding drops them all, holding the public ones.
        use_nat = response.response is ResponseType.NAT_DETECTED
        detail = f"{entry.path.value} {entry.address} answered in {_ms(now - sent.at)} ms"
        if use_nat:
            detail += ", NAT detected"
        if entry.path is Path.PRIVATE or len(self._addresses) == 1:
            self._decide(Choice(entry.text, use_nat, HOW_DISCOVERED, detail))
            return Verdict.ACCEPTED
        window = self.timings.private_window
        private = self._addresses[0].address
        detail += f"; private {private} did not answer within {window:g} s"
        self._held = _Held(Choice(entry.text, use_nat, HOW_DISCOVERED, detail), now + window)
        entry.next_at = _NEVER  # the public address has answered: no more probes there
        entry.outstanding = OrderedDict()
        return Verdict.HELD

    def _rename(self, refused: _Sent, now: float) -> None:
        """The remote does not know itself by the name we used: use the other form. The
        first switch asks again at once; later ones wait for the next probe (no ping-pong at
        the speed of the round trip)."""
        bare = refused.receiver.endpoint_id == self.target.endpoint_id
        if bare != self._bare_names:
            return  # a refusal of the form we left already
        self._bare_names = not bare
        if not self._renamed:
            self._renamed = True
            for entry in self._addresses:
                if entry.next_at != _NEVER:  # not the public address that answered
                    entry.next_at = min(entry.next_at, now)

    def expects(self, number: int) -> bool:
        """Whether ``number`` is one of our outstanding requests."""
        return self._outstanding(number) is not None

    def _outstanding(self, number: int) -> tuple[_Address, _Sent] | None:
        for entry in self._addresses:
            sent = entry.outstanding.get(number)
            if sent is not None:
                return entry, sent
        return None
