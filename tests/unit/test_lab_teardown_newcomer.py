"""The lab's teardown stops its processes together (issue 21: removing 10 clusters took
10.4 s, one agent's orderly exit after another)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from wgcable.lab.process import stop_pids

# On SIGTERM, a child marks that it got it, then exits only once every child has: stopped
# one at a time, the first would wait for the others for ever, and be SIGKILLed.
# It marks its own exit too: its exit status is not ours to read (stop_pids reaps it).
CHILD = """
import os, signal, sys, time
d, me, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def term(signum, frame):
    open(os.path.join(d, "got", me), "w").close()
    while len(os.listdir(os.path.join(d, "got"))) < n:
        time.sleep(0.01)
    open(os.path.join(d, "done", me), "w").close()
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def test_newcomer_stop_pids_signals_all_before_waiting(tmp_path: Path) -> None:
    n = 3
    (tmp_path / "got").mkdir()
    (tmp_path / "done").mkdir()
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(i), str(n)],
                                 stdout=subprocess.PIPE, text=True) for i in range(n)]
    try:
        for c in children:
            assert c.stdout is not None
            assert c.stdout.readline() == "ready\n"  # its handler is in place
        stop_pids([(c.pid, ()) for c in children], timeout=30)
        for c in children:
            c.wait(5)
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
    # Each left by itself: none was SIGKILLed while waiting for the others' signals.
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == [str(i) for i in range(n)]
