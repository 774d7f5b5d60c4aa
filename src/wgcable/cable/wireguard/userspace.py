"""wireguard-go daemons: started, found again after our own restart, and stopped by PID.

The daemon runs in its own session so that signals aimed at the agent (SIGTERM, ^C) do not
take the tunnels down with it. Its PID is kept in the state directory so that a later
instance of the driver adopts the running daemon instead of starting a second one.

With ``netns``, the daemon runs in that network namespace with a private tmpfs on
/run/wireguard (its socket path is not namespaced). Its socket is always reached through
/proc/<pid>/root/run/wireguard (/run, not /var/run: that symlink is absolute and would
resolve against our own root).

The PID file is written as soon as the daemon is spawned, not once its socket is up: an
agent killed during a start leaves a daemon that the next one finds. ``close()`` ends the
race with a start in progress on another thread (the driver's supervisor): under one lock,
either the start completed first (the daemon stays, like every tunnel on close) or the
daemon is stopped by its PID before ``close()`` returns. No daemon is left unrecorded.

The daemon's output goes to a file (``log_path``, appended to; else an unnamed temporary
file), never to a pipe: nothing reads a pipe once the daemon is up, and a daemon that
filled it would block on its next write. A daemon that exits during start-up is reported
with what it wrote there.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from wgcable.netlink.netns import netns_path
from wgcable.wgctrl.uapi import DEFAULT_SOCKET_DIRS

WIREGUARD_GO = "wireguard-go"
# Run inside a new mount namespace (as `ip netns exec` gives): a private, empty
# /run/wireguard for the daemon's socket. The directory may not exist on a new machine.
PRIVATE_SOCKET_DIR = "mkdir -p /run/wireguard && mount -t tmpfs wgcable /run/wireguard"
LOG_ROTATE_BYTES = 1 << 20  # a log bigger than this at a start is moved to <log>.1
STARTUP_ERROR_BYTES = 4096  # how much of a failed start's output goes into the error
# wireguard-go's own log level. "verbose" logs every handshake and keepalive (never a
# key): the lab turns it on, so that a tunnel that misbehaves in a test shows why.
LOG_LEVEL_ENV = "WGCABLE_WIREGUARD_GO_LOG_LEVEL"
LOG_LEVELS = ("silent", "error", "verbose")


class UserspaceError(RuntimeError):
    pass


def log_level() -> str:
    """The daemon's log level from the environment: "error" unless set."""
    level = os.environ.get(LOG_LEVEL_ENV, "") or "error"
    if level not in LOG_LEVELS:
        raise UserspaceError(f"{LOG_LEVEL_ENV}={level!r}: not one of {', '.join(LOG_LEVELS)}")
    return level


def process_running(pid: int, *names: str) -> bool:
    """Whether ``pid`` is alive, not a zombie, and (if ``names`` are given) runs one of
    them: a PID read from a file may have been recycled by another program."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm, _, rest = stat.partition("(")[2].rpartition(")")
    return rest.split()[0] != "Z" and (not names or comm in names)


def _listening(path: Path) -> bool:
    """Whether a daemon accepts connections on ``path``: a daemon killed with SIGKILL
    leaves its socket file behind, and a new one takes a moment to replace it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _same_netns(pid: int, netns: str | None) -> bool:
    try:
        theirs = os.stat(f"/proc/{pid}/ns/net").st_ino
        ours = os.stat(netns_path(netns) if netns else "/proc/self/ns/net").st_ino
    except OSError:
        return False
    return theirs == ours


def _output_since(out: IO[bytes], start: int) -> str:
    """What the daemon wrote to ``out`` from ``start`` on; its end, if that is long."""
    out.flush()
    end = out.seek(0, os.SEEK_END)
    with open(f"/proc/self/fd/{out.fileno()}", "rb") as f:  # ours is write-only
        f.seek(max(start, end - STARTUP_ERROR_BYTES))
        text = f.read().decode(errors="replace").strip()
    return text if end - start <= STARTUP_ERROR_BYTES else "..." + text


