"""Benchmark: wgcable.wgctrl against the wg tool on one wireguard-go device, in the same run.

Run as root from the repository root::

    .venv/bin/python bench/wgctrl_bench.py [--peers 1000] [--repeat 10]

It creates a network namespace ``wgcb-<pid>``, starts wireguard-go in it with a private tmpfs
on /run/wireguard (so nothing touches the root network namespace or the host's socket
directory), measures, and tears everything down on any exit (normal, exception, Ctrl-C,
SIGTERM). It only prints: timings are never asserted.

Measured, with median and p90 in milliseconds:

- apply N peers to an empty device: ``Client.configure`` vs ``wg setconf FILE``;
- change one peer among N: ``Client.configure`` with a one-peer Config, the same with
  ``update_only``, and the full cycle read + ``config_delta`` + configure, vs ``wg set``;
- read N peers: ``Client.device`` vs ``wg show <dev> dump``;
- the process-start cost that every wg figure includes (``nsenter ... wg --version``).
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import ParamSpec, TypeVar

from wgcable.cable.wireguard.userspace import PRIVATE_SOCKET_DIR
from wgcable.wgctrl import (
    BackendKind,
    Client,
    Config,
    Device,
    IPNetwork,
    Key,
    Peer,
    PeerConfig,
    UDPAddr,
    config_delta,
)
from wgcable.wgctrl.key import clamp
from wgcable.wgctrl.uapi import UAPIBackend, protocol

DEV = "wgb0"
NETNS_PREFIX = "wgcb-"
SOCKET_WAIT_S = 10.0
ENDPOINT_BASE = int(ipaddress.IPv4Address("198.18.0.0"))  # 198.18.0.0/15, benchmarking range
MAX_PEERS = 65535  # 10.<hi>.<lo>.0/24 and fd00:0:0:<i>::/64 stay unique up to here

TARGET_APPLY_RATIO = 1.5
TARGET_CHANGE_MS = 5.0
TARGET_READ_RATIO = 2.0


# --------------------------------------------------------------------------------------------
# Timing helpers


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples)


def p90_ms(samples: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    s = sorted(samples)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


@dataclass
class Row:
    group: str
    impl: str
    samples: list[float] = field(default_factory=list)
    baseline: Row | None = None  # the wg row this one is compared with
    target: str = ""
    met: bool | None = None
    note: str = ""


P = ParamSpec("P")
T = TypeVar("T")


def timed(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> tuple[float, T]:
    """How long one call ``fn(*args, **kwargs)`` takes, in ms, and what it returned."""
    t0 = time.perf_counter_ns()
    result = fn(*args, **kwargs)
    return (time.perf_counter_ns() - t0) / 1e6, result


# --------------------------------------------------------------------------------------------
# The sandbox: a network namespace with wireguard-go in it


class Sandbox:
    """wireguard-go in ``wgcb-<pid>`` with a private /run/wireguard; undone by :meth:`close`.

    With ``netns``, the daemon runs in that existing namespace instead (which the caller
    owns: it is neither created nor deleted here), for the device ``dev``.
    """

    def __init__(self, netns: str | None = None, dev: str = DEV, new_session: bool = False,
                 log_level: str | None = None) -> None:
        # The two ways the agent's start differs (dataplane_hypotheses measures them).
        self.new_session = new_session
        self.log_level = log_level
        self.own_netns = netns is None
        self.netns = netns or f"{NETNS_PREFIX}{os.getpid()}"
        self.dev = dev
        self.tmpdir = tempfile.mkdtemp(prefix=NETNS_PREFIX)
        self.proc: subprocess.Popen[bytes] | None = None
        self._netns_made = False
        self._log_path = os.path.join(self.tmpdir, "wireguard-go.log")

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("wireguard-go is not running")
        return self.proc.pid

    @property
    def socket_dir(self) -> str:
        # /run, not /var/run: /var/run is an absolute symlink, which would resolve in our root.
        return f"/proc/{self.pid}/root/run/wireguard"

    def start(self) -> None:
        if self.own_netns:
            subprocess.run(["ip", "netns", "add", self.netns], check=True)
            self._netns_made = True
        script = (
            f"{PRIVATE_SOCKET_DIR} && "
            f"exec env WG_PROCESS_FOREGROUND=1 wireguard-go -f {self.dev}"
        )
        with open(self._log_path, "wb") as log:
            # `ip netns exec` and sh both exec, so this PID is wireguard-go's own.
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.new_session,
                env=None if self.log_level is None else {**os.environ,
                                                         "LOG_LEVEL": self.log_level},
            )
        sock = os.path.join(self.socket_dir, f"{self.dev}.sock")
        deadline = time.monotonic() + SOCKET_WAIT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wireguard-go exited ({self.proc.returncode}): {self._log()}")
            if os.path.exists(sock) and self._answers(sock):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no UAPI socket at {sock} after {SOCKET_WAIT_S}s")
            time.sleep(0.02)

    @staticmethod
    def _answers(path: str) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(1.0)
            s.connect(path)
            s.sendall(protocol.GET_REQUEST)
            return s.recv(16) != b""
        except OSError:
            return False
        finally:
            s.close()

    def _log(self) -> str:
        try:
            with open(self._log_path, "rb") as f:
                return f.read()[-2000:].decode(errors="replace").strip()
        except OSError:
            return "(no log)"

    def wg(self, *args: str) -> list[str]:
        """The argv that runs ``wg`` inside wireguard-go's mount and network namespaces."""
        return ["nsenter", "-t", str(self.pid), "-m", "-n", "wg", *args]

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # by PID
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._netns_made:
            self._netns_made = False
            subprocess.run(["ip", "netns", "del", self.netns], check=False)
        shutil.rmtree(self.tmpdir, ignore_errors=True)


