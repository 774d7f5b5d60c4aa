"""Scale: one agent sees N remote Endpoints appear, through a real broker or a directory.

Sections ``scale-broker`` (a lab with ``--store kubernetes``: etcd and a real kube-apiserver
in the broker namespace) and ``scale-directory`` (the directory store). Each builds a lab of
2 clusters; cluster 2's agent is stopped (SIGTERM: its tunnel side stays, and it no longer
talks to the store), so the agent of cluster 1 is the store's only client. Then, for N = 10,
100, 1000 remote clusters (cluster 2, which is real, and N - 1 fakes with distinct /24
subnets in 100.64.0.0/10 and keys, at addresses nothing answers, as in the ``agent``
section):

- **all N applied**: agent 1 is paused (SIGSTOP) while the N - 1 fakes are written (through
  the API by a few threads, or as files), then resumed: the time from SIGCONT until its
  device holds N peers and table 220 their N + 1 routes (read with ``wg`` and ``ip``). So
  the N Endpoints reach the agent at once, and the figure compares with the driver
  connecting N in one batch (``control``'s connect-N, measured again here in the same run:
  a namespace of its own, ``bench.control_bench.ControlPlane``). Writing them is timed
  apart (setup). The agent's CPU over that time, and its peak RSS (VmHWM) once applied.
- **steady state**: for a window, the agent's CPU and RSS (/proc, every second) and, for the
  broker, the API requests it made, from the API server's own counters
  (``apiserver_request_total`` of group ``submariner.io`` in its ``/metrics``, before and
  after), per minute by verb and resource: a LIST there would be polling.
- **one change -> ping**: cluster 2's Endpoint is removed (agent 1 drops its routes), then
  written again; the time from the write to the first ping reply pod 1 -> pod 2 (ping
  every 20 ms), with the N - 1 others in place.
- **410 -> relist** (broker only): the API server is restarted; its new watch cache starts
  after the agent's last resourceVersion, so the agent's watch gets 410 Gone and lists
  again. From agent 1's log: the 410 line -> the "listed N endpoints" line.

Between levels the fakes are deleted (one deletecollection by label, or the files) and the
agent is waited for to remove them. Everything is under a temporary root and in lab
namespaces; the lab is removed on every exit. Figures only, nothing asserted.

Run as root: ``.venv/bin/python -m bench --only scale-broker,scale-directory``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.agent_bench import (
    CLK_TCK,
    AgentLog,
    Pinger,
    endpoint_file,
    sample,
    wait_for,
    write_atomic,
)
from bench.common import Row, plain_log_axes, row, signals_held, summary, timed_ms
from bench.control_bench import ControlPlane
from wgcable.cable.types import Endpoint
from wgcable.lab.kubeapi import LocalAPIServer, unavailable_reason
from wgcable.lab.lab import Lab
from wgcable.store.directory import atomic_write
from wgcable.wgctrl import Key

ENDPOINTS = "/apis/submariner.io/v1/namespaces/submariner-k8s-broker/endpoints"
LABEL = "wgcable-bench"  # on every fake, so that one deletecollection removes them
WRITERS = 4  # threads writing Endpoints through the API
DEVICE = "subwg0"
REMOTE_NET = "10.2.0.0/16"  # cluster 2's pod CIDR: its route says cluster 2 is connected
# The fakes' gateways: off the lab's on-link 198.18.0.0/16 and blackholed in gateway 1's
# namespace, as remote gateways that are down behind a router. (On-link, each would hold
# wireguard-go's handshakes in an unresolved neighbour entry, charged to its socket: with
# hundreds, its sends block for the 3 s of failed ARP, and so does its UAPI.)
FAKE_GATEWAYS = "198.19.128.0/17"
_METRIC = re.compile(r'^(?P<name>apiserver_request_total|apiserver_longrunning_gauge)'
                     r'\{(?P<labels>[^}]*)\} (?P<value>\S+)$')
_LABELS = re.compile(r'(\w+)="([^"]*)"')


def counts(quick: bool) -> list[int]:
    return [10] if quick else [10, 100, 1000]


# --- the agent and its device ------------------------------------------------------------------


def _gw_out(lab: Lab, *args: str) -> str:
    return subprocess.run(lab.gateway_cmd(lab.gateway(1), *args), capture_output=True,
                          text=True, check=False, timeout=60).stdout


def applied(lab: Lab) -> tuple[int, int]:
    """(peers on gateway 1's device, routes in its table 220)."""
    peers = len(_gw_out(lab, "wg", "show", DEVICE, "peers").split())
    routes = len(_gw_out(lab, "ip", "route", "show", "table", "220").splitlines())
    return peers, routes


def wait_applied(lab: Lab, n: int, timeout: float) -> float:
    """Seconds until gateway 1 holds n peers and n + 1 routes (each fake has one subnet,
    cluster 2 two)."""
    return wait_for(lambda: applied(lab) == (n, n + 1), timeout,
                    f"{n} peers and {n + 1} routes on gateway 1", 0.05)


def _ticks(pid: int) -> int:
    rest = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(rest[11]) + int(rest[12])


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


@contextmanager
def paused(pid: int) -> Iterator[None]:
    """The agent stopped (SIGSTOP) inside the block; resumed on the way out, whatever."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def fake_endpoint(i: int) -> Endpoint:
    """Remote cluster ``fake<i>``: a /24 of 100.64.0.0/10, a key, a healthCheckIP."""
    net = f"100.{64 + i // 256}.{i % 256}"
    return Endpoint(
        cluster_id=f"fake{i}", cable_name="cable", hostname=f"fake{i}-gw",
        subnets=[f"{net}.0/24"], private_ip=f"198.19.{128 + i // 250}.{i % 250 + 1}",
        health_check_ip=f"{net}.1", backend="wireguard",
        backend_config={"publicKey": Key.generate().public_key().base64(),
                        "udp-port": "4500"})


# --- the stores: write, delete, and cluster 2's Endpoint ----------------------------------------


class BrokerStore:
    """Endpoints through the lab's API server, as its admin, from the broker namespace."""

    def __init__(self, server: LocalAPIServer) -> None:
        self.server = server
        self.token = (server.dir / "token").read_text()
        self.ca = str(server.dir / "certs" / "apiserver.crt")

    def _conn(self) -> http.client.HTTPSConnection:
        ctx = ssl.create_default_context(cafile=self.ca)
        return http.client.HTTPSConnection(self.server.address, self.server.port,
                                           context=ctx, timeout=120)

    def _send(self, conn: http.client.HTTPSConnection, method: str, path: str,
              body: Any = None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()

    def write_fakes(self, indexes: range) -> None:
        """POST the fakes, WRITERS connections at once (each kept open: one TLS handshake
        per writer, not per object)."""
        objs = []
        for i in indexes:
            obj = fake_endpoint(i).to_k8s_object()
            obj["metadata"]["labels"] = {LABEL: "scale"}
            objs.append(obj)

        def writer(part: list[dict[str, Any]]) -> None:
            def go() -> None:
                conn = self._conn()
                try:
                    for obj in part:
                        status, reply = self._send(conn, "POST", ENDPOINTS, obj)
                        if status != 201:
                            raise RuntimeError(f"POST {obj['metadata']['name']}: HTTP "
                                               f"{status}: {reply[:200]!r}")
                finally:
                    conn.close()
            self.server.call(go)

        with ThreadPoolExecutor(WRITERS) as pool:
            for f in [pool.submit(writer, objs[k::WRITERS]) for k in range(WRITERS)]:
                f.result()

    def _one(self, method: str, path: str) -> tuple[int, bytes]:
        """One request on a connection of its own (the lab's ``request`` gives up after
        10 s: too soon for a deletecollection of 1000 on this machine)."""
        def go() -> tuple[int, bytes]:
            conn = self._conn()
            try:
                return self._send(conn, method, path)
            finally:
                conn.close()
        return self.server.call(go)

    def delete_fakes(self) -> None:
        status, body = self._one("DELETE", f"{ENDPOINTS}?labelSelector={LABEL}")
        if status != 200:
            raise RuntimeError(f"deleting the fakes: HTTP {status}: {body[:200]!r}")

    def list_ms(self) -> float:
        """A plain list of the Endpoints (HTTPS GET, JSON parsed), the floor of a relist."""
        def go() -> float:
            conn = self._conn()
            try:
                t0 = time.perf_counter()
                status, body = self._send(conn, "GET", ENDPOINTS)
                json.loads(body)
                if status != 200:
                    raise RuntimeError(f"listing: HTTP {status}")
                return (time.perf_counter() - t0) * 1000
            finally:
                conn.close()
        return self.server.call(go)

    def take_remote(self) -> Callable[[], None]:
        """Delete cluster 2's Endpoint; returns what writes it back."""
        _, body = self.server.request("GET", ENDPOINTS)
        [obj] = [o for o in body["items"] if o["spec"]["cluster_id"] == "cluster2"]
        name = obj["metadata"]["name"]
        for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields",
                    "generation"):
            obj["metadata"].pop(key, None)
        if self.server.request("DELETE", f"{ENDPOINTS}/{name}")[0] != 200:
            raise RuntimeError(f"deleting {name}")

        def put_back() -> None:
            status, reply = self.server.request("POST", ENDPOINTS, obj)
            if status != 201:
                raise RuntimeError(f"creating {name}: HTTP {status}: {str(reply)[:200]}")
        return put_back

    def requests(self) -> dict[str, float]:
        """The API server's count of requests to submariner.io (see :func:`api_requests`)."""
        status, text = self.server.request("GET", "/metrics")
        if status != 200 or not isinstance(text, str):
            raise RuntimeError(f"/metrics: HTTP {status}")
        return api_requests(text)


def api_requests(metrics: str) -> dict[str, float]:
    """From an API server's /metrics: requests to group submariner.io by 'VERB resource'
    (completed ones, ``apiserver_request_total``), and 'open VERB resource' for those under
    way now (``apiserver_longrunning_gauge``: a watch is counted in the total when it ends)."""
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        labels = dict(_LABELS.findall(m.group("labels")))
        if labels.get("group") != "submariner.io":
            continue
        key = f"{labels.get('verb', '?')} {labels.get('resource', '?')}"
        if labels.get("subresource"):
            key += "/" + labels["subresource"]
        if m.group("name") == "apiserver_longrunning_gauge":
            key = "open " + key
        out[key] = out.get(key, 0.0) + float(m.group("value"))
    return out


class FileStore:
    """Endpoints as files of the lab's directory store."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.dir = lab.store_dir / "endpoints"

    def write_fakes(self, indexes: range) -> None:
        for i in indexes:
            obj = fake_endpoint(i).to_k8s_object()
            atomic_write(self.dir, f"fake{i}-cable.json", json.dumps(obj).encode())

    def delete_fakes(self) -> None:
        for p in self.dir.glob("fake*-cable.json"):
            p.unlink()

    def take_remote(self) -> Callable[[], None]:
        path = endpoint_file(self.lab, "cluster2")
        content = path.read_bytes()
        path.unlink()
        return lambda: write_atomic(path, content)


# --- one level ---------------------------------------------------------------------------------


def _one_change(lab: Lab, store: BrokerStore | FileStore) -> tuple[float, float | None]:
    """Cluster 2's Endpoint removed, then written again: ms from the write to the first
    ping reply pod 1 -> pod 2, and to agent 1's log line "connected cluster cluster2"
    (the driver has the endpoint: the rest is applying it, the handshake and the ping)."""
    log = AgentLog(lab.log_file(lab.gateway(1)))
    put_back = store.take_remote()
    wait_for(lambda: REMOTE_NET not in _gw_out(lab, "ip", "route", "show", "table", "220"),
             30, "gateway 1 to drop cluster 2's routes")
    time.sleep(0.3)
    gw1, gw2 = lab.gateway(1), lab.gateway(2)
    pinger = Pinger(gw1.pod_ns[0], gw2.pod_ips[0])
    try:
        if not pinger.sent.wait(5):
            raise RuntimeError("ping printed nothing")
        time.sleep(0.1)
        log.mark()
        t = time.time()
        put_back()
        if not pinger.replied.wait(30):
            raise RuntimeError("no ping reply within 30 s of cluster 2's Endpoint")
    finally:
        pinger.stop()
    assert pinger.first_reply is not None
    accepted = log.first(r"\bconnected cluster cluster2 at ", t)
    return (pinger.first_reply - t) * 1000, None if accepted is None else (accepted - t) * 1000


def _relist(lab: Lab, server: LocalAPIServer, log: AgentLog) -> dict[str, Any]:
    """Restart the API server; agent 1's watch gets 410 and lists again."""
    log.mark()
    t0 = time.time()
    server.stop_apiserver()
    server.start_apiserver()
    lab.record_broker(server)
    ready = time.time()
    gone_at: list[float] = []

    def relisted() -> bool:
        g = log.first(r"expired \(410 Gone\)", t0)
        if g is None:
            return False
        gone_at[:] = [g]
        return log.first(r"listed \d+ endpoints of ", g) is not None

    try:
        wait_for(relisted, 60, "agent 1 to list again after a 410", 0.1)
    except RuntimeError:
        return {"gone": False, "note": "no 410 within 60 s of the API server's restart"}
    listed = log.first(r"listed \d+ endpoints of ", gone_at[0])
    assert listed is not None
    line = next(text for t, text in log.lines() if t == listed and "listed" in text)
    m = re.search(r"in (\d+) ms", line)
    return {"gone": True, "relist_ms": float(m.group(1)) if m else (listed - gone_at[0]) * 1e3,
            "gone_to_listed_ms": (listed - gone_at[0]) * 1000,
            "ready_to_listed_s": listed - ready, "restart_s": ready - t0}


def level(lab: Lab, store: BrokerStore | FileStore, n: int, repeat: int, window: float,
          server: LocalAPIServer | None) -> dict[str, Any]:
    pid = lab.gateway(1).agent_pid
    out: dict[str, Any] = {"n": n, "load_before": list(os.getloadavg())}
    with paused(pid):
        t_write, _ = timed_ms(store.write_fakes, range(n - 1))
    ticks0 = _ticks(pid)
    t0 = time.monotonic()
    # (the context manager has resumed it just now)
    wait_applied(lab, n, 600)
    apply_s = time.monotonic() - t0
    cpu_s = (_ticks(pid) - ticks0) / CLK_TCK
    out.update(write_s=t_write / 1000, apply_ms=apply_s * 1000, apply_cpu_s=cpu_s,
               apply_cpu_pct=cpu_s / apply_s * 100,
               peak_rss_mib=_status_kib(pid, "VmHWM") / 1024)
    print(f"  N={n}: {n - 1} written in {t_write / 1000:.1f} s; all applied "
          f"{apply_s * 1000:.0f} ms after resuming the agent", file=sys.stderr, flush=True)
    time.sleep(2)  # the status write and health targets of the new peers settle
    before = store.requests() if isinstance(store, BrokerStore) else {}
    t_window = time.monotonic()
    usage = sample({"agent": pid}, window)["agent"]
    if isinstance(store, BrokerStore):
        after = store.requests()
        minutes = (time.monotonic() - t_window) / 60
        out["requests_per_min"] = {k: (after[k] - before.get(k, 0.0)) / minutes
                                   for k in sorted(after) if after[k] != before.get(k, 0.0)
                                   and not k.startswith("open ")}
        out["open_requests"] = {k[5:]: v for k, v in after.items() if k.startswith("open ")}
    out["steady"] = vars(usage)
    runs = [_one_change(lab, store) for _ in range(repeat)]
    changes = [r[0] for r in runs]
    out["change_ms"] = summary(changes)
    accepted = [r[1] for r in runs if r[1] is not None]
    if accepted:
        out["change_accepted_ms"] = summary(accepted)
    print(f"  N={n}: one change -> first reply {statistics.median(changes):.0f} ms "
          f"(median of {len(changes)})", file=sys.stderr, flush=True)
    if server is not None and isinstance(store, BrokerStore):
        out["relist"] = _relist(lab, server, AgentLog(lab.log_file(lab.gateway(1))))
        out["relist"]["plain_list_ms"] = summary([store.list_ms() for _ in range(3)])
        print(f"  N={n}: 410 -> relist: {out['relist']}", file=sys.stderr, flush=True)
        wait_applied(lab, n, 120)  # nothing lost across the restart
    out["load_after"] = list(os.getloadavg())
    store.delete_fakes()
    wait_applied(lab, 1, 600)
    return out


def floor(ns: list[int], rounds: int) -> dict[str, Any]:
    """The driver connecting N in one batch (control's connect-N), medians of ``rounds``."""
    cp = ControlPlane()
    out: dict[str, Any] = {}
    try:
        cp.start()
        for n in ns:
            samples = []
            for _ in range(rounds + 1):  # the first: an untimed warm-up
                samples.append(timed_ms(cp.connect, n)[0])
                cp.disconnect(n)
            out[str(n)] = summary(samples[1:])
    finally:
        cp.close()
    return out


def _check_agent(pid: int) -> None:
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    if not comm.startswith("python"):
        raise RuntimeError(f"agent PID {pid} runs {comm!r}, not python")


def scale(kind: str, repeat: int, quick: bool) -> dict[str, Any]:
    ns = counts(quick)
    window = 5.0 if quick else 30.0
    result: dict[str, Any] = {"store": kind, "window_s": window, "levels": []}
    result["floor_ms"] = floor(ns, 1 if quick else 3)
    root = tempfile.mkdtemp(prefix=f"wgcable-scale-{kind[:3]}-")
    lab: Lab | None = None
    try:
        t0 = time.monotonic()
        lab = Lab.up(f"s{os.getpid() % 100000}{kind[0]}", 2, root=root, store=kind,
                     agent_args=["--status-interval", "5"])
        wait_for(lab.all_connected, 60, "both cables")
        result["lab_up_s"] = time.monotonic() - t0
        subprocess.run(lab.gateway_cmd(lab.gateway(1), "ip", "route", "add", "blackhole",
                                       FAKE_GATEWAYS), check=True)
        lab.stop_agent(2)  # its Endpoint stays, its tunnel side stays up
        _check_agent(lab.gateway(1).agent_pid)
        server = lab.broker() if kind == "kubernetes" else None
        store: BrokerStore | FileStore = BrokerStore(server) if server else FileStore(lab)
        for n in ns:
            result["levels"].append(level(lab, store, n, repeat, window, server))
    finally:
        if lab is not None:
            with signals_held():
                for p in lab.down():
                    print(f"scale_bench: teardown: {p}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
    result["rows"] = rows(result)
    return result


def rows(result: dict[str, Any]) -> list[Row]:
    kind = result["store"]
    impl = "agent, kubernetes broker" if kind == "kubernetes" else "agent, directory store"
    out: list[Row] = []
    for lv in result["levels"]:
        n = lv["n"]
        fl = result["floor_ms"][str(n)]["median"]
        out.append(row("all N Endpoints appear -> all applied", impl, n, lv["apply_ms"], "ms",
                       floor=fl, floor_impl="driver connect-N",
                       note=f"writing them took {lv['write_s']:.1f} s (setup); agent CPU "
                            f"{lv['apply_cpu_pct']:.0f}% meanwhile"))
        st = lv["steady"]
        out.append(row("agent peak RSS (VmHWM) once applied", impl, n, lv["peak_rss_mib"],
                       "MiB"))
        out.append(row("agent RSS, steady state", impl, n, st["rss_mean"], "MiB"))
        out.append(row("agent CPU, steady state", impl, n, st["cpu_mean"], "%",
                       note=f"busiest second {st['cpu_max']:.1f}%"))
        ch = lv["change_ms"]
        acc = lv.get("change_accepted_ms")
        split = "" if acc is None else f"; accepted by the driver after {acc['median']:.0f} ms"
        out.append(row("one Endpoint change -> first ping reply", impl, n, ch["median"], "ms",
                       p90=ch["p90"],
                       note=f"min {ch['min']:.0f}, max {ch['max']:.0f} ms{split} (median)"))
        if "requests_per_min" in lv:
            rpm = lv["requests_per_min"]
            lists = sum(v for k, v in rpm.items() if k.startswith("LIST"))
            detail = ", ".join(f"{k} {v:.1f}" for k, v in rpm.items()) or "none"
            open_now = ", ".join(f"{k} {v:g}" for k, v in lv.get("open_requests", {}).items()
                                 if v) or "none"
            out.append(row("API requests per minute, steady state", impl, n,
                           sum(rpm.values()), "/min",
                           note=f"{detail}; LIST {lists:g}; open at the end: {open_now} "
                                "(a watch is counted in the total when it ends)"))
        rl = lv.get("relist")
        if rl and rl.get("gone"):
            out.append(row("410 Gone -> relisted", impl, n, rl["gone_to_listed_ms"], "ms",
                           floor=rl["plain_list_ms"]["median"],
                           floor_impl="plain GET + json.loads",
                           note=f"the store's list {rl['relist_ms']:.0f} ms; the API server "
                                f"restarted in {rl['restart_s']:.1f} s, the agent relisted "
                                f"{rl['restart_s'] + rl['ready_to_listed_s']:.1f} s after "
                                "the restart began"))
    return out


def run_broker(repeat: int, quick: bool = False) -> dict[str, Any]:
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    return scale("kubernetes", repeat, quick)


def run_directory(repeat: int, quick: bool = False) -> dict[str, Any]:
    return scale("directory", repeat, quick)


# --- the plot ----------------------------------------------------------------------------------


def plot(result: dict[str, Any], ax: Any) -> None:
    """Cost against N: apply time (and the driver's floor), one change, relist; RSS."""
    lv = result["levels"]
    ns = [x["n"] for x in lv]
    ax.plot(ns, [x["apply_ms"] for x in lv], "o-", color="C0", label="all N applied")
    ax.plot(ns, [result["floor_ms"][str(n)]["median"] for n in ns], "o:", color="C0",
            alpha=0.6, label="driver connect-N (floor)")
    ax.plot(ns, [x["change_ms"]["median"] for x in lv], "s-", color="C2",
            label="one change -> ping")
    relist = [(x["n"], x["relist"]["gone_to_listed_ms"]) for x in lv
              if x.get("relist", {}).get("gone")]
    if relist:
        ax.plot(*zip(*relist, strict=True), "^-", color="C3", label="410 -> relisted")
    plain_log_axes(ax)
    ax.set_xlabel("remote clusters N")
    ax.set_ylabel("ms")
    ax2 = ax.twinx()
    ax2.plot(ns, [x["steady"]["rss_mean"] for x in lv], "d--", color="C1", alpha=0.7,
             label="agent RSS (MiB)")
    ax2.axhline(80, color="C1", linestyle=":", linewidth=0.8)
    ax2.set_ylim(bottom=0)
    ax2.set_ylabel("RSS MiB (dashed; dotted: 80 MiB target)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=6, loc="upper left")
    store = "kubernetes broker" if result["store"] == "kubernetes" else "directory store"
    ax.set_title(f"Scale, {store}: cost against N")
    ax.grid(True, which="both", alpha=0.3)
