"""The lab and `wgcable demo`, end to end: real namespaces, real agents, real wireguard-go.

Every test uses a lab name of its own and a lab root under tmp_path (never the real
/run/wgcable-lab), and removes its lab in a finally, pass or fail. Every process the lab
starts inherits WGCABLE_LAB_ROOT=<that root>, which is how a test finds any process left
behind without knowing its PID.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from wgcable.cable.types import Connection
from wgcable.cli.lab import remove
from wgcable.cli.main import main as cli_main
from wgcable.lab.lab import NS_PREFIX, Lab, is_lab_namespace
from wgcable.lab.netns import LabError, Namespace, list_namespaces
from wgcable.lab.topology import Topology

_seq = itertools.count()


# --- helpers -----------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    """Running and not a zombie (a killed lab process whose parent has gone is reparented,
    and this machine's PID 1 may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _procs_with_env(marker: str) -> list[int]:
    """Live processes whose environment carries ``marker`` (our WGCABLE_LAB_ROOT=...)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in env and _alive(int(d.name)):
            found.append(int(d.name))
    return found


def _lab_pids(root: Path, name: str) -> list[int]:
    """Holders, agents and wireguard-go daemons recorded for a lab that is up."""
    doc = json.loads((root / name / "lab.json").read_text())
    pids = [p for g in doc["gateways"] for p in (g["holder_pid"], g["agent_pid"]) if p]
    for g in doc["gateways"]:
        pidfile = root / name / f"gw{g['index']}" / "subwg0.wireguard-go.pid"
        if pidfile.exists():
            pids.append(int(pidfile.read_text()))
    return pids


class LabEnv:
    """One test's lab: a unique name, a root under tmp_path, the CLI bound to both."""

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = root, name
        self.marker = f"WGCABLE_LAB_ROOT={root}"

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "WGCABLE_LAB_ROOT": str(self.root)}
        return subprocess.run([sys.executable, "-m", "wgcable", *args], capture_output=True,
                              text=True, env=env, timeout=timeout, check=False)

    def load(self) -> Lab:
        return Lab.load(self.name, str(self.root))

    def assert_gone(self, pids: Sequence[int] = ()) -> None:
        left = [n for n in list_namespaces() if is_lab_namespace(NS_PREFIX + self.name, n)]
        assert left == []
        assert [p for p in pids if _alive(p)] == []
        assert _procs_with_env(self.marker) == []
        assert not (self.root / self.name).exists()


@pytest.fixture
def labenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LabEnv]:
    root = tmp_path / "labs"
    # Short and unique (lab names are at most 16 characters): pid and a counter.
    env = LabEnv(root, f"t{os.getpid() % 100000}-{next(_seq)}")
    # In-process Lab.up children inherit this too, so _procs_with_env finds them.
    monkeypatch.setenv("WGCABLE_LAB_ROOT", str(root))
    try:
        yield env
    finally:
        remove(env.name, str(root))


