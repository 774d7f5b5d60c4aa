"""Smoke tests for kernel WireGuard: run inside the virtme-ng VM (tests/kernel_vm.py).

Everything happens in fresh `wgc*` network namespaces, deleted on teardown; the (VM's) root
namespace only gets the wireguard module loaded.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

# Simulated underlay and tunnel addresses: benchmark range, inside our namespaces only.
UNDERLAY_A, UNDERLAY_B = "198.18.0.1", "198.18.0.2"
TUNNEL_A, TUNNEL_B = "198.19.0.1", "198.19.0.2"


def run(*args: str, stdin: str | None = None) -> str:
    """Run a command, fail with its stderr when it fails, return its stdout."""
    done = subprocess.run(
        args, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)} -> {done.returncode}: {done.stderr.strip()}"
    return done.stdout


def in_ns(ns: str, *args: str, stdin: str | None = None) -> str:
    return run("ip", "netns", "exec", ns, *args, stdin=stdin)


@pytest.fixture
def netns() -> Iterator[Callable[[], str]]:
    """Factory of fresh `wgc*` namespaces; all of them are deleted on teardown, also on failure."""
    created: list[str] = []

    def make() -> str:
        name = f"wgc{secrets.token_hex(4)}"
        run("ip", "netns", "add", name)
        created.append(name)
        return name

    yield make
    for name in created:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30, check=False)


@pytest.fixture(scope="module", autouse=True)
def wireguard_module() -> None:
    run("modprobe", "wireguard")


def keypair(tmp_path: Path, name: str) -> tuple[Path, str, str]:
    """A fresh private key (written to a 0600 file for `wg set`) and its public key."""
    private = run("wg", "genkey").strip()
    public = run("wg", "pubkey", stdin=private + "\n").strip()
    path = tmp_path / f"{name}.key"
    path.touch(mode=0o600)
    path.write_text(private + "\n")
    return path, private, public


def test_wireguard_module_is_loaded() -> None:
    assert Path("/sys/module/wireguard").is_dir()
    # Proves this runs on a kernel with WireGuard, not silently on the host's.
    assert Path("/sys/module/wireguard/version").read_text().strip()


def test_kernel_link_configured_with_wg_and_dumped(
    netns: Callable[[], str], tmp_path: Path
) -> None:
    ns = netns()
    run("ip", "-n", ns, "link", "add", "wgc0", "type", "wireguard")
    assert "wireguard" in run("ip", "-n", ns, "-d", "link", "show", "wgc0")

    key_file, private, public = keypair(tmp_path, "local")
    _, _, peer_public = keypair(tmp_path, "peer")
    psk = run("wg", "genpsk").strip()
    psk_file = tmp_path / "psk"
    psk_file.touch(mode=0o600)
    psk_file.write_text(psk + "\n")

    in_ns(
        ns, "wg", "set", "wgc0", "listen-port", "51820", "fwmark", "0x1234",
        "private-key", str(key_file),
        "peer", peer_public, "preshared-key", str(psk_file),
        "endpoint", f"{UNDERLAY_B}:51821", "allowed-ips", "198.19.0.0/24,198.19.1.1/32",
        "persistent-keepalive", "25",
    )  # fmt: skip
    lines = in_ns(ns, "wg", "show", "wgc0", "dump").splitlines()
    assert lines[0].split("\t") == [private, public, "51820", "0x1234"]
    assert len(lines) == 2
    peer = lines[1].split("\t")
    assert peer[:3] == [peer_public, psk, f"{UNDERLAY_B}:51821"]
    assert set(peer[3].split(",")) == {"198.19.0.0/24", "198.19.1.1/32"}
    # No handshake, no traffic (the link is down), keepalive as set.
    assert peer[4:] == ["0", "0", "0", "25"]

    in_ns(ns, "wg", "set", "wgc0", "peer", peer_public, "remove")
    assert len(in_ns(ns, "wg", "show", "wgc0", "dump").splitlines()) == 1


def test_handshake_and_ping_between_namespaces(netns: Callable[[], str], tmp_path: Path) -> None:
    a, b = netns(), netns()
    run("ip", "link", "add", "wgcva", "netns", a, "type", "veth", "peer", "name", "wgcvb",
        "netns", b)  # fmt: skip
    key_a, _, pub_a = keypair(tmp_path, "a")
    key_b, _, pub_b = keypair(tmp_path, "b")
    sides = [
        (a, "wgcva", UNDERLAY_A, TUNNEL_A, key_a, pub_b, UNDERLAY_B, TUNNEL_B),
        (b, "wgcvb", UNDERLAY_B, TUNNEL_B, key_b, pub_a, UNDERLAY_A, TUNNEL_A),
    ]
    for ns, veth, under, tun, key, peer_pub, peer_under, peer_tun in sides:
        run("ip", "-n", ns, "addr", "add", f"{under}/30", "dev", veth)
        run("ip", "-n", ns, "link", "set", veth, "up")
        run("ip", "-n", ns, "link", "add", "wgc0", "type", "wireguard")
        in_ns(ns, "wg", "set", "wgc0", "listen-port", "51820", "private-key", str(key),
              "peer", peer_pub, "endpoint", f"{peer_under}:51820",
              "allowed-ips", f"{peer_tun}/32")  # fmt: skip
        run("ip", "-n", ns, "addr", "add", f"{tun}/24", "dev", "wgc0")
        run("ip", "-n", ns, "link", "set", "wgc0", "up")

    # The first packet starts the handshake; the kernel queues it until the session is up.
    in_ns(a, "ping", "-c", "2", "-i", "0.2", "-W", "10", TUNNEL_B)

    peer = in_ns(a, "wg", "show", "wgc0", "dump").splitlines()[1].split("\t")
    assert peer[0] == pub_b
    assert int(peer[4]) > 0, "no handshake recorded"
    assert int(peer[5]) > 0, "nothing received through the tunnel"
    assert int(peer[6]) > 0, "nothing sent through the tunnel"
