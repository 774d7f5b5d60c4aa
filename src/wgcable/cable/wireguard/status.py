"""Connection status from a peer's handshakes and traffic, and from what of the tunnel is in
place (pure; the clock is passed in).

A connection is ``connected`` only while everything it needs is in place here (the caller
names what is missing: the peer's allowed IPs, routes, the rule, the SNAT exemption), it
has had a handshake, handshakes are recent and bytes arrive from the remote. A handshake
alone is no proof: the remote's keepalives make one before our routes may be in (issue 16).
Until all is there it is ``connecting``, its message naming what it waits for; a piece
missing for longer than ``missing_limit`` makes it ``error``, naming the piece. Received
bytes are what prove the remote alive: our own keepalives make the sent counter move even
when nobody answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from wgcable.cable.types import ConnectionStatus

FIRST_HANDSHAKE = "the first handshake"
NEW_KEY_HANDSHAKE = "a handshake under our new key"


@dataclass(frozen=True, slots=True)
class StatusThresholds:
    keepalive: float = 10.0  # the persistent keepalive both ends use, seconds
    handshake_timeout: float = 130.0  # a session is re-keyed every 120 s while alive
    silent_intervals: int = 2  # keepalive intervals without received bytes before error
    # How long a piece of the tunnel may be missing before the connection is an error: the
    # driver re-applies at every status read, so a piece still missing after this fails.
    missing_limit: float = 30.0

    @property
    def silence_limit(self) -> float:
        return self.keepalive * self.silent_intervals


class PeerStatus:
    """Tracks one peer across checks. ``now`` is a monotonic clock, ``wall`` the wall clock
    (handshake times are wall-clock times)."""

    def __init__(self, thresholds: StatusThresholds, now: float) -> None:
        self.t = thresholds
        self.since = now  # when this peer was configured
        self.rx = -1
        self.tx = -1
        self.last_rx_change = now
        self.last_handshake: datetime | None = None
        self.handshake_epoch: float | None = None  # the same in epoch seconds (metrics)
        self.status = ConnectionStatus.CONNECTING
        self.message = f"waiting for: {FIRST_HANDSHAKE}"
        self.missing_since: float | None = None  # since when a piece is missing
        self.rekeyed_at: datetime | None = None  # our key changed then: older handshakes
        # do not count

    def rekeyed(self, wall: datetime) -> None:
        """Our own key changed (wall clock): every session ended for sending, and only a
        handshake after ``wall`` makes the connection ``connected`` again."""
        self.rekeyed_at = wall

    def update(
        self, now: float, wall: datetime, last_handshake: datetime | None, rx: int, tx: int,
        missing: Sequence[str] = (),
    ) -> tuple[ConnectionStatus, str]:
        """The status from this check's device read; ``missing``: what of the tunnel is
        not in place (each piece named, e.g. "route 10.2.0.0/16 in table 220")."""
        # One call per peer per status read, 1000s of peers: kept flat.
        if rx != self.rx:  # the first check counts as a change: a grace period to start with
            self.last_rx_change = now
            self.rx = rx
        self.tx = tx
        if last_handshake is None and self.last_handshake is not None:
            self.since = now  # a handshake time never goes back to none: the peer was re-created
        if last_handshake != self.last_handshake:  # converted once, not at every read
            self.handshake_epoch = None if last_handshake is None else last_handshake.timestamp()
        self.last_handshake = last_handshake
        if last_handshake is None:
            waited = now - self.since
            if waited > self.t.handshake_timeout:
                self._set(ConnectionStatus.ERROR, f"no handshake after {waited:.0f} s")
            else:
                self._set(ConnectionStatus.CONNECTING, f"waiting for: {FIRST_HANDSHAKE}")
        else:
            age = (wall - last_handshake).total_seconds()
            silent = now - self.last_rx_change
            if age > self.t.handshake_timeout:
                self._set(ConnectionStatus.ERROR, f"last handshake {age:.0f} s ago")
            elif self.t.keepalive > 0 and silent > self.t.silence_limit:
                self._set(ConnectionStatus.ERROR, f"nothing received for {silent:.0f} s")
            elif self.rekeyed_at is not None and last_handshake <= self.rekeyed_at:
                self._set(ConnectionStatus.CONNECTING, f"waiting for: {NEW_KEY_HANDSHAKE}")
            else:
                self.rekeyed_at = None
                self._set(ConnectionStatus.CONNECTED, f"handshake {max(age, 0):.0f} s ago")
        if missing:
            self._missing(now, missing)
        else:
            self.missing_since = None
        return self.status, self.message

    def _missing(self, now: float, missing: Sequence[str]) -> None:
        if self.missing_since is None:
            self.missing_since = now
        waited = now - self.missing_since
        pieces = ", ".join(missing)
        if self.status is ConnectionStatus.ERROR:
            self.message = f"{self.message}; missing: {pieces}"
        elif waited > self.t.missing_limit:
            self._set(ConnectionStatus.ERROR, f"missing for {waited:.0f} s: {pieces}")
        elif self.last_handshake is None:
            self._set(ConnectionStatus.CONNECTING, f"waiting for: {pieces}, {FIRST_HANDSHAKE}")
        else:
            self._set(ConnectionStatus.CONNECTING, f"waiting for: {pieces}")

    def _set(self, status: ConnectionStatus, message: str) -> None:
        self.status, self.message = status, message
