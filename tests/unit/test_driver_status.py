"""PeerStatus: connection status from handshakes and received bytes, with a fake clock.

``now`` (monotonic) and ``wall`` (wall clock, what handshake times are in) are passed in
explicitly; the tests move both forward together.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgcable.cable.types import ConnectionStatus
from wgcable.cable.wireguard.config import WireGuardConfig
from wgcable.cable.wireguard.status import PeerStatus, StatusThresholds

CONNECTED = ConnectionStatus.CONNECTED
CONNECTING = ConnectionStatus.CONNECTING
ERROR = ConnectionStatus.ERROR

WALL0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
MONO0 = 5000.0  # a monotonic clock does not start at zero


@dataclass
class Clock:
    """Both clocks, moved together; ``t`` is seconds since the peer was configured."""

    t: float = 0.0

    @property
    def now(self) -> float:
        return MONO0 + self.t

    @property
    def wall(self) -> datetime:
        return WALL0 + timedelta(seconds=self.t)


def make(thresholds: StatusThresholds | None = None) -> tuple[Clock, PeerStatus]:
    clock = Clock()
    return clock, PeerStatus(thresholds or StatusThresholds(), clock.now)


def check(
    clock: Clock, tracker: PeerStatus, at: float, handshake_at: float | None, rx: int, tx: int
) -> tuple[ConnectionStatus, str]:
    """One status check at ``at`` seconds, the last handshake having been at ``handshake_at``
    (both counted from configuration; None: no handshake yet)."""
    clock.t = at
    handshake = None if handshake_at is None else WALL0 + timedelta(seconds=handshake_at)
    return tracker.update(clock.now, clock.wall, handshake, rx, tx)


# --- thresholds ---------------------------------------------------------------------------


def test_default_thresholds() -> None:
    t = StatusThresholds()
    assert t.keepalive == 10
    assert t.handshake_timeout == 130
    assert t.silent_intervals == 2
    assert t.silence_limit == 20


def test_silence_limit_is_keepalive_times_intervals() -> None:
    assert StatusThresholds(keepalive=5, silent_intervals=3).silence_limit == 15


def test_config_carries_default_thresholds() -> None:
    assert WireGuardConfig().thresholds == StatusThresholds()


# --- before the first handshake -----------------------------------------------------------


def test_new_tracker_is_connecting() -> None:
    _, tracker = make()
    assert tracker.status is CONNECTING
    assert tracker.message == "waiting for: the first handshake"


def test_connecting_before_first_handshake_even_with_traffic() -> None:
    clock, tracker = make()
    # Our own handshake initiations make tx move; nothing has come back yet.
    for t, tx in [(0, 148), (5, 296), (60, 444), (130, 592)]:
        status, message = check(clock, tracker, t, None, 0, tx)
        assert status is CONNECTING
        assert message == "waiting for: the first handshake"


def test_error_when_no_handshake_after_timeout() -> None:
    clock, tracker = make()
    check(clock, tracker, 0, None, 0, 0)
    status, message = check(clock, tracker, 131, None, 0, 148)
    assert status is ERROR
    assert message == "no handshake after 131 s"
    assert (tracker.status, tracker.message) == (status, message)


def test_no_handshake_wait_counts_from_configuration_not_first_check() -> None:
    clock, tracker = make()
    status, message = check(clock, tracker, 200, None, 0, 0)
    assert status is ERROR
    assert "200 s" in message


def test_configurable_handshake_timeout_before_first_handshake() -> None:
    clock, tracker = make(StatusThresholds(handshake_timeout=30))
    assert check(clock, tracker, 30, None, 0, 0)[0] is CONNECTING
    status, message = check(clock, tracker, 31, None, 0, 0)
    assert status is ERROR
    assert "31 s" in message


def test_first_handshake_after_error_connects() -> None:
    clock, tracker = make()
    assert check(clock, tracker, 140, None, 0, 0)[0] is ERROR
    status, message = check(clock, tracker, 145, 144, 92, 148)
    assert status is CONNECTED
    assert message == "handshake 1 s ago"


# --- connected ----------------------------------------------------------------------------


def test_connected_after_handshake_with_rx_moving() -> None:
    clock, tracker = make()
    check(clock, tracker, 0, None, 0, 148)
    status, message = check(clock, tracker, 5, 3, 92, 296)
    assert status is CONNECTED
    assert message == "handshake 2 s ago"
    status, message = check(clock, tracker, 15, 3, 184, 400)
    assert status is CONNECTED
    assert "12 s" in message


def test_first_check_counts_as_rx_movement() -> None:
    # A tracker kept across a restart, first read long after creation: a grace period.
    clock, tracker = make()
    status, _ = check(clock, tracker, 100, 97, 5000, 5000)
    assert status is CONNECTED


def test_handshake_in_the_future_reads_as_zero_seconds() -> None:
    clock, tracker = make()
    status, message = check(clock, tracker, 1, 5, 92, 148)
    assert status is CONNECTED
    assert message == "handshake 0 s ago"


def test_counter_reset_counts_as_movement() -> None:
    clock, tracker = make()
    check(clock, tracker, 0, 0, 10_000, 10_000)
    assert check(clock, tracker, 15, 0, 10_000, 10_100)[0] is CONNECTED
    # The device was re-created: counters start again from zero.
    assert check(clock, tracker, 25, 24, 92, 148)[0] is CONNECTED
    assert check(clock, tracker, 40, 24, 92, 300)[0] is CONNECTED


# --- silence: tx moves (our keepalives), rx does not ----------------------------------------


def test_error_when_nothing_received_although_tx_moves() -> None:
    clock, tracker = make()
    handshake = 0
    check(clock, tracker, 0, handshake, 1000, 1000)
    # Our keepalives go out every 10 s; nothing comes back.
    assert check(clock, tracker, 10, handshake, 1000, 1032)[0] is CONNECTED
    assert check(clock, tracker, 20, handshake, 1000, 1064)[0] is CONNECTED  # not more than 20
    status, message = check(clock, tracker, 21, handshake, 1000, 1096)
    assert status is ERROR
    assert message == "nothing received for 21 s"


def test_recovers_when_rx_moves_again() -> None:
    clock, tracker = make()
    handshake = 0
    check(clock, tracker, 0, handshake, 1000, 1000)
    assert check(clock, tracker, 30, handshake, 1000, 1100)[0] is ERROR
    status, message = check(clock, tracker, 35, handshake, 1032, 1132)
    assert status is CONNECTED
    assert message == "handshake 35 s ago"
    # And silence is measured afresh from that movement.
    assert check(clock, tracker, 55, handshake, 1032, 1164)[0] is CONNECTED
    status, message = check(clock, tracker, 56, handshake, 1032, 1196)
    assert status is ERROR
    assert "21 s" in message


def test_configurable_silence_thresholds() -> None:
    clock, tracker = make(StatusThresholds(keepalive=5, silent_intervals=3))
    handshake = 0
    check(clock, tracker, 0, handshake, 1000, 1000)
    assert check(clock, tracker, 15, handshake, 1000, 1100)[0] is CONNECTED
    status, message = check(clock, tracker, 16, handshake, 1000, 1200)
    assert status is ERROR
    assert message == "nothing received for 16 s"


def test_keepalive_zero_disables_the_silence_check() -> None:
    clock, tracker = make(StatusThresholds(keepalive=0))
    check(clock, tracker, 0, 0, 1000, 1000)
    for t in (21, 60, 129):
        status, _ = check(clock, tracker, t, 0, 1000, 1000 + t)
        assert status is CONNECTED


# --- stale handshakes -----------------------------------------------------------------------


def test_error_when_last_handshake_older_than_timeout() -> None:
    clock, tracker = make()
    check(clock, tracker, 0, 0, 100, 100)
    handshake = 0
    assert check(clock, tracker, 130, handshake, 200, 200)[0] is CONNECTED  # not more than 130
    status, message = check(clock, tracker, 131, handshake, 300, 300)  # rx still moving
    assert status is ERROR
    assert message == "last handshake 131 s ago"


def test_stale_handshake_is_reported_before_silence() -> None:
    clock, tracker = make()
    handshake = 0
    check(clock, tracker, 0, handshake, 100, 100)
    status, message = check(clock, tracker, 200, handshake, 100, 500)
    assert status is ERROR
    assert message == "last handshake 200 s ago"


def test_configurable_handshake_timeout() -> None:
    clock, tracker = make(StatusThresholds(keepalive=0, handshake_timeout=45))
    handshake = 0
    check(clock, tracker, 0, handshake, 1, 1)
    assert check(clock, tracker, 45, handshake, 2, 2)[0] is CONNECTED
    status, message = check(clock, tracker, 46, handshake, 3, 3)
    assert status is ERROR
    assert "46 s" in message


def test_new_handshake_recovers_from_stale() -> None:
    clock, tracker = make()
    check(clock, tracker, 0, 0, 1, 1)
    assert check(clock, tracker, 140, 0, 2, 2)[0] is ERROR
    assert check(clock, tracker, 145, 144, 3, 3)[0] is CONNECTED


# --- a peer re-created on the device (its handshake time goes back to none) ------------------


def test_recreated_peer_is_connecting_again_not_error() -> None:
    clock, tracker = make()
    check(clock, tracker, 0, 0, 100, 100)
    assert check(clock, tracker, 3600, 3595, 9000, 9000)[0] is CONNECTED
    # The device was re-created an hour after configuration: no handshake yet, and that
    # wait has only just begun.
    status, message = check(clock, tracker, 3601, None, 0, 148)
    assert status is CONNECTING
    assert message == "waiting for: the first handshake"
    assert check(clock, tracker, 3731, None, 0, 296)[0] is CONNECTING
    status, message = check(clock, tracker, 3732, None, 0, 444)
    assert status is ERROR
    assert message == "no handshake after 131 s"


# --- model check ------------------------------------------------------------------------------


@given(
    keepalive=st.integers(0, 30),
    intervals=st.integers(1, 5),
    steps=st.lists(st.tuples(st.integers(1, 40), st.booleans(), st.booleans()), max_size=30),
)
def test_status_matches_a_model_while_handshakes_are_fresh(
    keepalive: int, intervals: int, steps: list[tuple[int, bool, bool]]
) -> None:
    """With a fresh handshake, the status is error exactly when rx has been still for more
    than keepalive * intervals seconds (keepalive > 0), whatever tx does."""
    clock, tracker = make(StatusThresholds(keepalive=keepalive, silent_intervals=intervals))
    rx, tx = 0, 0
    check(clock, tracker, 0, 0, rx, tx)
    last_change = 0
    t = 0
    for dt, rx_moves, tx_moves in steps:
        t += dt
        if rx_moves:
            rx += 32
            last_change = t
        tx += 32 if tx_moves else 0
        status, message = check(clock, tracker, t, t - 1, rx, tx)
        silent = t - last_change
        if keepalive > 0 and silent > keepalive * intervals:
            assert status is ERROR
            assert message == f"nothing received for {silent} s"
        else:
            assert status is CONNECTED
            assert message == "handshake 1 s ago"


@pytest.mark.parametrize("timeout", [10.0, 130.0, 600.0])
@given(wait=st.integers(0, 1000))
def test_no_handshake_error_exactly_after_timeout(timeout: float, wait: int) -> None:
    clock, tracker = make(StatusThresholds(handshake_timeout=timeout))
    status, message = check(clock, tracker, wait, None, 0, wait)
    if wait > timeout:
        assert status is ERROR
        assert message == f"no handshake after {wait} s"
    else:
        assert status is CONNECTING
