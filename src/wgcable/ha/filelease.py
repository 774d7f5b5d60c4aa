"""A lease in a file next to the directory store, for the agents of one machine (the lab).

``<root>/leases/<name>.json`` holds a coordination.k8s.io/v1 Lease object; ``<name>.lock``
beside it is flock'ed around every read-modify-write, so that of two candidates writing at
once, one sees the other's record and gets a conflict. The JSON is replaced by
write-temp-rename, so a reader without the lock sees one whole record or the other. The
version is a counter in ``metadata.resourceVersion``, started from the wall clock in
microseconds whenever the file is new, so that it is never reused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from wgcable.ha.lease import (
    API_VERSION,
    LeaseConflictError,
    LeaseRecord,
    LeaseUnavailableError,
    record_from_spec,
)
from wgcable.safetext import plain
from wgcable.store.directory import atomic_write, check_name

log = logging.getLogger(__name__)

MAX_LEASE_FILE = 64 * 1024
LOCK_WAIT = 1.0  # a holder of the lock that hangs (stopped, stuck disk) is a failed try


class FileLease:
    def __init__(self, root: str | os.PathLike[str], name: str) -> None:
        self.name = check_name(name, "lease name")
        self.dir = Path(root) / "leases"
        self.path = self.dir / f"{self.name}.json"
        self.lock_path = self.dir / f"{self.name}.lock"
        self._bad = ""  # the last complaint about the file, logged once

    def describe(self) -> str:
        return f"lease file {self.path}"

    def read(self) -> LeaseRecord | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if not self.dir.is_dir() and not self.dir.parent.is_dir():
                raise LeaseUnavailableError(f"{self.describe()}: the store directory "
                                            f"{self.dir.parent} is missing") from None
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return self._corrupt("a symlink", "symlink")
            raise LeaseUnavailableError(f"{self.describe()}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            version = f"{st.st_ino}:{st.st_mtime_ns}"
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                return self._corrupt("not a regular file with one link", version)
            data = os.read(fd, MAX_LEASE_FILE + 1)
        except OSError as exc:
            raise LeaseUnavailableError(f"{self.describe()}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        if len(data) > MAX_LEASE_FILE:
            return self._corrupt(f"over {MAX_LEASE_FILE} bytes", version)
        try:
            obj = json.loads(data)
            if not isinstance(obj, dict) or obj.get("kind") != "Lease":
                raise ValueError("not a Lease object")
            meta = obj.get("metadata")
            rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
            if not isinstance(rv, str) or not rv.isdigit() or len(rv) > 18:
                raise ValueError("metadata.resourceVersion is not a counter")
            record = record_from_spec(obj.get("spec"), rv)
        except (ValueError, RecursionError) as exc:
            return self._corrupt(plain(str(exc), 120), version)
        self._bad = ""
        return record

    def _corrupt(self, why: str, version: str) -> LeaseRecord:
        """A lease nobody can read is free: a candidate may replace it (under the lock,
        and only this very file). Never its content in the message."""
        if why != self._bad:
            log.warning("%s: %s; taken as free", self.describe(), why)
            self._bad = why
        return LeaseRecord(holder="", duration=0.0, acquire_time=0.0, renew_time=0.0,
                           transitions=0, version=f"unreadable:{version}")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.dir.mkdir(mode=0o755, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
        except OSError as exc:
            raise LeaseUnavailableError(f"{self.describe()}: cannot open its lock: "
                                        f"{exc.strerror}") from exc
        try:
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LeaseUnavailableError(f"{self.describe()}: its lock has been "
                                                    f"held for over {LOCK_WAIT:g} s") from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # releases the lock

    def write(self, record: LeaseRecord, replaces: LeaseRecord | None) -> LeaseRecord:
        with self._locked():
            now = self.read()
            expected = replaces.version if replaces is not None else None
            if (now.version if now is not None else None) != expected:
                raise LeaseConflictError(f"{self.describe()} changed meanwhile")
            if now is not None and now.version.isdigit():
                counter = int(now.version) + 1
            else:
                # A new file (first, removed, or replacing an unreadable one) starts at the
                # wall clock in microseconds, not at 1: a holder of an older incarnation's
                # version must conflict, not find its version matching again. Renewals,
                # seconds apart, never catch up with the microseconds.
                counter = time.time_ns() // 1000
            version = str(counter)
            obj = {"apiVersion": API_VERSION, "kind": "Lease",
                   "metadata": {"name": self.name, "resourceVersion": version},
                   "spec": record.spec()}
            try:
                atomic_write(self.dir, self.path.name,
                             (json.dumps(obj, indent=1) + "\n").encode(), 0o644)
            except OSError as exc:
                raise LeaseUnavailableError(f"{self.describe()}: {exc.strerror}") from exc
        return LeaseRecord(record.holder, record.duration, record.acquire_time,
                           record.renew_time, record.transitions, version)

    def remove(self) -> None:
        """Delete the lease (cleanup of a whole lab)."""
        for path in (self.path, self.lock_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def close(self) -> None:
        pass
