"""Probes sent from the gateway to each remote: a ping through the tunnel to its health
check IP (the tunnel's UDP path works both ways), a don't-fragment ping at the tunnel's MTU
(the underlay carries full-size packets), and a NAT discovery request to its discovery port
(the gateway answers on UDP even when the tunnel does not), with the agent's requester."""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import subprocess
import time
from dataclasses import dataclass

from wgcable.diagnose.checks import Remote
from wgcable.diagnose.result import Result, fail, passed, warn
from wgcable.natdiscovery.messages import (
    VERSION,
    EndpointDetails,
    IPPort,
    Message,
    MessageError,
    Request,
    Response,
    decode,
    encode,
)
from wgcable.natdiscovery.requester import Fallback, TargetProbe
from wgcable.natdiscovery.types import Choice, Target, Timings

PING_TIMEOUT = 1.0  # seconds per echo; two are sent
DISCOVERY_TIMEOUT = 1.5


def ping(dst: str, *, size: int | None = None, timeout: float = PING_TIMEOUT) -> bool:
    """Whether ``dst`` answered one of two echoes; ``size``: payload bytes, sent with DF."""
    argv = ["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", f"{timeout:g}"]
    if size is not None:
        argv += ["-M", "do", "-s", str(size)]
    try:
        p = subprocess.run([*argv, dst], capture_output=True, timeout=timeout * 2 + 5,
                           check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return p.returncode == 0


@dataclass(frozen=True, slots=True)
class Discovery:
    answered: bool
    detail: str


def _source_ip(family: socket.AddressFamily, dst: str, port: int) -> str:
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((dst, port))
            return str(s.getsockname()[0]).split("%", 1)[0]
    except OSError:
        return ""


def nat_discovery(remote: Remote, local_cluster: str, local_cable: str,
                  timeout: float = DISCOVERY_TIMEOUT) -> Discovery:
    """One NAT discovery exchange with the remote's discovery port, as the agent's
    requester makes it (from an ephemeral port: the agent's own is taken)."""
    if not remote.natt_port:
        return Discovery(False, "publishes no NAT discovery port")
    target = Target(remote.cluster_id, remote.cable_name, remote.private_ip, remote.public_ip,
                    remote.natt_port, remote.nat_enabled)
    now = time.monotonic()
    probe = TargetProbe(target, now, timings=Timings(resend=(0.3,), private_window=0.3,
                                                     timeout=timeout))
    local = EndpointDetails(local_cluster, local_cable)
    socks: dict[int, socket.socket] = {}
    try:
        while probe.decision is None:
            now = time.monotonic()
            for send in probe.poll(now, local):
                v = send.address.version
                if v not in socks:
                    fam = socket.AF_INET if v == 4 else socket.AF_INET6
                    socks[v] = socket.socket(fam, socket.SOCK_DGRAM)
                    # Any local address, an ephemeral port: the kernel picks the source.
                    socks[v].bind(("0.0.0.0" if v == 4 else "::", 0))  # noqa: S104
                sock = socks[v]
                src = _source_ip(sock.family, str(send.address), send.port)
                req = Request(send.request_number, send.sender, send.receiver,
                              IPPort(src, sock.getsockname()[1]),
                              IPPort(str(send.address), send.port))
                with contextlib.suppress(OSError):  # no route: the probe times out, says so
                    sock.sendto(encode(Message(VERSION, req)), (str(send.address), send.port))
            deadline = probe.next_deadline()
            wait = max(0.0, (deadline or now) - time.monotonic())
            ready, _, _ = select.select(list(socks.values()), [], [], min(wait, 0.5))
            for sock in ready:
                data, addr = sock.recvfrom(2048)
                try:
                    msg = decode(data)
                except MessageError:
                    continue
                if isinstance(msg.body, Response):
                    source = (ipaddress.ip_address(str(addr[0]).split("%", 1)[0]), addr[1])
                    probe.on_response(msg.body, source, time.monotonic())
    finally:
        for s in socks.values():
            s.close()
    decision = probe.decision
    if isinstance(decision, Choice):
        return Discovery(True, decision.detail)
    assert isinstance(decision, Fallback)
    return Discovery(False, decision.detail)


def udp_reachable(remote: Remote, tunnel_ok: bool, discovery: Discovery) -> Result:
    where = f"{remote.address}:{remote.udp_port or '?'}"
    if tunnel_ok:
        extra = f"; NAT discovery: {discovery.detail}" if remote.natt_port else ""
        return passed("udp-port", f"{remote.cluster_id}: {where} carries the tunnel (health "
                      f"check IP {remote.health_check_ip} answers through it){extra}")
    if discovery.answered:
        return fail("udp-port", f"{remote.cluster_id}: its gateway answers NAT discovery "
                    f"({discovery.detail}), but nothing comes back through the tunnel to "
                    f"{where}", f"open UDP {remote.udp_port or 'the tunnel port'} both ways "
                    "between the gateways (firewall, security group, NAT forwarding); check "
                    "the handshake")
    if not remote.health_check_ip and not remote.natt_port:
        return warn("udp-port", f"{remote.cluster_id}: cannot be probed: it publishes "
                    "neither a health check IP nor a NAT discovery port",
                    "publish a health check IP (--health-check-ip) on the remote gateway")
    probed = "no answer through the tunnel" if remote.health_check_ip else \
        "no health check IP to probe through the tunnel"
    return fail("udp-port", f"{remote.cluster_id}: {where} unreachable: {probed}; NAT "
                f"discovery: {discovery.detail}",
                f"check that {remote.address} is reachable from here and that UDP "
                f"{remote.udp_port or 'the tunnel port'} and {remote.natt_port or 4490} are "
                "open both ways")


def pmtu(remote: Remote, mtu: int, small_ok: bool, big_ok: bool) -> Result:
    """``small_ok``: a plain ping answered; ``big_ok``: a DF ping of ``mtu`` bytes did."""
    if not remote.health_check_ip:
        return warn("mtu", f"{remote.cluster_id}: no health check IP to probe",
                    "publish a health check IP on the remote gateway")
    if not small_ok:
        return warn("mtu", f"{remote.cluster_id}: not probed: {remote.health_check_ip} does "
                    "not answer even small pings (see udp-port)", "fix reachability first")
    if big_ok:
        return passed("mtu", f"{remote.cluster_id}: {mtu}-byte packets with DF reach "
                      f"{remote.health_check_ip} through the tunnel")
    v6 = ":" in remote.health_check_ip
    overhead = 80 if v6 else 60
    return fail("mtu", f"{remote.cluster_id}: a {mtu}-byte packet with DF (the tunnel's "
                f"MTU) gets no answer from {remote.health_check_ip}, small ones do: the "
                f"underlay path carries less than {mtu + overhead} bytes, and full-size "
                "packets are lost in the tunnel",
                f"lower the tunnel MTU (--mtu, e.g. the underlay path MTU minus {overhead}) "
                "or raise the underlay MTU")


def payload_size(mtu: int, v6: bool) -> int:
    """ICMP payload that makes an IP packet of ``mtu`` bytes."""
    return mtu - (48 if v6 else 28)
