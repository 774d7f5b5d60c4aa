"""A chatty wireguard-go keeps running: its output goes to the log, nothing blocks it.

The daemon here is a stand-in (Python, in a namespace of ours, under the same start-up
wrapper as wireguard-go: `ip netns exec`, a private tmpfs on /run/wireguard): it opens its
UAPI socket, then writes 1 MiB to stderr (a pipe holds 64 KiB) and only then marks that it
got past the writes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from wgcable.cable.wireguard.userspace import WireGuardGoProcess
from wgcable.lab.netns import Namespace

pytestmark = pytest.mark.netns

CHATTY = """\
#!{python}
import os, socket, sys, time
ifname = sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(f"/run/wireguard/{{ifname}}.sock")
s.listen(8)
time.sleep(0.2)  # start() sees the socket and returns before the chatter
line = b"DEBUG: (" + ifname.encode() + b") chatter " + b"." * 100 + b"\\n"
for _ in range((1 << 20) // len(line) + 1):
    sys.stderr.buffer.write(line)
    sys.stderr.buffer.flush()
open({marker!r}, "w").close()
while True:
    s.accept()[0].close()
"""


def test_chatty_daemon_is_not_blocked_by_its_own_output(
    tmp_path: Path, make_ns: Callable[[], Namespace]
) -> None:
    ns = make_ns()
    marker = tmp_path / "past-the-chatter"
    fake = tmp_path / "chatty-wireguard-go"
    fake.write_text(CHATTY.format(python=sys.executable, marker=str(marker)))
    fake.chmod(0o755)
    log = tmp_path / "state" / "wgc0.wireguard-go.log"
    proc = WireGuardGoProcess("wgc0", ns.name, str(fake), log_path=log)
    proc.start(timeout=30)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and proc.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the daemon is stuck writing its output"
        assert proc.alive()
        assert log.stat().st_size >= 1 << 20
    finally:
        proc.stop()
    assert not proc.alive()
