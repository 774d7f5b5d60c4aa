"""What the benchmark sections share: result rows, statistics, and the signal plumbing.

A section's ``run`` returns a JSON-able dict. If it has ``"rows"``, each row is a
:class:`Row` as a dict; the runner prints them in one table. Everything else in the dict is
the section's own detail (raw samples, splits), kept in results.json and used by its plot.
"""

from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NotRequired, ParamSpec, TypedDict, TypeVar

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Row(TypedDict):
    """One line of the results table."""

    metric: str  # what was measured, e.g. "connect N clusters from empty"
    impl: str  # who did it, e.g. "wgcable driver", "wg setconf + ip -batch"
    n: int | None  # remote clusters / peers, where that applies
    value: float  # the median (or the one figure)
    unit: str  # "ms", "Mbit/s", "%", "MiB", ...
    p90: NotRequired[float | None]
    floor: NotRequired[float | None]  # the reference this row is compared with
    floor_impl: NotRequired[str]  # what the reference is
    note: NotRequired[str]


def row(metric: str, impl: str, n: int | None, value: float, unit: str, *,
        p90: float | None = None, floor: float | None = None, floor_impl: str = "",
        note: str = "") -> Row:
    r: Row = {"metric": metric, "impl": impl, "n": n, "value": value, "unit": unit}
    if p90 is not None:
        r["p90"] = p90
    if floor is not None:
        r["floor"] = floor
        r["floor_impl"] = floor_impl
    if note:
        r["note"] = note
    return r


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def pct(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(samples)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def summary(samples: Sequence[float]) -> dict[str, Any]:
    return {"median": median(samples), "p90": pct(samples, 0.9), "min": min(samples),
            "max": max(samples), "samples": list(samples)}


P = ParamSpec("P")
T = TypeVar("T")


def timed_ms(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> tuple[float, T]:
    """How long one call takes, in ms, and what it returned."""
    t0 = time.perf_counter_ns()
    result = fn(*args, **kwargs)
    return (time.perf_counter_ns() - t0) / 1e6, result


def run(argv: Sequence[str], input: str | None = None, timeout: float = 60) -> str:
    p = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                       timeout=timeout, check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally


@contextmanager
def signals_raise() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP unwind the stack (so every ``finally`` cleans up)."""
    old = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, on_signal)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextmanager
def signals_held() -> Iterator[None]:
    """Ignore those signals for a while: a teardown must not be interrupted half-way."""
    old = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def plain_log_axes(ax: Any, x: bool = True, y: bool = True) -> None:
    """Log scales with plain numbers on the ticks (10, 100, 1000; not 10^1)."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    if x:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plain)
    if y:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda _v, _pos: ""))