class WireGuardGoProcess:
    """One wireguard-go daemon for one interface."""

    def __init__(
        self, ifname: str, netns: str | None = None, binary: str = WIREGUARD_GO,
        log_path: str | Path | None = None, pidfile: str | Path | None = None,
    ) -> None:
        self.ifname = ifname
        self.netns = netns
        self.binary = binary
        self.log_path = Path(log_path) if log_path is not None else None
        self.pidfile = Path(pidfile) if pidfile is not None else None
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        # Guards _closed and _starting: a start and close() on two threads (see above).
        self._lock = threading.Lock()
        self._closed = False
        self._starting: subprocess.Popen[bytes] | None = None  # spawned, start() not done

    def _open_log(self) -> IO[bytes]:
        """Where the daemon's stdout and stderr go (see the module's docstring)."""
        if self.log_path is None:
            return tempfile.TemporaryFile(prefix=f"wireguard-go-{self.ifname}-")
        self.log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.log_path, flags, 0o600)
        return os.fdopen(fd, "ab")

    @property
    def socket_dirs(self) -> list[str]:
        # Through the daemon's own root: this finds its socket whatever mount namespace it
        # or we are in (a restarted agent may not share the daemon's private /run/wireguard).
        if self.pid:
            return [f"/proc/{self.pid}/root/run/wireguard"]
        return list(DEFAULT_SOCKET_DIRS)

    def socket_path(self) -> Path | None:
        for d in self.socket_dirs:
            p = Path(d) / f"{self.ifname}.sock"
            if p.exists():
                return p
        return None

    def start(self, timeout: float = 10) -> None:
        env = {**os.environ, "WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": log_level()}
        if self.netns:
            script = f'{PRIVATE_SOCKET_DIR} && exec "$0" -f "$1"'
            cmd = ["ip", "netns", "exec", self.netns, "sh", "-c", script, self.binary,
                   self.ifname]
        else:
            cmd = [self.binary, "-f", self.ifname]
        with self._open_log() as out:
            start = out.seek(0, os.SEEK_END)
            with self._lock:
                if self._closed:
                    raise UserspaceError(f"{self.binary} for {self.ifname}: closed, not started")
                try:
                    proc = subprocess.Popen(
                        cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                        start_new_session=True,
                    )
                except FileNotFoundError:
                    raise UserspaceError(
                        f"{cmd[0]} not found: this kernel has no WireGuard, so the device "
                        "needs wireguard-go (apt-get install wireguard-go)") from None
                # The daemon has its own descriptor now; ours is closed on the way out.
                self._proc = self._starting = proc
                self.pid = proc.pid  # ip netns exec and sh exec in place: the daemon's PID
            try:
                self._write_pidfile(proc.pid)
                self._wait_started(proc, out, start, timeout)
            except BaseException:
                self._abandon(proc)
                raise

    def _wait_started(self, proc: subprocess.Popen[bytes], out: IO[bytes], start: int,
                      timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._closed:
                raise UserspaceError(f"{self.binary} for {self.ifname}: closed while starting")
            if proc.poll() is not None:
                raise UserspaceError(f"{self.binary} for {self.ifname} exited: "
                                     f"{_output_since(out, start)}")
            path = self.socket_path()
            if path is not None and _listening(path):
                with self._lock:
                    if not self._closed:  # else close() has stopped it, or is about to
                        self._starting = None
                        return
                continue
            time.sleep(0.01)
        raise UserspaceError(f"{self.binary} for {self.ifname}: no socket after {timeout}s")

    def _abandon(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop a daemon whose start did not complete, by its PID, and forget it."""
        with self._lock:
            if self._starting is proc:
                self._starting = None
            if self.pid == proc.pid:
                self.pid = None
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self._remove_pidfile(proc.pid)

    def close(self) -> None:
        """Start nothing from now on, and stop a daemon still starting (by its PID) before
        returning. A daemon that finished starting keeps running: closing leaves tunnels."""
        with self._lock:
            self._closed = True
            proc, self._starting = self._starting, None
        if proc is not None:
            self._abandon(proc)

    def _write_pidfile(self, pid: int) -> None:
        if self.pidfile is None:
            return
        # O_NOFOLLOW: a link planted in the state directory must not make us write elsewhere.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.pidfile, flags, 0o600)
        try:
            os.write(fd, f"{pid}\n".encode())
        finally:
            os.close(fd)

    def _remove_pidfile(self, pid: int) -> None:
        """Remove the PID file if it still names ``pid`` (not a daemon started since)."""
        if self.pidfile is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if int(self.pidfile.read_text()) == pid:
                self.pidfile.unlink()

    def adopt(self, pid: int) -> bool:
        """Take over a daemon started by an earlier instance, if ``pid`` is still it."""
        if not self._running(pid) or not _same_netns(pid, self.netns):
            return False
        self.pid, self._proc = pid, None
        if self.socket_path() is None:
            self.pid = None
            return False
        return True

    def _running(self, pid: int) -> bool:
        return process_running(pid, Path(self.binary).name[:15])

    def alive(self) -> bool:
        if self.pid is None:
            return False
        if self._proc is not None:
            return self._proc.poll() is None
        return self._running(self.pid)

    def wait(self, timeout: float, wake_fd: int | None = None) -> bool:
        """Block until the daemon exits, ``timeout`` passes or ``wake_fd`` is readable;
        True if it is not running.

        A pidfd wakes us the moment it exits, so a supervisor restarts it at once instead
        of at its next poll; ``wake_fd`` lets a stopping agent end the wait at once."""
        pid = self.pid
        if pid is None:
            return True
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return True
        except OSError:  # no pidfd (kernel older than 5.3): poll
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            return not self.alive()
        try:
            # A recycled PID: the pidfd is someone else's; alive() checks the name.
            if not self.alive():
                return True
            fds = [fd] if wake_fd is None else [fd, wake_fd]
            readable, _, _ = select.select(fds, [], [], timeout)
        finally:
            os.close(fd)
        return fd in readable or not self.alive()

    def stop(self, timeout: float = 5) -> None:
        """SIGTERM, then SIGKILL, by PID. wireguard-go removes its device on the way out."""
        pid, proc = self.pid, self._proc
        self.pid = None
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._running(pid):
                return
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
