"""`ip netns exec <ns> wgcable show` on a real wireguard-go whose socket is in a mount
namespace of its own, as on a lab gateway (issue 21: it printed nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from wgcable.lab.netns import LabDevice, Namespace
from wgcable.wgctrl.types import Config

pytestmark = pytest.mark.netns


def _show(ns: Namespace, *args: str) -> subprocess.CompletedProcess[str]:
    # `ip netns exec` gives the command a mount namespace of its own, whose /run/wireguard
    # is the host's: the daemon's socket is not there.
    return subprocess.run(ns.cmd(sys.executable, "-m", "wgcable", "show", *args),
                          capture_output=True, text=True, timeout=30, check=False)


def test_newcomer_show_finds_daemon_in_private_mount_namespace(
        make_ns: Callable[[], Namespace], make_wg: Callable[..., LabDevice]) -> None:
    ns = make_ns()
    dev = make_wg(ns, "subwg0")
    with dev.client() as client:
        client.configure("subwg0", Config(listen_port=5871))
    r = _show(ns)
    assert r.returncode == 0, r.stderr
    assert "interface: subwg0\n  backend: userspace\n" in r.stdout
    assert "listening port: 5871" in r.stdout
    one = _show(ns, "subwg0", "--json")
    assert one.returncode == 0, one.stderr
    doc = json.loads(one.stdout)
    assert (doc["name"], doc["backend"], doc["listen_port"]) == ("subwg0", "userspace", 5871)


def test_newcomer_show_says_why_a_tun_link_cannot_be_read(
        make_ns: Callable[[], Namespace]) -> None:
    ns = make_ns()
    ns.ip("tuntap add dev subwg1 mode tun")  # a TUN link named like ours, no daemon behind
    r = _show(ns)
    assert r.returncode == 1
    assert r.stderr == ("wgcable show: subwg1: cannot be read: a TUN link, but no process in "
                        "this network namespace has a wireguard-go socket "
                        "/run/wireguard/subwg1.sock in its mount namespace\n")
    one = _show(ns, "subwg1")
    assert one.returncode == 1
    assert one.stderr.startswith("wgcable show: subwg1: cannot be read: a TUN link")