@contextmanager
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below

    sigs = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    old = {s: signal.getsignal(s) for s in sigs}
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        sb.start()
        yield sb
    finally:
        # Ignore further signals while tearing down, so cleanup itself is not interrupted.
        for s in sigs:
            signal.signal(s, signal.SIG_IGN)
        try:
            sb.close()
        finally:
            for s, h in old.items():
                signal.signal(s, h if h is not None else signal.SIG_DFL)


# --------------------------------------------------------------------------------------------
# The workload


def device_key() -> Key:
    """A fixed private key for the device, so every run sees the same one. Never printed."""
    return Key(clamp(hashlib.sha256(b"wgcable bench device key").digest()))


def make_peers(n: int) -> list[Peer]:
    """N peers: a 10.x /24 each, a fd00::/8 /64 for every other one, an endpoint, keepalive 25."""
    peers: list[Peer] = []
    for i in range(n):
        ips: list[IPNetwork] = [ipaddress.IPv4Network(f"10.{i >> 8}.{i & 255}.0/24")]
        if i % 2 == 0:
            ips.append(ipaddress.IPv6Network(f"fd00:0:0:{i:x}::/64"))
        peers.append(
            Peer(
                public_key=Key.generate().public_key(),
                endpoint=UDPAddr(ipaddress.IPv4Address(ENDPOINT_BASE + 1 + i), 51820),
                persistent_keepalive=25,
                allowed_ips=ips,
            )
        )
    return peers


def peer_configs(peers: list[Peer]) -> list[PeerConfig]:
    return [
        PeerConfig(
            public_key=p.public_key,
            endpoint=p.endpoint,
            persistent_keepalive=p.persistent_keepalive,
            allowed_ips=list(p.allowed_ips),
        )
        for p in peers
    ]


def wg_conf(peers: list[Peer], private_key: Key | None = None,
            listen_port: int | None = None) -> str:
    """The same peers as a `wg setconf` file. setconf replaces the whole device, so the file
    carries the device's private key too (the file is written 0600 and removed after)."""
    out = ["[Interface]", f"PrivateKey = {(private_key or device_key()).base64()}"]
    if listen_port is not None:
        out.append(f"ListenPort = {listen_port}")
    out.append("")
    for p in peers:
        out += [
            "[Peer]",
            f"PublicKey = {p.public_key.base64()}",
            f"AllowedIPs = {', '.join(str(n) for n in p.allowed_ips)}",
            f"Endpoint = {p.endpoint}",
            f"PersistentKeepalive = {p.persistent_keepalive}",
            "",
        ]
    return "\n".join(out)


