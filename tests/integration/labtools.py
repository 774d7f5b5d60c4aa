"""Helpers for the tests that run real agents in a lab: waiting, the store's files, commands
on a gateway, and a continuous ping that counts what it lost."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from slowness import scaled
from wgcable.cable.types import Connection
from wgcable.lab.lab import GatewayState, Lab
from wgcable.lab.netns import Namespace

MakeLab = Callable[..., Lab]
_REPLY = re.compile(r"icmp_seq=(\d+) ttl=")
_RTT = re.compile(r"icmp_seq=(\d+) ttl=\d+ time=([\d.]+) ms")

# Tests that take a device run on wireguard-go. Those that say `@both_kinds` also run on the
# kernel's WireGuard (marker `kernel`: inside the test VM when this kernel has none); which
# ones, and why, is in tests/kernel/README.md.
DEVICE_KINDS = ["userspace", pytest.param("kernel", marks=pytest.mark.kernel)]
both_kinds = pytest.mark.parametrize("device_kind", DEVICE_KINDS)


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> float:
    """Seconds it took for ``cond`` to hold; fails after ``timeout``, a deadline set for the
    host and stretched by this machine's measured slowness (the kernel VM's is many times)."""
    t0 = time.monotonic()
    timeout = scaled(timeout)
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


def endpoint_file(lab: Lab, cluster_id: str) -> Path:
    [path] = [p for p in (lab.store_dir / "endpoints").iterdir()
              if p.name.startswith(f"{cluster_id}-")]
    return path


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def endpoint_json(cluster: str, subnet: str, key: str, ip: str) -> str:
    """An Endpoint object as a remote gateway would publish it."""
    return json.dumps({
        "apiVersion": "submariner.io/v1", "kind": "Endpoint",
        "metadata": {"name": f"{cluster}-cable"},
        "spec": {"cluster_id": cluster, "cable_name": "cable", "hostname": cluster,
                 "subnets": [subnet], "private_ip": ip, "public_ip": "",
                 "nat_enabled": False, "backend": "wireguard",
                 "backend_config": {"publicKey": key}},
    })


def on_gateway(lab: Lab, gw: GatewayState, *args: str) -> str:
    return subprocess.run(lab.gateway_cmd(gw, *args), capture_output=True, text=True,
                          check=True).stdout


def connection(lab: Lab, at: int, remote: str) -> Connection | None:
    st = lab.status(at)
    if st is None:
        return None
    return next((c for c in st.gateway.connections if c.endpoint.cluster_id == remote), None)


class Pinger:
    """``ping -i 0.1`` from ``src``'s first pod to ``dst``'s, until ``stop()``: how many
    echoes went out and how many came back. Replies are counted as they arrive, so a test
    waits for a number of them instead of sleeping for a time (under emulation, fewer
    echoes go out per second). ``src_node`` and ``dst_node``: the pods of those nodes
    (0, the gateway node's, by default); ``v6``: over IPv6."""

    def __init__(self, lab: Lab | None, src: int | str, dst: int | str,
                 interval: float = 0.1, *, src_node: int = 0, dst_node: int = 0,
                 v6: bool = False) -> None:
        """Without a lab, ``src`` is a namespace and ``dst`` an address."""
        if lab is not None:
            d = lab.node(int(dst), dst_node)
            src = lab.node(int(src), src_node).pod_ns[0]
            dst = (d.pod_ips6 if v6 else d.pod_ips)[0]
        self._proc = subprocess.Popen(
            Namespace(str(src)).cmd("ping", "-n", "-i", str(interval), "-W", "1", str(dst)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._lines: list[str] = []
        self._answered: set[int] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.output = ""

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.append(line)
            m = _REPLY.search(line)
            if m:
                self._answered.add(int(m.group(1)))

    def replies(self) -> int:
        return len(self._answered)

    def rtts(self) -> dict[int, float]:
        """Milliseconds per answered sequence number."""
        return {int(m.group(1)): float(m.group(2))
                for line in list(self._lines) if (m := _RTT.search(line))}

    def wait_replies(self, more: int, timeout: float, what: str) -> float:
        """Waits for ``more`` replies beyond those seen so far; seconds it took."""
        goal = self.replies() + more
        return wait_for(lambda: self.replies() >= goal, timeout, f"{more} ping replies {what}")

    def stop(self) -> tuple[int, list[int]]:
        """(echoes sent, sequence numbers of those never answered). SIGINT makes ping print
        its summary at once, so the last echo may still be in flight: it is not counted."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(10)
        self.output = "".join(self._lines)
        m = re.search(r"(\d+) packets transmitted", self.output)
        if m is None:
            raise AssertionError(f"no ping summary in: {self.output[-500:]}")
        sent = int(m.group(1))
        return sent, [n for n in range(1, sent) if n not in self._answered]

    def __enter__(self) -> Pinger:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(10)


def unreachable_pairs(lab: Lab, settle: float = 0.0) -> list[tuple[int, int]]:
    """Pod-to-pod pairs (the gateway nodes' first pods) that did not answer one ping; with
    ``settle``, still unreachable after up to that many seconds (host time) of retries.
    No retry by default: the lab's "all connected" implies that every pair pings (issue 16:
    "connected" waits for the routes and the first health check reply through the tunnel).
    What the gateways held at each failure is printed, for whoever looks next."""
    n = len(lab.state.gateways)
    deadline = time.monotonic() + scaled(settle)
    while True:
        bad = [(a, b) for a in range(1, n + 1) for b in range(1, n + 1)
               if a != b and lab.ping(a, b) is None]
        if not bad:
            return bad
        print(f"unreachable right after connected: {bad}")
        for i in sorted({x for pair in bad for x in pair}):
            st = lab.status(i)
            for c in st.gateway.connections if st is not None else ():
                print(f"gw{i} status: {c.endpoint.cluster_id} {c.status.value} "
                      f"({c.status_message})")
            for cmd in (("ip", "route", "show", "table", "220"), ("wg", "show", "subwg0")):
                done = subprocess.run(lab.gateway_cmd(lab.gateway(i), *cmd),
                                      capture_output=True, text=True, check=False)
                print(f"gw{i}$ {' '.join(cmd)}\n{done.stdout}{done.stderr}")
        if time.monotonic() > deadline:
            return bad
        time.sleep(0.5)


def unreachable_pod_pairs(lab: Lab, settle: float = 10.0, v6: bool = False) -> list[str]:
    """Like ``unreachable_pairs``, over every pod of every node: the pairs (by label, as
    "cluster1/node1 -> cluster2/gw") still unreachable after up to ``settle`` s of retries.
    Pings go out in parallel: a lab of 2 clusters of 3 nodes has 30 pairs."""
    pods = lab.pods()
    pairs = [(a, b) for a in pods for b in pods if a is not b]
    deadline = time.monotonic() + scaled(settle)
    with ThreadPoolExecutor(max_workers=16) as pool:
        while True:
            answers = pool.map(lambda ab: lab.ping_between(*ab, v6=v6, timeout=1), pairs)
            bad = [f"{a.label} -> {b.label}" for (a, b), rtt in zip(pairs, answers, strict=True)
                   if rtt is None]
            if not bad or time.monotonic() > deadline:
                return bad
            time.sleep(0.2)


def print_agent_logs(lab: Lab, lines: int = 40) -> None:
    """The last ``lines`` of every gateway, wireguard-go and route agent log of ``lab``:
    printed always, shown by pytest only for a failed test (what the agents saw)."""
    logs = [log for gw in lab.candidates()
            for log in (lab.log_file(gw), lab.daemon_log_file(gw))]
    logs += [lab.route_agent_log(n) for n in lab.state.nodes]
    for log in logs:
        with contextlib.suppress(OSError):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            print(f"--- {log.relative_to(lab.dir)} (last {len(tail)} lines)", *tail, sep="\n")


def public_key(lab: Lab, gw: GatewayState) -> str:
    """The public key the gateway's running agent reports ("" before its first status)."""
    st = lab.status(gw)
    return "" if st is None else st.gateway.local_endpoint.backend_config.get("publicKey", "")


def handshaken_peers(lab: Lab, gw: GatewayState) -> set[str]:
    """The public keys of the gateway's peers that have had a handshake."""
    out = on_gateway(lab, gw, "wg", "show", "subwg0", "latest-handshakes")
    return {k for k, t in (line.split("\t") for line in out.splitlines() if line)
            if t.strip() != "0"}


def rotate_keys(lab: Lab, gw: GatewayState, rounds: int, pingers: Sequence[Pinger] = (),
                timeout: float = 30) -> list[tuple[float, float]]:
    """Rotate ``gw``'s key pair ``rounds`` times (SIGUSR2, as `wgcable rotate-key`), each
    once the last one is done and every pinger had 2 more replies: (seconds from the signal
    until the agent reports its new key, until every other cluster's active gateway had a
    handshake with it) per rotation."""
    others = [g for g in lab.state.gateways if g.index != gw.index]
    took: list[tuple[float, float]] = []
    for _ in range(rounds):
        old = public_key(lab, gw)
        t0 = time.monotonic()
        lab.rotate_key(gw)
        reported = wait_for(lambda old=old: public_key(lab, gw) not in ("", old), timeout,
                            f"{gw.label} to report its new key")
        new = public_key(lab, gw)
        wait_for(lambda new=new: all(new in handshaken_peers(lab, lab.active(o.index) or o)
                                     for o in others), timeout,
                 f"a handshake with {gw.label}'s new key everywhere")
        took.append((reported, time.monotonic() - t0))
        for p in pingers:
            p.wait_replies(2, timeout, "after a key rotation")
    return took


class StatusSampler:
    """Reads every running gateway agent's status file every 50 ms, for as long as it
    runs: every connection status other than ``connected`` it saw, with its message."""

    def __init__(self, lab: Lab, period: float = 0.05) -> None:
        self.lab, self.period = lab, period
        self.seen: dict[tuple[str, str, str], str] = {}  # (gateway, remote, status) -> why
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            for gw in self.lab.candidates():
                with contextlib.suppress(OSError, ValueError):
                    st = self.lab.status(gw)
                    for c in [] if st is None else st.gateway.connections:
                        if c.status != "connected":
                            self.seen[(gw.label, c.endpoint.cluster_id, c.status)] = \
                                c.status_message
            self.samples += 1

    def statuses(self) -> set[str]:
        return {status for _, _, status in self.seen}

    def __enter__(self) -> StatusSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class RotationRun:
    took: list[tuple[float, float]]  # per rotation: rotate_keys' figures
    lost: list[list[int]]  # per direction: echoes never answered
    sent: list[int]
    rtts: list[float]  # ms, every answered echo's
    not_connected: dict[tuple[str, str, str], str]  # StatusSampler.seen

    def summary(self) -> str:
        lost = [f"{len(x)} of {n}" for x, n in zip(self.lost, self.sent, strict=True)]
        return (f"{len(self.took)} rotations: reported after {max(t for t, _ in self.took):.3f}"
                f" s at most, handshaken everywhere after "
                f"{', '.join(f'{t:.3f}' for _, t in self.took)} s; lost {' and '.join(lost)}; "
                f"RTT max {max(self.rtts):.1f} ms; not connected: {self.not_connected}")


def rotate_under_pings(lab: Lab, rotations: Sequence[tuple[int, int]]) -> RotationRun:
    """Pods of clusters 1 and 2 ping each other ten times a second while the gateways
    rotate their keys: ``rotations`` is (cluster, rounds), in turn."""
    with Pinger(lab, 1, 2) as there, Pinger(lab, 2, 1) as back, StatusSampler(lab) as seen:
        pingers = [there, back]
        for p in pingers:
            p.wait_replies(5, 10, "before the rotations")
        took = [t for cluster, rounds in rotations
                for t in rotate_keys(lab, lab.active(cluster) or lab.gateway(cluster), rounds,
                                     pingers)]
        for p in pingers:
            p.wait_replies(5, 10, "after the rotations")
        results = [p.stop() for p in pingers]
    return RotationRun(took, [lost for _, lost in results], [sent for sent, _ in results],
                       [*there.rtts().values(), *back.rtts().values()], dict(seen.seen))
