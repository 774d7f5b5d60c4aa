"""The dataplane bench's pinning: which CPUs, and every thread of a daemon moved."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from bench.dataplane_bench import PIN_ENV, pin_process, pinned_cpus, taskset

TWO_CPUS = len(os.sched_getaffinity(0)) >= 2


@pytest.mark.skipif(not TWO_CPUS, reason="needs two CPUs to pin to")
def test_pinned_cpus_are_two_of_ours_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PIN_ENV, raising=False)
    got = pinned_cpus()
    assert got is not None
    assert got[0] != got[1]
    assert set(got) <= os.sched_getaffinity(0)
    monkeypatch.setenv(PIN_ENV, "0")
    assert pinned_cpus() is None
    assert taskset(None) == []
    assert taskset(1) == ["taskset", "-c", "1"]


@pytest.mark.skipif(not TWO_CPUS, reason="needs two CPUs to pin to")
def test_pin_process_moves_every_thread() -> None:
    # A child with a second thread: both must end up on the one CPU.
    code = ("import threading, time, sys\n"
            "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
            "print('up', flush=True); time.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "up"
        cpu = sorted(os.sched_getaffinity(0))[1]
        pin_process(child.pid, cpu)
        tids = os.listdir(f"/proc/{child.pid}/task")
        assert len(tids) == 2
        assert all(os.sched_getaffinity(int(t)) == {cpu} for t in tids)
    finally:
        child.kill()  # ours, by PID
        child.wait(5)
