"""Connect, status read and remove of N clusters against the floor, a few rounds in one
process: for alternating two trees on a loaded machine, where a full ``python -m bench``
run takes a minute and the load moves meanwhile.

    PYTHONPATH=<tree>/src:<tree> .venv/bin/python -m bench.control_pairs [N] [ROUNDS]

Prints one JSON line of medians: wall ms of ``connect`` (one ``driver.batch()``), the
floor (``wg setconf`` + ``ip -batch``), ``remove`` and its floor, a status read
(``get_connections()``, three per round) and ``wg show dump``; the per-round ratios
(``*_x``) and the CPU time of this process for connect and remove (wireguard-go's not
included). Nothing here asserts on timings.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from bench.common import run
from bench.control_bench import DEVICE, control_plane


def main(n: int, rounds: int) -> dict[str, float]:
    res: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        res.setdefault(key, []).append(value)

    with control_plane() as cp:
        d = cp.d()
        cp.prepare_floor(n)
        cp.connect(n)  # warm-up, untimed
        d.get_connections()
        cp.disconnect(n)
        dump = cp.driver_wg("show", DEVICE, "dump")
        for _ in range(rounds):
            c, t = time.process_time(), time.perf_counter()
            cp.connect(n)
            connect = (time.perf_counter() - t) * 1000
            add("connect_cpu", (time.process_time() - c) * 1000)
            reads, dumps = [], []
            for _ in range(3):
                t = time.perf_counter()
                d.get_connections()
                reads.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                run(dump)
                dumps.append((time.perf_counter() - t) * 1000)
            c, t = time.process_time(), time.perf_counter()
            cp.disconnect(n)
            remove = (time.perf_counter() - t) * 1000
            add("remove_cpu", (time.process_time() - c) * 1000)
            floor = sum(cp.floor_apply())
            floor_rm = sum(cp.floor_remove())
            status, wg_dump = statistics.median(reads), statistics.median(dumps)
            for key, value in (("connect", connect), ("floor", floor), ("remove", remove),
                               ("floor_rm", floor_rm), ("status", status), ("dump", wg_dump),
                               ("connect_x", connect / floor), ("remove_x", remove / floor_rm),
                               ("status_x", status / wg_dump)):
                add(key, value)
    return {k: round(statistics.median(v), 3) for k, v in res.items()}


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print(json.dumps(main(*(args + [1000, 5][len(args):]))))
