"""Connection status from a peer's handshakes and traffic (pure; the clock is passed in).

Better than "connected as soon as configured": a connection is ``connecting`` until its
first handshake, ``connected`` while handshakes are recent and bytes arrive from the remote,
and ``error`` with the reason otherwise. Received bytes are what prove the remote alive:
our own keepalives make the sent counter move even when nobody answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from wgcable.cable.types import ConnectionStatus


@dataclass(frozen=True, slots=True)
class StatusThresholds:
    keepalive: float = 10.0  # the persistent keepalive both ends use, seconds
    handshake_timeout: float = 130.0  # a session is re-keyed every 120 s while alive
    silent_intervals: int = 2  # keepalive intervals without received bytes before error

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
        self.status = ConnectionStatus.CONNECTING
        self.message = "waiting for the first handshake"

    def update(
        self, now: float, wall: datetime, last_handshake: datetime | None, rx: int, tx: int
    ) -> tuple[ConnectionStatus, str]:
        if rx != self.rx:  # the first check counts as a change: a grace period to start with
            self.last_rx_change = now
            self.rx = rx
        self.tx = tx
        if last_handshake is None and self.last_handshake is not None:
            self.since = now  # a handshake time never goes back to none: the peer was re-created
        self.last_handshake = last_handshake
        if last_handshake is None:
            waited = now - self.since
            if waited > self.t.handshake_timeout:
                self._set(ConnectionStatus.ERROR, f"no handshake after {waited:.0f} s")
            else:
                self._set(ConnectionStatus.CONNECTING, "waiting for the first handshake")
            return self.status, self.message
        age = (wall - last_handshake).total_seconds()
        silent = now - self.last_rx_change
        if age > self.t.handshake_timeout:
            self._set(ConnectionStatus.ERROR, f"last handshake {age:.0f} s ago")
        elif self.t.keepalive > 0 and silent > self.t.silence_limit:
            self._set(ConnectionStatus.ERROR, f"nothing received for {silent:.0f} s")
        else:
            self._set(ConnectionStatus.CONNECTED, f"handshake {max(age, 0):.0f} s ago")
        return self.status, self.message

    def _set(self, status: ConnectionStatus, message: str) -> None:
        self.status, self.message = status, message