def write_secret(path: str, text: str) -> None:
    """A new file, 0600 from the start (it carries a private key)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def fingerprint(dev: Device) -> set[tuple[bytes, str, int, frozenset[str]]]:
    return {
        (p.public_key.raw, str(p.endpoint), p.persistent_keepalive,
         frozenset(str(n) for n in p.allowed_ips))
        for p in dev.peers
    }


class Bench:
    def __init__(self, sb: Sandbox, n: int, repeat: int) -> None:
        self.sb = sb
        self.n = n
        self.repeat = repeat
        self.client = Client([UAPIBackend([sb.socket_dir])])
        self.client.configure(DEV, Config(private_key=device_key()))
        self.peers = make_peers(n)
        self.cfgs = peer_configs(self.peers)
        self.conf_path = os.path.join(sb.tmpdir, "peers.conf")
        write_secret(self.conf_path, wg_conf(self.peers))
        self.rows: list[Row] = []
        self._serial = 0  # makes every change a real change

    # -- helpers --

    def run(self, argv: list[str]) -> bytes:
        return subprocess.run(argv, check=True, stdout=subprocess.PIPE).stdout

    def reset(self) -> None:
        self.client.configure(DEV, Config(replace_peers=True))
        if self.client.device(DEV).peers:
            raise RuntimeError("device not empty after reset")

    def row(self, group: str, impl: str, baseline: Row | None = None, target: str = "") -> Row:
        r = Row(group, impl, baseline=baseline, target=target)
        self.rows.append(r)
        return r

    def next_endpoint(self) -> UDPAddr:
        self._serial += 1
        s = self._serial
        ip = ipaddress.IPv4Address(ENDPOINT_BASE + (1 << 16) + s % 65000)  # 198.19.0.0/16
        return UDPAddr(ip, 40000 + s % 20000)

    def next_allowed(self, i: int) -> list[IPNetwork]:
        """New allowed IPs for peer i, from 100.64.0.0/10: they never collide with others'."""
        self._serial += 1
        s = self._serial
        old_v6 = [n for n in self.peers[i].allowed_ips if n.version == 6]
        return [ipaddress.IPv4Network(f"100.{64 + (s >> 8) % 64}.{s & 255}.0/24"), *old_v6]

    def pick(self, r: int) -> int:
        return (r * 7919 + 13) % self.n

    # -- the measurements --

    def process_start(self) -> None:
        """Run with an empty device: what a wg figure pays before doing any work."""
        bare = self.row("process start (empty device)", "wg --version (no nsenter)")
        ns = self.row("", "nsenter -m -n wg --version")
        lp = self.row("", "nsenter ... wg show <dev> listen-port")
        get = self.row("", "wgcable device() (1 UAPI get)")
        self.run(["wg", "--version"])
        for _ in range(self.repeat):
            bare.samples.append(timed(self.run, ["wg", "--version"])[0])
            ns.samples.append(timed(self.run, self.sb.wg("--version"))[0])
            lp.samples.append(timed(self.run, self.sb.wg("show", DEV, "listen-port"))[0])
            get.samples.append(timed(self.client.device, DEV)[0])

    def apply(self) -> None:
        group = f"apply {self.n} peers to empty device"
        wg = self.row(group, "wg setconf FILE")
        wc = self.row("", "wgcable configure(replace_peers)", baseline=wg,
                      target=f"<= {TARGET_APPLY_RATIO}x wg")
        enc = self.row("", "  of which encode_set (no I/O)", baseline=wg)
        cfg = Config(replace_peers=True, peers=self.cfgs)
        argv = self.sb.wg("setconf", DEV, self.conf_path)
        want = fingerprint(Device(DEV, BackendKind.USERSPACE, peers=self.peers))
        for r in range(self.repeat + 1):  # the first round warms up and checks, untimed
            self.reset()
            t_wc, _ = timed(self.client.configure, DEV, cfg)
            got_wc = fingerprint(self.client.device(DEV)) if r == 0 else None
            self.reset()
            t_wg, _ = timed(self.run, argv)
            if r == 0:
                got_wg = fingerprint(self.client.device(DEV))
                if got_wc != want or got_wg != want:
                    raise RuntimeError("wgcable and wg setconf did not produce the same device")
                continue
            wc.samples.append(t_wc)
            wg.samples.append(t_wg)
            enc.samples.append(timed(protocol.encode_set, cfg)[0])
        wc.met = median_ms(wc.samples) <= TARGET_APPLY_RATIO * median_ms(wg.samples)
        # Leave the device with the N peers for the next measurements.
        self.reset()
        self.client.configure(DEV, cfg)

    def cycle(self, desired: Device) -> Config:
        """The full reconcile: read the device, compute the delta, write it."""
        delta = config_delta(self.client.device(DEV), desired)
        self.client.configure(DEV, delta)
        return delta

    def change_one(self) -> None:
        group = f"change 1 peer's endpoint among {self.n}"
        wg = self.row(group, "wg set <dev> peer K endpoint E")
        target = f"< {TARGET_CHANGE_MS:g} ms"
        mini = self.row("", "wgcable configure(1 PeerConfig)", baseline=wg, target=target)
        upd = self.row("", "wgcable configure(1 PeerConfig, update_only)", baseline=wg,
                       target=target)
        cyc = self.row("", "wgcable device()+config_delta+configure", baseline=wg,
                       target=target)
        group_ips = f"change 1 peer's allowed IPs among {self.n}"
        wg_ips = self.row(group_ips, "wg set <dev> peer K allowed-ips A,B")
        mini_ips = self.row("", "wgcable configure(1 PeerConfig, replace)", baseline=wg_ips,
                            target=target)
        # `desired` shares the Peer objects we update, so it mirrors the device exactly and
        # each delta is exactly one peer.
        desired = Device(DEV, BackendKind.USERSPACE, peers=self.peers)
        for r in range(self.repeat + 1):  # round 0 is an untimed warm-up
            i = self.pick(r)
            p = self.peers[i]
            samples: list[tuple[Row, float]] = []

            ep = self.next_endpoint()
            one = Config(peers=[PeerConfig(public_key=p.public_key, endpoint=ep)])
            samples.append((mini, timed(self.client.configure, DEV, one)[0]))
            p.endpoint = ep

            ep = self.next_endpoint()
            one = Config(peers=[PeerConfig(public_key=p.public_key, update_only=True,
                                           endpoint=ep)])
            samples.append((upd, timed(self.client.configure, DEV, one)[0]))
            p.endpoint = ep

            p.endpoint = self.next_endpoint()
            t, delta = timed(self.cycle, desired)
            samples.append((cyc, t))
            if [pc.public_key for pc in delta.peers] != [p.public_key]:
                raise RuntimeError(f"config_delta sent {len(delta.peers)} peers, expected 1")

            ep = self.next_endpoint()
            argv = self.sb.wg("set", DEV, "peer", p.public_key.base64(), "endpoint", str(ep))
            samples.append((wg, timed(self.run, argv)[0]))
            p.endpoint = ep

            ips = self.next_allowed(i)
            one = Config(peers=[PeerConfig(public_key=p.public_key, replace_allowed_ips=True,
                                           allowed_ips=ips)])
            samples.append((mini_ips, timed(self.client.configure, DEV, one)[0]))
            p.allowed_ips = ips

            ips = self.next_allowed(i)
            argv = self.sb.wg("set", DEV, "peer", p.public_key.base64(), "allowed-ips",
                              ",".join(str(n) for n in ips))
            samples.append((wg_ips, timed(self.run, argv)[0]))
            p.allowed_ips = ips

            if r:
                for row, t in samples:
                    row.samples.append(t)
        if fingerprint(self.client.device(DEV)) != fingerprint(desired):
            raise RuntimeError("device drifted from the expected state during the changes")
        for row in (mini, upd, cyc, mini_ips):
            row.met = median_ms(row.samples) < TARGET_CHANGE_MS

    def read(self) -> None:
        group = f"read {self.n} peers"
        wg = self.row(group, "wg show <dev> dump")
        wc = self.row("", "wgcable device()", baseline=wg, target=f"<= {TARGET_READ_RATIO}x wg")
        raw = self.row("", "  of which UAPI get round trip (bytes)", baseline=wg)
        parse = self.row("", "  of which parse_get (no I/O)", baseline=wg)
        sock = os.path.join(self.sb.socket_dir, f"{DEV}.sock")
        argv = self.sb.wg("show", DEV, "dump")
        for r in range(self.repeat + 1):  # round 0 is an untimed warm-up
            t_wc, dev = timed(self.client.device, DEV)
            if len(dev.peers) != self.n:
                raise RuntimeError(f"read {len(dev.peers)} peers, expected {self.n}")
            t_wg, out = timed(self.run, argv)
            if out.count(b"\n") != self.n + 1:
                raise RuntimeError("wg show dump did not list every peer")
            t_raw, reply = timed(uapi_get, sock)
            t_parse, _ = timed(protocol.parse_get, DEV, reply)
            if r:
                wc.samples.append(t_wc)
                wg.samples.append(t_wg)
                raw.samples.append(t_raw)
                parse.samples.append(t_parse)
        wc.met = median_ms(wc.samples) <= TARGET_READ_RATIO * median_ms(wg.samples)


