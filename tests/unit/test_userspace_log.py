"""wireguard-go's output goes to a log file, not to a pipe nobody reads.

A fake daemon (a shell script, no network at all) stands in for wireguard-go: it writes far
more than a pipe holds (64 KiB) and then exits during start-up. With a pipe, it would block
on the write until start() gave up with "no socket"; with the log file it exits, and
start() reports what it wrote last.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wgcable.cable.wireguard.userspace import (
    LOG_LEVEL_ENV,
    UserspaceError,
    WireGuardGoProcess,
    log_level,
)

CHATTY_THEN_FAIL = """\
#!/bin/sh
i=0
while [ $i -lt 4000 ]; do
  echo "DEBUG: ($1 $2) line $i of chatter to fill any pipe, ............................" >&2
  i=$((i + 1))
done
echo "ERROR: ($2) Failed to create TUN device: operation not permitted" >&2
exit 1
"""


def fake_daemon(tmp_path: Path, text: str) -> str:
    path = tmp_path / "fake-wireguard-go"
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def test_startup_failure_reports_the_daemons_last_words_from_its_log(tmp_path: Path) -> None:
    log = tmp_path / "state" / "wgx0.wireguard-go.log"
    proc = WireGuardGoProcess("wgx0", None, fake_daemon(tmp_path, CHATTY_THEN_FAIL),
                              log_path=log)
    with pytest.raises(UserspaceError) as exc:
        proc.start(timeout=60)
    msg = str(exc.value)
    assert "exited" in msg
    assert "Failed to create TUN device: operation not permitted" in msg
    assert len(msg) < 5000  # the end of the output, not all of it
    assert proc.pid is None
    # Everything it wrote is in the log (0600), more than a pipe would have held.
    assert log.stat().st_size > 64 * 1024
    assert (log.stat().st_mode & 0o777) == 0o600
    assert "line 3999 of chatter" in log.read_text()


def test_log_is_appended_across_starts_and_rotated_when_big(tmp_path: Path) -> None:
    log = tmp_path / "wgx0.log"
    log.write_text("earlier run\n")
    binary = fake_daemon(tmp_path, "#!/bin/sh\necho 'ERROR: second run' >&2\nexit 1\n")
    proc = WireGuardGoProcess("wgx0", None, binary, log_path=log)
    with pytest.raises(UserspaceError, match="second run") as exc:
        proc.start(timeout=60)
    assert "earlier run" not in str(exc.value)  # only this start's output is reported
    assert log.read_text() == "earlier run\nERROR: second run\n"
    log.write_bytes(b"x" * (2 << 20))
    with pytest.raises(UserspaceError, match="second run"):
        proc.start(timeout=60)
    assert log.read_text() == "ERROR: second run\n"
    assert os.path.getsize(str(log) + ".1") == 2 << 20


def test_without_a_log_path_the_failure_is_still_reported(tmp_path: Path) -> None:
    proc = WireGuardGoProcess("wgx0", None, fake_daemon(tmp_path, CHATTY_THEN_FAIL))
    with pytest.raises(UserspaceError, match="operation not permitted"):
        proc.start(timeout=60)


ECHO_LOG_LEVEL_THEN_FAIL = """\
#!/bin/sh
echo "level=$LOG_LEVEL" >&2
exit 1
"""


@pytest.mark.parametrize(("setting", "expected"), [(None, "error"), ("", "error"),
                                                   ("verbose", "verbose")])
def test_the_daemons_log_level_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None, expected: str,
) -> None:
    if setting is None:
        monkeypatch.delenv(LOG_LEVEL_ENV, raising=False)
    else:
        monkeypatch.setenv(LOG_LEVEL_ENV, setting)
    proc = WireGuardGoProcess("wgx0", None, fake_daemon(tmp_path, ECHO_LOG_LEVEL_THEN_FAIL),
                              log_path=tmp_path / "wgx0.wireguard-go.log")
    with pytest.raises(UserspaceError, match=f"level={expected}"):
        proc.start(timeout=5)


def test_an_unknown_log_level_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOG_LEVEL_ENV, "loud\n")
    with pytest.raises(UserspaceError, match=r"WGCABLE_WIREGUARD_GO_LOG_LEVEL='loud\\n'"):
        log_level()
