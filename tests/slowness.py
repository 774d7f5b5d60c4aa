"""How much slower this machine runs our processes than the host: the factor that scales the
end-to-end tests' deadlines.

Natively the factor is 1. Inside the kernel test VM (software emulation, files over 9p) the
same work takes many times longer, and by how much depends on the CPU and its load: a
constant deadline is either too short there or uselessly long here. So the host times a
fixed workload before it boots the VM and hands the figure in (``WGCABLE_HOST_WORKLOAD_S``);
the guest times the same workload at start-up, and the ratio is the factor
(``WGCABLE_SLOWNESS``, inherited by every process the tests start).

The workload is what the slow part of an end-to-end test is: starting Python and importing
the agent (agent start-up measured natively is ~1.1 s, of which ~0.8 s is this).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

ENV_FACTOR = "WGCABLE_SLOWNESS"
ENV_HOST_WORKLOAD = "WGCABLE_HOST_WORKLOAD_S"
WORKLOAD = [sys.executable, "-c", "import wgcable.agent.run, wgcable.cli.main"]


def workload_seconds(runs: int = 2) -> float:
    """The fastest of ``runs`` timings of the workload: the first pays for cold caches."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run(WORKLOAD, check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, timeout=600)
        best = min(best, time.monotonic() - t0)
    return best


def measure_against_host() -> float | None:
    """In the guest: time the workload, compare it with the host's figure, export the
    factor. None when the host gave no figure (the factor then stays 1)."""
    try:
        host = float(os.environ[ENV_HOST_WORKLOAD])
    except (KeyError, ValueError):
        return None
    # One run: pytest's own start has already warmed the guest's file cache for most of
    # it, and what is still cold only makes the factor (the deadlines) a little larger.
    ratio = max(1.0, workload_seconds(runs=1) / max(host, 1e-3))
    os.environ[ENV_FACTOR] = f"{ratio:.2f}"
    return ratio


def factor() -> float:
    """The measured factor, 1 natively. Never below 1: the deadlines are set for the host."""
    try:
        return max(1.0, float(os.environ.get(ENV_FACTOR, "1")))
    except ValueError:
        return 1.0


def scaled(seconds: float) -> float:
    """A deadline set for the host, stretched to this machine."""
    return seconds * factor()