def uapi_get(path: str) -> bytes:
    """One raw ``get=1`` exchange: the floor any client pays before parsing."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        s.sendall(protocol.GET_REQUEST)
        chunks: list[bytes] = []
        while True:
            c = s.recv(1 << 16)
            if not c:
                break
            chunks.append(c)
            if c.endswith(b"\n\n"):
                break
        return b"".join(chunks)
    finally:
        s.close()


# --------------------------------------------------------------------------------------------
# Output


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, check=False, capture_output=True, text=True).stdout
    except OSError:
        return "?"
    first = out.strip().splitlines()[0] if out.strip() else "?"
    return first.split(" - ")[0]


def print_table(rows: list[Row], n: int, repeat: int) -> None:
    print(f"wgcable.wgctrl vs wg on one wireguard-go device: {n} peers, {repeat} timed "
          f"repetitions each (after 1 untimed warm-up)")
    print(f"  {tool_version(['wg', '--version'])}; "
          f"{tool_version(['wireguard-go', '--version'])}; Python {sys.version.split()[0]}; "
          f"{os.cpu_count()} CPUs")
    print("  NOTE: every wg figure includes starting nsenter + wg (two execs); see the "
          "'process start' rows.")
    print()
    hdr = (f"{'operation':<40} {'implementation':<46} {'median':>8} {'p90':>8} "
           f"{'x wg':>6}  {'target':<12} {'met':<3}")
    print(hdr)
    print("-" * len(hdr))
    for k, r in enumerate(rows):
        if r.group and k:
            print()
        ratio = (f"{median_ms(r.samples) / median_ms(r.baseline.samples):.2f}"
                 if r.baseline else "")
        met = "" if r.met is None else ("yes" if r.met else "NO")
        print(f"{r.group:<40} {r.impl:<46} {median_ms(r.samples):>8.2f} "
              f"{p90_ms(r.samples):>8.2f} {ratio:>6}  {r.target:<12} {met:<3}")
    print()
    print("  times in ms (median, p90 nearest-rank); 'x wg' = median / median of the group's "
          "wg row.")
    print(f"  targets: apply <= {TARGET_APPLY_RATIO}x wg setconf; one change < "
          f"{TARGET_CHANGE_MS:g} ms; read <= {TARGET_READ_RATIO}x wg show dump.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--peers", type=int, default=1000, help="peers on the device (default 1000)")
    ap.add_argument("--repeat", type=int, default=10, help="timed repetitions (default 10)")
    args = ap.parse_args(argv)
    if not 1 <= args.peers <= MAX_PEERS:
        ap.error(f"--peers must be 1-{MAX_PEERS}")
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if os.geteuid() != 0:
        print("wgctrl_bench: needs root (network namespaces, wireguard-go)", file=sys.stderr)
        return 2
    for tool in ("ip", "nsenter", "wg", "wireguard-go"):
        if shutil.which(tool) is None:
            print(f"wgctrl_bench: {tool} not found; run scripts/install.sh", file=sys.stderr)
            return 2
    with sandbox() as sb:
        b = Bench(sb, args.peers, args.repeat)
        b.process_start()
        b.apply()
        b.change_one()
        b.read()
        b.client.close()
    print_table(b.rows, args.peers, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