def _wait_connected(lab: Lab, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.all_connected():
            return True
        time.sleep(0.2)
    return False


def _wait_status(lab: Lab, ok: Callable[[Connection], bool], timeout: float = 60) -> bool:
    """Until every gateway reports connections to all others, each of them ``ok``."""
    want = len(lab.state.gateways) - 1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sts = [lab.status(gw) for gw in lab.state.gateways]
        if all(st is not None and len(st.gateway.connections) == want
               and all(ok(c) for c in st.gateway.connections) for st in sts):
            return True
        time.sleep(0.2)
    return False


# --- no root needed ----------------------------------------------------------------------

@pytest.mark.parametrize(("name", "mine"), [
    ("wglab-hub", True), ("wglab-gw12", True), ("wglab-pod3-0", True), ("wglab-nat2", True),
    ("wglab-broker", True), ("wglab-broker2", False),
    ("wglab-1-hub", False),  # lab "ab-1", not lab "ab"
    ("wglab-gw1-gw1", False), ("wglab", False), ("wglabx-hub", False), ("other", False),
])
def test_is_lab_namespace(name: str, mine: bool) -> None:
    assert is_lab_namespace("wglab", name) is mine


# --- the CLI -----------------------------------------------------------------------------

@pytest.mark.netns
def test_cli_up_status_ping_kill_down(labenv: LabEnv) -> None:
    n = labenv.name
    # One node per cluster: the gateway's pods alone (--nodes has tests of its own).
    up = labenv.cli("lab", "up", "--clusters", "2", "--nodes", "1", "--name", n, "--wait", "60")
    assert up.returncode == 0, up.stderr
    assert "all 2 cables connected" in up.stderr
    pids = _lab_pids(labenv.root, n)
    assert len(pids) == 6  # holder, agent and wireguard-go per gateway

    # The `up` process has exited: everything below comes from lab.json and status files.
    st = labenv.cli("lab", "status", "--name", n)
    assert st.returncode == 0, st.stderr
    assert "cluster2" in st.stdout
    assert st.stdout.count("running") == 2
    assert st.stdout.count("connected") >= 2
    assert "MISSING" not in st.stdout
    doc = json.loads(labenv.cli("lab", "status", "--name", n, "--json").stdout)
    assert doc["allConnected"] is True
    assert all(doc["namespaces"].values())
    assert [c["agentAlive"] for c in doc["clusters"]] == [True, True]
    assert [len(c["status"]["connections"]) for c in doc["clusters"]] == [1, 1]

    ping = labenv.cli("lab", "ping", "--name", n, "--count", "2")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "all 2 pairs reachable" in ping.stdout

    ex = labenv.cli("lab", "exec", "--name", n, "1", "--", "wgcable", "show", "--connections")
    assert ex.returncode == 0, ex.stderr
    assert "cluster2" in ex.stdout
    logs = labenv.cli("lab", "logs", "--name", n, "2")
    assert logs.returncode == 0
    assert "cluster2" in logs.stdout

    agent2 = doc["clusters"][1]["agentPID"]
    os.kill(agent2, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(agent2) and time.monotonic() < deadline:
        time.sleep(0.05)
    st = labenv.cli("lab", "status", "--name", n)
    assert st.returncode == 0
    assert f"pid {agent2} DEAD" in st.stdout
    doc = json.loads(labenv.cli("lab", "status", "--name", n, "--json").stdout)
    assert [c["agentAlive"] for c in doc["clusters"]] == [True, False]

    down = labenv.cli("lab", "down", "--name", n)
    assert down.returncode == 0, down.stderr
    labenv.assert_gone(pids)
    again = labenv.cli("lab", "status", "--name", n)
    assert again.returncode == 1
    assert again.stderr.startswith("wgcable lab: no lab")


@pytest.mark.netns
def test_cli_status_after_up_crashed(labenv: LabEnv) -> None:
    """`lab up` SIGKILLed while it waits for cables: the lab carries on and is found."""
    env = {**os.environ, "WGCABLE_LAB_ROOT": str(labenv.root)}
    up = subprocess.Popen([sys.executable, "-m", "wgcable", "lab", "up", "--clusters", "2",
                           "--name", labenv.name], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    try:
        assert up.stderr is not None
        for line in up.stderr:  # the first progress line: agents started, waiting
            if line.startswith("waiting for cables"):
                break
        up.kill()
    finally:
        up.wait(10)
    lab = labenv.load()
    assert _wait_connected(lab)
    st = labenv.cli("lab", "status", "--name", labenv.name)
    assert st.returncode == 0
    assert st.stdout.count("running") == 2
    pids = _lab_pids(labenv.root, labenv.name)
    assert labenv.cli("lab", "down", "--name", labenv.name).returncode == 0
    labenv.assert_gone(pids)


@pytest.mark.netns
def test_cli_nat_three_clusters(labenv: LabEnv) -> None:
    n = labenv.name
    up = labenv.cli("lab", "up", "--clusters", "3", "--nodes", "1", "--nat", "--name", n)
    assert up.returncode == 0, up.stderr
    doc = json.loads(labenv.cli("lab", "status", "--name", n, "--json").stdout)
    assert doc["allConnected"] is True
    c1, c2, c3 = doc["clusters"]
    assert [c["nat"] for c in (c1, c2, c3)] == [False, True, False]
    assert c2["privateIP"] != c2["publicIP"]
    # Seen from the others, cluster2 is reached at its NAT router's address, using NAT.
    for c in (c1, c3):
        (to2,) = [x for x in c["status"]["connections"]
                  if x["endpoint"]["cluster_id"] == "cluster2"]
        assert to2["usingNAT"] is True
        assert to2["usingIP"] == c2["publicIP"]
        assert to2["endpoint"]["public_ip"] == c2["publicIP"]
        assert to2["endpoint"]["nat_enabled"] is True
    # No retry: `lab up` waited for all connected, which now includes a health check
    # reply through every tunnel (issue 16), so a pair whose handshakes collided in the
    # router's conntrack is not counted until WireGuard's retry has settled it.
    ping = labenv.cli("lab", "ping", "--name", n)
    assert ping.returncode == 0, ping.stdout
    assert "all 6 pairs reachable" in ping.stdout
    pids = _lab_pids(labenv.root, n)
    assert labenv.cli("lab", "down", "--name", n).returncode == 0
    labenv.assert_gone(pids)


@pytest.mark.netns
def test_cli_errors_are_clear(labenv: LabEnv) -> None:
    r = labenv.cli("lab", "status", "--name", labenv.name)
    assert r.returncode == 1
    assert r.stderr.startswith(f"wgcable lab: no lab {labenv.name!r}")
    r = labenv.cli("lab", "up", "--clusters", "1", "--name", labenv.name)
    assert r.returncode == 1
    assert "must be 2-50" in r.stderr
    r = labenv.cli("lab", "up", "--name", "Bad_Name")
    assert r.returncode == 1
    assert r.stderr.startswith("wgcable lab: lab name 'Bad_Name'")
    labenv.assert_gone()


@pytest.mark.netns
def test_demo(labenv: LabEnv) -> None:
    r = labenv.cli("demo", "--clusters", "3", "--nodes", "1", "--name", labenv.name)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    start = lines.index("pod-to-pod over IPv4 (RTT in ms, each row pings each column):")
    head, *rows = lines[start + 1:start + 5]
    assert head.split() == ["FROM", "\\", "TO", "cluster1", "cluster2", "cluster3"]
    for i, row in enumerate(rows):
        cells = row.split()
        assert cells[0] == f"cluster{i + 1}"
        assert cells[i + 1] == "-"
        assert all(float(c) > 0 for j, c in enumerate(cells[1:]) if j != i)
    assert "all 6 pairs reachable" in r.stdout
    assert "demo took" in r.stdout
    assert "waiting for cables: 6/6 connected" in r.stderr  # not a TTY: a line per change
    labenv.assert_gone()


@pytest.mark.netns
def test_demo_refuses_when_already_up(labenv: LabEnv) -> None:
    lab = Lab.up(labenv.name, 2, root=str(labenv.root))
    try:
        r = labenv.cli("demo", "--name", labenv.name)
        assert r.returncode == 1
        assert "already up" in r.stderr
        assert f"wgcable lab down --name {labenv.name}" in r.stderr
        assert lab.agent_alive(1)  # the refusing demo left the lab alone
    finally:
        lab.down()
    labenv.assert_gone()


@pytest.mark.netns
def test_demo_sigint_tears_down(labenv: LabEnv) -> None:
    env = {**os.environ, "WGCABLE_LAB_ROOT": str(labenv.root)}
    # SIGINT as a terminal gives it: the pytest running this may have inherited it ignored
    # (a background job of a non-interactive shell does), and a Python started with SIGINT
    # ignored never raises KeyboardInterrupt: the demo would run to its end (exit 0).
    demo = subprocess.Popen([sys.executable, "-m", "wgcable", "demo", "--name", labenv.name],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert demo.stderr is not None
        # At its first line, while it builds the lab: the Ctrl-C cannot come after the end.
        for line in demo.stderr:
            if line.startswith("bringing up"):
                break
        # Ctrl-C reaches the whole foreground group; the second one lands during teardown
        # or just after it (removal is quick), when the demo is on its way out.
        os.killpg(demo.pid, signal.SIGINT)
        time.sleep(0.1)
        os.killpg(demo.pid, signal.SIGINT)
        rest = demo.stderr.read()
    finally:
        code = demo.wait(60)
    assert code == 130
    assert "lab removed" in rest
    labenv.assert_gone()


# --- the Python API ----------------------------------------------------------------------

@pytest.mark.netns
def test_api_ipv6(labenv: LabEnv) -> None:
    lab = Lab.up(labenv.name, 2, ipv6=True, root=str(labenv.root))
    try:
        assert _wait_connected(lab)
        for src, dst in ((1, 2), (2, 1)):
            assert lab.ping(src, dst) is not None
            # One ping, not retried, but given 5 s: the remote gateway's first neighbour
            # solicitation for its pod's IPv6 address goes unanswered in these namespaces,
            # so the first IPv6 packet to a pod waits ~1 s for the next (RTTs of 1001-1034
            # ms measured); a 2 s wait failed 4 runs of 16 on the earlier code, 1 of 12 on this.
            assert lab.ping(src, dst, v6=True, timeout=5) is not None
        st = lab.status(1)
        assert st is not None
        (conn,) = st.gateway.connections
        assert "fd00:2::/48" in conn.endpoint.subnets
        lab.stop_agent(2, signal.SIGKILL)
        assert not lab.agent_alive(2)
        assert lab.agent_alive(1)
        pids = _lab_pids(labenv.root, labenv.name)
    finally:
        assert lab.down() == []
    labenv.assert_gone(pids)


def _fail_on_cluster_2(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Topology.add_cluster

    def add_cluster(self: Topology, index: int, pods: int = 1, nat: bool = False) -> object:
        if index == 2:
            raise LabError("injected failure after the first cluster")
        return real(self, index, pods, nat)

    monkeypatch.setattr(Topology, "add_cluster", add_cluster)


@pytest.mark.netns
def test_api_partial_failure_cleans_up(labenv: LabEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_on_cluster_2(monkeypatch)
    with pytest.raises(LabError, match="injected"):
        Lab.up(labenv.name, 3, root=str(labenv.root))
    labenv.assert_gone()


@pytest.mark.netns
@pytest.mark.parametrize("lose_lab_json", [False, True])
def test_partial_failure_then_cli_down(
    labenv: LabEnv, monkeypatch: pytest.MonkeyPatch, lose_lab_json: bool
) -> None:
    """A build that died half-way without cleaning up (as if the process had been killed),
    with a running agent on cluster 1: `lab down` still removes all of it, even when
    lab.json is lost too (then by the namespaces' names and what runs in them)."""
    real_start: Callable[..., int] = Lab.start_agent

    def start_agent(self: Lab, which: object, extra: object = ()) -> int:
        gw = which if not isinstance(which, int | str) else self.gateway(which)
        if getattr(gw, "index", 0) == 2:
            raise LabError("injected failure starting the second agent")
        return real_start(self, which, extra)

    monkeypatch.setattr(Lab, "start_agent", start_agent)
    monkeypatch.setattr(Lab, "down", lambda self: [])  # the "crash": no cleanup
    with pytest.raises(LabError, match="injected"):
        Lab.up(labenv.name, 3, root=str(labenv.root))
    monkeypatch.undo()
    monkeypatch.setenv("WGCABLE_LAB_ROOT", str(labenv.root))
    pids = _lab_pids(labenv.root, labenv.name)
    assert len([p for p in pids if _alive(p)]) >= 4  # 3 holders, agent 1 (and its daemon)
    assert _procs_with_env(labenv.marker) != []
    if lose_lab_json:
        (labenv.root / labenv.name / "lab.json").unlink()
    r = labenv.cli("lab", "down", "--name", labenv.name)
    assert r.returncode == 0, r.stderr
    labenv.assert_gone(pids)


@pytest.mark.netns
def test_down_all(labenv: LabEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """`lab down --all`: every lab under the root, and leftover namespaces with a process in
    them. The sweep's prefix is narrowed to this test, since other labs may be running."""
    import wgcable.cli.lab as cli_lab

    monkeypatch.setattr(cli_lab, "SWEEP_PREFIX", f"{NS_PREFIX}{labenv.name}")
    lab = Lab.up(labenv.name, 2, root=str(labenv.root))
    stray = Namespace(f"{NS_PREFIX}{labenv.name}x-hub").create()
    sleeper = subprocess.Popen(stray.cmd("sleep", "600"), start_new_session=True)
    try:
        pids = [*_lab_pids(labenv.root, labenv.name), sleeper.pid]
        code = cli_main(["lab", "down", "--all", "--root", str(labenv.root)])
        assert code == 0
        sleeper.wait(10)
        assert stray.name not in list_namespaces()
    finally:
        sleeper.kill()
        sleeper.wait()
        stray.delete()
        lab.down()
    labenv.assert_gone(pids)


# --- SNAT ---------------------------------------------------------------------------------

# A TCP listener that accepts one connection and prints the peer's address ("none" if no
# connection came before the timeout).
_LISTENER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7777))
s.listen()
s.settimeout(float(sys.argv[1]))
print("ready", flush=True)
try:
    conn, peer = s.accept()
    conn.sendall(b"hi")
    conn.close()
    print(peer[0], flush=True)
except TimeoutError:
    print("none", flush=True)
"""
_CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], 7777), timeout=3) as c:
        print(c.recv(2).decode())
except OSError as e:
    print(f"failed: {e}")
"""


def _seen_from(src_ns: str, dst_ns: str, dst_ip: str, timeout: float = 6) -> tuple[str, str]:
    """(the peer address a listener in pod ``dst_ns`` saw, what the client in ``src_ns``
    got) for one TCP connection to ``dst_ip``."""
    server = subprocess.Popen(
        Namespace(dst_ns).cmd(sys.executable, "-c", _LISTENER, str(timeout)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        client = subprocess.run(Namespace(src_ns).cmd(sys.executable, "-c", _CLIENT, dst_ip),
                                capture_output=True, text=True, timeout=30, check=False)
        out, _ = server.communicate(timeout=timeout + 10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return out.strip(), client.stdout.strip()


def _peer_seen_by(lab: Lab, src: int, dst: int, timeout: float = 6) -> tuple[str, str]:
    """``_seen_from`` the first pod of gateway ``src``'s cluster to gateway ``dst``'s."""
    s, d = lab.gateway(src), lab.gateway(dst)
    return _seen_from(s.pod_ns[0], d.pod_ns[0], d.pod_ips[0], timeout)


def _our_table(lab: Lab, which: int) -> str:
    gw = lab.gateway(which)
    p = subprocess.run(lab.gateway_cmd(gw, "nft", "list", "table", "inet", "wgcable_subwg0"),
                       capture_output=True, text=True, timeout=30, check=False)
    return p.stdout if p.returncode == 0 else ""


@pytest.mark.netns
def test_snat_pods_reach_pods(labenv: LabEnv) -> None:
    """The CNI-like masquerade is on every gateway; our exemption keeps pod addresses."""
    lab = Lab.up(labenv.name, 2, snat=True, root=str(labenv.root))
    try:
        assert _wait_connected(lab)
        assert lab.ping(1, 2, count=2) is not None
        assert lab.ping(2, 1, count=2) is not None
        # The receiving pod sees the sending pod's own address, in both directions.
        assert _peer_seen_by(lab, 1, 2) == ("10.1.0.2", "hi")
        assert _peer_seen_by(lab, 2, 1) == ("10.2.0.2", "hi")
        # The masquerade is still there: the exemption works beside it, not by removing it.
        gw1 = lab.gateway(1)
        other = subprocess.run(lab.gateway_cmd(gw1, "nft", "list", "table", "ip",
                                               "wgcable_lab_snat"),
                               capture_output=True, text=True, timeout=30, check=True).stdout
        assert "masquerade" in other
        assert "snat ip to ip saddr" in _our_table(lab, 1)
    finally:
        lab.down()
    labenv.assert_gone()


@pytest.mark.netns
def test_snat_exemption_off_pods_lose_their_address(labenv: LabEnv) -> None:
    lab = Lab.up(labenv.name, 2, snat=True, root=str(labenv.root),
                 agent_args=["--no-snat-exemption"])
    try:
        # Handshakes do happen (the tunnel itself is fine), but the gateways' own pod-CIDR
        # addresses are masqueraded too: the health check never gets its reply, and the
        # status says so instead of "connected" (issue 16).
        assert _wait_status(lab, lambda c: c.status.value != "connected" and
                            "reply from health check IP" in c.status_message)
        table = _our_table(lab, 1)
        assert "snat" not in table
        assert "maxseg" in table  # MSS clamping is still on
        seen, got = _peer_seen_by(lab, 1, 2)
        # Masqueraded to a gateway address, or dropped (that address is not in the remote
        # peer's allowed IPs): either way, never the pod's own address.
        assert seen != "10.1.0.2"
        if seen == "none":
            assert got.startswith("failed")
        else:
            assert seen in {"10.1.0.1", lab.gateway(1).private_ip}
    finally:
        lab.down()
    labenv.assert_gone()


def _iperf3(lab: Lab, src: int, dst: int, seconds: int = 2) -> tuple[dict[str, Any],
                                                                        dict[str, Any]]:
    """(client, server) iperf3 JSON reports of a TCP run from ``src``'s pod to ``dst``'s.
    A client that cannot even connect is tried again, twice: now and then the first
    packets after every status said connected are lost (issue 16's open flake); the run
    itself, what these tests are about, is never retried."""
    for attempt in range(3):
        try:
            return _iperf3_once(lab, src, dst, seconds)
        except _NoConnection as e:
            print(f"iperf3 attempt {attempt + 1}: {e}")
    raise AssertionError("iperf3 never connected in 3 attempts")


def _gateway_advmss(lab: Lab, src: int, dst: int) -> int:
    """The MSS that gateway ``src`` itself advertises on a TCP connection to ``dst``'s pod
    through the tunnel (``ss -ti``'s advmss, read while the connection is open)."""
    d = lab.gateway(dst)
    target = d.pod_ips[0]
    listener = subprocess.Popen(
        Namespace(d.pod_ns[0]).cmd(sys.executable, "-c", LISTEN_ONCE, "5302"),
        stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "listening"
        got = subprocess.run(
            lab.gateway_cmd(lab.gateway(src), sys.executable, "-c", CONNECT_AND_SS, target,
                            "5302"),
            capture_output=True, text=True, timeout=30, check=True).stdout
    finally:
        listener.kill()  # ours, by PID
        listener.wait(5)
    found = re.search(r"advmss:(\d+)", got)
    assert found, got
    return int(found.group(1))


LISTEN_ONCE = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
c.recv(1)
"""

CONNECT_AND_SS = """
import socket, subprocess, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
print(subprocess.run(["ss", "-tinH", "dst", sys.argv[1]], capture_output=True, text=True,
                     check=True).stdout)
"""


class _NoConnection(Exception):
    pass


def _iperf3_once(lab: Lab, src: int, dst: int, seconds: int) -> tuple[dict[str, Any],
                                                                       dict[str, Any]]:
    s, d = lab.gateway(src), lab.gateway(dst)
    server = subprocess.Popen(
        Namespace(d.pod_ns[0]).cmd("iperf3", "-s", "-1", "-J", "-p", "5301"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait for the listener
            ss = Namespace(d.pod_ns[0]).run("ss", "-Htln", "sport", "= :5301", check=False)
            if ss.strip():
                break
            time.sleep(0.05)
        client = subprocess.run(
            Namespace(s.pod_ns[0]).cmd("iperf3", "-c", d.pod_ips[0], "-p", "5301", "-J",
                                       "-t", str(seconds), "--connect-timeout", "3000"),
            capture_output=True, text=True, timeout=seconds + 30, check=False)
        if client.returncode != 0 and "unable to connect" in client.stdout + client.stderr:
            raise _NoConnection((client.stdout + client.stderr)[-300:])
        out, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert client.returncode == 0, client.stdout + client.stderr
    return json.loads(client.stdout), json.loads(out)


@pytest.mark.netns
@pytest.mark.parametrize(("snat", "clamp"), [(False, True), (True, True), (False, False)],
                         ids=["plain", "snat", "plain-no-mss-clamp"])
def test_snat_iperf3_large_tcp_through_tunnel(labenv: LabEnv, snat: bool, clamp: bool) -> None:
    lab = Lab.up(labenv.name, 2, snat=snat, root=str(labenv.root),
                 agent_args=[] if clamp else ["--no-mss-clamp"])
    try:
        assert _wait_connected(lab)
        rule = 'oifname "subwg0" tcp option maxseg size set rt mtu'
        assert (rule in _our_table(lab, 1)) is clamp
        client, server = _iperf3(lab, 1, 2)
        received = client["end"]["sum_received"]["bits_per_second"]
        assert received > 10e6  # a functional floor, not a performance claim
        assert client["end"]["sum_received"]["bytes"] > 1_000_000
        # The MSS is read right after the handshake, before any PMTU discovery: at most the
        # device's MTU minus 40 only because the SYN/SYN-ACK were clamped (the pods' own
        # links have MTU 1500, which gives 1448 without the clamp: 1460 less timestamps).
        gw1 = lab.gateway(1)
        link = subprocess.run(lab.gateway_cmd(gw1, "ip", "-j", "link", "show", "subwg0"),
                              capture_output=True, text=True, timeout=30, check=True).stdout
        mtu = int(json.loads(link)[0]["mtu"])
        assert mtu < 1500
        assert (client["start"]["tcp_mss_default"] <= mtu - 40) is clamp
        # The gateway's own connections need no clamp, and our table has no output chain
        # for them: the kernel advertises the MSS of the route through the device.
        assert "hook output" not in _our_table(lab, 1) or snat  # snat: notrack's only
        # 1440 - 40, less 12 once timestamps were agreed (1448 through a 1500 link).
        assert mtu - 52 <= _gateway_advmss(lab, 1, 2) <= mtu - 40
        assert server["start"]["connected"][0]["remote_host"] == "10.1.0.2"
        # Issue 16: the cable's own UDP is not tracked in the sending gateway. Under a
        # masquerade the pods' flow is (the SNAT exemption's null binding lives on its
        # entry); with no NAT on the gateway our table has no NAT chain and no notrack
        # chains, and nothing turns tracking on.
        port = subprocess.run(lab.gateway_cmd(gw1, "wg", "show", "subwg0", "listen-port"),
                              capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
        assert port.isdigit(), port
        table = _our_table(lab, 1)
        assert ("notrack" in table) is snat, table
        assert ("snat ip to ip saddr" in table) is snat, table
        tracked = subprocess.run(lab.gateway_cmd(gw1, "cat", "/proc/net/nf_conntrack"),
                                 capture_output=True, text=True, timeout=30,
                                 check=True).stdout.splitlines()
        assert not [t for t in tracked if f"port={port} " in t and " udp " in t], tracked
        flows = [t for t in tracked if " tcp " in t and "dport=5301 " in t]
        if snat:
            assert flows, tracked
            assert all("src=10.1.0.2 dst=10.2.0.2" in t for t in flows), tracked
            assert all("src=10.2.0.2 dst=10.1.0.2" in t for t in flows), tracked  # not NATed
        else:
            assert flows == [], tracked
    finally:
        lab.down()
    labenv.assert_gone()


# --- what a new user hit (issue 21) ------------------------------------------------------

@pytest.mark.netns
def test_newcomer_lab_metrics_and_show_on_a_gateway(labenv: LabEnv) -> None:
    n = labenv.name
    up = labenv.cli("lab", "up", "--clusters", "2", "--name", n)
    assert up.returncode == 0, up.stderr
    m = labenv.cli("lab", "metrics", "--name", n, "1")
    assert m.returncode == 0, m.stderr
    (line,) = [x for x in m.stdout.splitlines() if x.startswith("submariner_connections{")]
    assert 'remote_cluster="cluster2"' in line
    assert labenv.cli("lab", "metrics", "--name", n, "3").returncode == 1
    # `ip netns exec`, not `lab exec`: the daemon's socket is in the gateway's own mount
    # namespace, which `show` must find by itself.
    gw = labenv.load().gateway(1).gateway_ns
    show = subprocess.run(Namespace(gw).cmd(sys.executable, "-m", "wgcable", "show"),
                          capture_output=True, text=True, timeout=30, check=False)
    assert show.returncode == 0, show.stderr
    assert show.stdout.startswith("interface: subwg0\n  backend: userspace\n")
    assert show.stdout.count("\npeer: ") == 1
    pids = _lab_pids(labenv.root, n)
    assert labenv.cli("lab", "down", "--name", n).returncode == 0
    labenv.assert_gone(pids)


# `lab up` killed (as by kill -9) just after cluster 2's namespaces were made, before
# lab.json recorded them: the point where an interrupted build leaves the most unsaid.
_KILLED_BUILD = """
import os, signal, sys
from wgcable.lab.lab import Lab
from wgcable.lab.topology import Topology
add = Topology.add_cluster
def add_then_die(self, index, *args, **kwargs):
    c = add(self, index, *args, **kwargs)
    if index == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return c
Topology.add_cluster = add_then_die
Lab.up(sys.argv[1], 3, root=sys.argv[2])
"""


@pytest.mark.netns
def test_newcomer_status_after_an_interrupted_build(labenv: LabEnv) -> None:
    n = labenv.name
    up = subprocess.run([sys.executable, "-c", _KILLED_BUILD, n, str(labenv.root)],
                        capture_output=True, text=True, timeout=60, check=False)
    assert up.returncode == -signal.SIGKILL, up.stderr
    prefix = NS_PREFIX + n
    made = [f"{prefix}-{x}" for x in ("gw1", "gw2", "hub", "pod1-0", "pod2-0")]
    st = labenv.cli("lab", "status", "--name", n)
    assert st.returncode == 0, st.stderr
    head, namespaces = st.stdout.splitlines()[:2]
    assert "its build was INTERRUPTED" in head
    assert "1 of 3 clusters recorded" in head
    assert namespaces == f"namespaces that exist: {', '.join(made)}"
    doc = json.loads(labenv.cli("lab", "status", "--name", n, "--json").stdout)
    assert doc["build"] == "interrupted"
    assert doc["namespaces"] == dict.fromkeys(made, True)
    assert labenv.cli("lab", "down", "--name", n).returncode == 0
    labenv.assert_gone()
