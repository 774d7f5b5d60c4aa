"""The WireGuard device's lifecycle: adopt what exists, else create it (kernel first).

A device of ours that exists is adopted as it is, never deleted and re-created: a new
device would get a new ifindex (routes pointing at the old one vanish) and drop every
session. Without kernel WireGuard, a wireguard-go daemon backs the device; if it dies, the
driver starts a new one and re-applies the full state.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
from pathlib import Path

from wgcable.cable.wireguard.config import WireGuardConfig
from wgcable.cable.wireguard.userspace import WireGuardGoProcess
from wgcable.netlink import rtnl
from wgcable.netlink.message import NetlinkError
from wgcable.netlink.netns import call_in_netns
from wgcable.netlink.socket import NETLINK_ROUTE, NetlinkSocket
from wgcable.wgctrl import BackendKind, Client
from wgcable.wgctrl.kernel import KernelBackend
from wgcable.wgctrl.uapi import UAPIBackend

log = logging.getLogger(__name__)


class DeviceError(RuntimeError):
    pass


class WireGuardDevice:
    def __init__(self, cfg: WireGuardConfig) -> None:
        self.cfg = cfg
        self.name = cfg.device
        self.kind: BackendKind | None = None
        self._pidfile = Path(cfg.state_dir) / f"{cfg.device}.wireguard-go.pid"
        self.daemon = WireGuardGoProcess(
            cfg.device, cfg.netns, cfg.wireguard_go,
            log_path=Path(cfg.state_dir) / f"{cfg.device}.wireguard-go.log",
            pidfile=self._pidfile)
        self._client: Client | None = None
        # For link(), read on every status check: opening a socket in another namespace
        # costs a thread. Closed by close().
        self._link_sock: NetlinkSocket | None = None
        self._link_lock = threading.Lock()

    def _rtnl(self) -> NetlinkSocket:
        return call_in_netns(self.cfg.netns, lambda: NetlinkSocket(NETLINK_ROUTE))

    def link(self) -> rtnl.Link | None:
        with self._link_lock:
            if self._link_sock is None:
                self._link_sock = self._rtnl()
            try:
                return rtnl.get_link(self.name, self._link_sock)
            except OSError:  # a socket in doubt (a timed-out reply) is not used again
                self._link_sock.close()
                self._link_sock = None
                raise

    def ensure(self) -> bool:
        """Make sure the device exists. True when it was created now (so it is empty)."""
        link = self.link()
        if link is not None and link.kind == "wireguard":
            self._use(BackendKind.KERNEL)
            return False
        if self._adopt_daemon():
            return False
        if link is not None:
            raise DeviceError(
                f"device {self.name!r}: the name is taken by a {link.kind or 'plain'} link"
            )
        if self.cfg.backend in ("auto", "kernel") and self._create_kernel():
            return True
        if self.cfg.backend == "kernel":
            raise DeviceError(f"device {self.name!r}: this kernel has no WireGuard")
        self.daemon.start()  # writes the PID file as soon as the daemon is spawned
        self._use(BackendKind.USERSPACE)
        log.info("started wireguard-go for %s (pid %s)", self.name, self.daemon.pid)
        return True

    def _adopt_daemon(self) -> bool:
        try:
            pid = int(self._pidfile.read_text())
        except (OSError, ValueError):
            return False
        if not self.daemon.adopt(pid):
            return False
        self._use(BackendKind.USERSPACE)
        log.info("adopted wireguard-go for %s (pid %s)", self.name, pid)
        return True

    def _create_kernel(self) -> bool:
        try:
            with self._rtnl() as s:
                rtnl.create_link(self.name, "wireguard", s)
        except NetlinkError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOENT, errno.EINVAL):
                return False  # no wireguard module here
            raise DeviceError(f"device {self.name!r}: create failed: {e}") from e
        self._use(BackendKind.KERNEL)
        log.info("created kernel WireGuard device %s", self.name)
        return True

    def _use(self, kind: BackendKind) -> None:
        self.kind = kind
        if self._client is not None:
            self._client.close()
        if kind is BackendKind.KERNEL:
            kernel = KernelBackend.open(self.cfg.netns)
            if kernel is None:
                raise DeviceError(f"device {self.name!r}: the wireguard netlink family is gone")
            self._client = Client([kernel])
        else:
            self._client = Client([UAPIBackend(self.daemon.socket_dirs)])

    @property
    def client(self) -> Client:
        if self._client is None:
            raise DeviceError(f"device {self.name!r} is not set up")
        return self._client

    def alive(self) -> bool:
        if self.kind is BackendKind.USERSPACE:
            return self.daemon.alive() and self.daemon.socket_path() is not None
        link = self.link()
        return link is not None and link.kind == "wireguard"

    def wait_gone(self, timeout: float, stop: threading.Event,
                  wake_fd: int | None = None) -> None:
        """Wait up to ``timeout`` or until ``stop`` (``wake_fd`` readable: the stop's own
        signal for a daemon wait); with a wireguard-go daemon, return as soon as it exits
        (a kernel link has no process to wait for: the caller polls)."""
        if self.kind is BackendKind.USERSPACE and self.daemon.pid is not None:
            self.daemon.wait(timeout, wake_fd)
        else:
            stop.wait(timeout)

    def is_up(self) -> bool:
        link = self.link()
        return link is not None and link.is_up

    def set_up(self, mtu: int | None) -> None:
        with self._rtnl() as s:
            if mtu is not None:
                link = rtnl.get_link(self.name, s)
                if link is not None and link.mtu != mtu:
                    rtnl.set_mtu(self.name, mtu, s)
            rtnl.set_link_up(self.name, s)

    def delete(self) -> None:
        """Remove the device, ours whether this instance made it or an earlier one did:
        stop the daemon (wireguard-go removes its link on exit), or delete the kernel link;
        and the daemon's PID file and log."""
        if self.daemon.pid is None:
            self._adopt_daemon()
        self.daemon.stop()
        link = self.link()
        if link is not None and link.kind == "wireguard":
            with self._rtnl() as s, contextlib.suppress(NetlinkError):
                rtnl.delete_link(self.name, s)
        log_path = self.daemon.log_path
        for path in (self._pidfile, *((log_path, log_path.with_name(log_path.name + ".1"))
                                      if log_path else ())):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.close()

    def stop_starting(self) -> None:
        """Start no daemon from now on; one being started on another thread is stopped by
        its PID before this returns (else it would outlive us, recorded nowhere)."""
        self.daemon.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._close_link()

    def _close_link(self) -> None:
        with self._link_lock:
            if self._link_sock is not None:
                self._link_sock.close()
                self._link_sock = None
