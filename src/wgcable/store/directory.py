"""The embedded endpoint store: a shared directory of Submariner objects, one file each.

Layout::

    <root>/endpoints/<object name>.json   (.yaml/.yml are read too; we write JSON)
    <root>/gateways/<hostname>.json

Several agents on one machine share the directory; each writes only its own files, always by
write-temp-fsync-rename, so a reader sees either the old file or the new one. Temp files start
with "." and readers skip every dotfile.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

from wgcable.cable.types import API_VERSION, Endpoint, EndpointFormatError, GatewayStatus
from wgcable.safetext import plain
from wgcable.store import inotify
from wgcable.store.base import Snapshot, StoreUnavailableError, notify
from wgcable.wgctrl import IPAddress

log = logging.getLogger(__name__)

MAX_FILE_SIZE = 1024 * 1024  # a real endpoint is ~1 KiB; anything this big is not one
MAX_NAME_LENGTH = 253  # a Kubernetes object name (DNS subdomain)
_RESCANS = 4  # listings of one snapshot, at most, while files vanish under it
_NAME_MAX = 255  # bytes in one file name on Linux file systems
_MAX_MESSAGE = 300  # cap on an error message (a bad value's repr may be huge)
# First wins when one name has several files: JSON is what we write.
_SUFFIXES = (".json", ".yaml", ".yml")
# A change is reported at once; what follows within _COALESCE of the last event is the
# rest of a burst, reported once more when it goes quiet (or every _BURST_MAX at most).
_COALESCE = 0.02
_BURST_MAX = 0.5

_DIR_MODE = 0o755
_FILE_MODE = 0o644  # endpoints and statuses hold no secrets (public keys only)

# The endpoints directory: anything that can change what a snapshot returns.
_ENDPOINTS_MASK = (
    inotify.IN_CREATE
    | inotify.IN_MODIFY
    | inotify.IN_ATTRIB
    | inotify.IN_CLOSE_WRITE
    | inotify.IN_MOVED_FROM
    | inotify.IN_MOVED_TO
    | inotify.IN_DELETE
    | inotify.IN_DELETE_SELF
    | inotify.IN_MOVE_SELF
    | inotify.IN_ONLYDIR
)
# The root: only to notice the endpoints directory going away or (re)appearing.
_ROOT_MASK = (
    inotify.IN_CREATE
    | inotify.IN_MOVED_FROM
    | inotify.IN_MOVED_TO
    | inotify.IN_DELETE
    | inotify.IN_DELETE_SELF
    | inotify.IN_MOVE_SELF
    | inotify.IN_ONLYDIR
)
_GONE = inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF | inotify.IN_UNMOUNT

# libyaml's loader when PyYAML has it: the pure Python scanner spends about a second on a
# few kilobytes of nested brackets before giving up; libyaml refuses them at once.
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

T = TypeVar("T")
_Key = tuple[int, int, int]  # (inode, size, mtime_ns): a file is re-read when this changes


def check_name(name: str, what: str = "name") -> str:
    """Refuse names that would escape the directory, hide as a dotfile or not fit a file name."""
    problem = None
    if not name:
        problem = "is empty"
    elif "/" in name or "\0" in name:
        problem = "contains '/' or NUL"
    elif name.startswith("."):
        problem = "starts with '.'"
    elif len(name) > MAX_NAME_LENGTH:
        problem = f"is longer than {MAX_NAME_LENGTH} characters"
    elif len(os.fsencode(name + ".json")) > _NAME_MAX:
        problem = f"with '.json' is longer than a file name may be ({_NAME_MAX} bytes)"
    if problem:
        raise ValueError(f"{what} {name!r} {problem}")
    return name


def _entry_suffix(name: str) -> str | None:
    """The suffix of a store file name, or None for dotfiles, temp files and anything else."""
    if name.startswith("."):
        return None
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def _plain_name(name: str) -> bool:
    """Whether ``plain(name, _NAME_MAX)`` would leave ``name`` as it is (printable ASCII
    without a backslash, not too long), without escaping it: a snapshot asks for every file."""
    return (len(name) <= _NAME_MAX and name.isascii() and name.isprintable()
            and "\\" not in name)


def is_entry_name(name: str) -> bool:
    return _entry_suffix(name) is not None


@dataclass(frozen=True, slots=True)
class _Bad:
    """A file that could not be read, and why (already prefixed with the path)."""

    message: str


class _Unreadable(Exception):
    """Why a file's bytes are not an object (internal)."""


_SYMLINK = "is a symbolic link; store files must be regular files"
_ODD_NAME = "the file name has control or non-ASCII characters; refused"
# Our writes (temp file, rename) always leave one link. A second name is someone linking in
# a file from elsewhere, such as a key file: its content is not ours to read.
_HARDLINK = "has more than one hard link; store files must not be links to other files"


def _where(path: str | os.PathLike[str]) -> str:
    """A store path for a message: a file name is anyone's text (newlines included)."""
    return plain(os.fspath(path), 200)


def _short(text: str, limit: int = _MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad(message: str) -> _Bad:
    """An entry without readable content (not a file, no permission), logged as found."""
    log.warning("%s", message)
    return _Bad(message)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """The problem and where it is, never PyYAML's snippet of the offending line (the file
    may be someone's secret: the message is published in the gateway status)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        where = exc.problem_mark or exc.context_mark
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        return plain(exc.problem or exc.context or "syntax error", 80) + at
    return type(exc).__name__


def _decode(path: Path, data: bytes, parse: Callable[[object], T]) -> T:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Unreadable(
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}"
        ) from None
    try:
        if path.suffix == ".json":
            doc: Any = json.loads(text)
        else:
            doc = yaml.load(text, _YAML_LOADER)  # noqa: S506 - a SafeLoader, C or Python
    except json.JSONDecodeError as exc:
        raise _Unreadable(f"invalid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        raise _Unreadable("invalid YAML: " + _yaml_reason(exc)) from None
    except RecursionError:
        raise _Unreadable("nested too deeply") from None
    try:
        return parse(doc)
    except EndpointFormatError as exc:
        raise _Unreadable(str(exc)) from None
    except RecursionError:
        raise _Unreadable("nested too deeply") from None


def _read_capped(fd: int, limit: int) -> bytes:
    """At most ``limit`` bytes: a huge file is never read whole."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, min(limit - size, 256 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _load_file(path: Path, parse: Callable[[object], T]) -> tuple[_Key | None, T | _Bad] | None:
    """Read and parse one file. None if it vanished; a key of None means "do not cache"
    (an I/O error such as EACCES may clear up without the file changing)."""
    try:
        # O_NOFOLLOW: a symlink would make us read (and report) whatever it points at,
        # such as our private key. O_NONBLOCK: a FIFO must not hang us.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a symlink since the listing
            return None, _bad(f"{_where(path)}: {_SYMLINK}")
        return None, _bad(f"{_where(path)}: cannot open: {exc.strerror}")
    try:
        st = os.fstat(fd)
        # The key comes from the fd we read, so a file replaced meanwhile is re-read next time.
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if not stat.S_ISREG(st.st_mode):
            return key, _bad(f"{_where(path)}: not a regular file")
        if st.st_nlink > 1:
            return key, _bad(f"{_where(path)}: {_HARDLINK}")
        data = _read_capped(fd, MAX_FILE_SIZE + 1)
    except OSError as exc:
        return None, _bad(f"{_where(path)}: cannot read: {exc.strerror}")
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_SIZE:
        reason = f"file is {st.st_size} bytes, over the {MAX_FILE_SIZE}-byte limit"
    else:
        try:
            return key, _decode(path, data, parse)
        except _Unreadable as exc:
            reason = str(exc)
        except Exception as exc:  # never let one odd file break a snapshot
            reason = f"unexpected {type(exc).__name__}: {plain(str(exc), 80)}"
    # Never the content: the message goes to the log, the gateway status and status.json.
    message = _short(f"{_where(path)}: {reason}")
    log.warning("%s (%d bytes)", message, len(data))
    return key, _Bad(message)


class _ParsedDir(Generic[T]):
    """The parsed files of one directory, each re-read only when its (inode, size, mtime_ns)
    changed: a snapshot of many files where one changed costs stat calls and one parse."""

    def __init__(self, directory: Path, parse: Callable[[object], T], missing_ok: bool) -> None:
        self.directory = directory
        self._parse = parse
        self._missing_ok = missing_ok
        self._cache: dict[str, tuple[_Key | None, T | _Bad]] = {}
        self._lock = threading.Lock()

    def scan(self) -> dict[str, T | _Bad]:
        """Every entry by file stem. A missing directory is empty only if ``missing_ok``;
        listing errors raise (an unreadable store must not look like one whose endpoints
        all went away).

        A file listed but gone when read means a writer is at work: the listing is taken
        again (a few times at most). Without it, a gateway that publishes its Endpoint and
        then removes its predecessor's could be read as neither, and a remote cluster would
        drop its tunnel for a moment."""
        for _ in range(_RESCANS):
            out, vanished = self._scan()
            if not vanished:
                break
        return out

    def _scan(self) -> tuple[dict[str, T | _Bad], bool]:
        out: dict[str, T | _Bad] = {}
        vanished = False
        ranks: dict[str, int] = {}
        with self._lock:
            fresh: dict[str, tuple[_Key | None, T | _Bad]] = {}
            try:
                entries = os.scandir(self.directory)
            except FileNotFoundError:
                self._cache = {}
                if self._missing_ok:
                    return out, False
                raise StoreUnavailableError(f"{self.directory} is missing") from None
            with entries:
                for entry in entries:
                    suffix = _entry_suffix(entry.name)
                    if suffix is None:
                        continue
                    if not _plain_name(entry.name):
                        # The stem names the entry in logs and in the published status: a
                        # name with newlines would forge lines there. No object has one.
                        out[plain(entry.name[: -len(suffix)], 64)] = _Bad(
                            f"{_where(entry.path)}: {_ODD_NAME}")
                        continue
                    result = self._entry(entry)
                    if result is None:
                        vanished = True
                        continue
                    fresh[entry.name] = result
                    # Several files for one stem: the first suffix in _SUFFIXES wins.
                    stem, rank = entry.name[: -len(suffix)], _SUFFIXES.index(suffix)
                    if rank < ranks.get(stem, len(_SUFFIXES)):
                        ranks[stem] = rank
                        out[stem] = result[1]
            self._cache = fresh
        return out, vanished

    def _entry(self, entry: os.DirEntry[str]) -> tuple[_Key | None, T | _Bad] | None:
        try:
            # Not following symlinks: a link is refused, never read (see _load_file).
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None  # removed since listed
        except OSError as exc:
            return None, _bad(f"{_where(entry.path)}: cannot stat: {exc.strerror}")
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._cache.get(entry.name)
        if cached is not None and cached[0] == key:
            return cached
        if stat.S_ISLNK(st.st_mode):
            return key, _bad(f"{_where(entry.path)}: {_SYMLINK}")
        if not stat.S_ISREG(st.st_mode):
            return key, _bad(f"{_where(entry.path)}: not a regular file")
        if st.st_nlink > 1:
            return key, _bad(f"{_where(entry.path)}: {_HARDLINK}")
        # Looked up at call time so that tests can count parses.
        return _load_file(Path(entry.path), self._parse)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable. Best effort: some file systems refuse fsync on directories."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(directory: Path, name: str, data: bytes, mode: int = _FILE_MODE) -> None:
    """Replace ``directory/name`` with ``data`` so that readers see all of it or none of it."""
    # The temp name starts with "." so that readers and the watch skip it.
    fd, tmp = tempfile.mkstemp(prefix=".wgcable-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)  # mkstemp made it 0600
            os.fsync(f.fileno())
        os.replace(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _ensure_dir(path: Path) -> None:
    """Create ``path`` (and parents) with mode 0755 regardless of the umask."""
    if path.is_dir():
        return
    _ensure_dir(path.parent)
    try:
        os.mkdir(path, _DIR_MODE)
    except FileExistsError:
        return  # another agent created it just now
    os.chmod(path, _DIR_MODE)


def _to_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


class DirectoryStore:
    """An ``EndpointStore`` on a local directory, shared by the agents of one machine.

    ``use_inotify=False`` forces polling (e.g. for a network file system, where inotify does
    not see other machines' writes); polling is also the fallback when inotify is unavailable.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        poll_interval: float = 0.2,
        use_inotify: bool = True,
        create_dirs: bool = True,
    ) -> None:
        """``create_dirs``: make ``endpoints/`` and ``gateways/`` on first use, as an agent
        must; readers (graph, diagnose, cleanup) pass False and so never add directories to
        whatever path they were pointed at."""
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, not {poll_interval!r}")
        self.root = Path(root)
        self.endpoints_dir = self.root / "endpoints"
        self.gateways_dir = self.root / "gateways"
        self.poll_interval = poll_interval
        self.use_inotify = use_inotify
        # The endpoints directory is created on first use (and holds our own endpoint): once
        # it is missing, the store is gone (unmounted, moved), not empty, and the engine keeps
        # the tunnels. An empty store is an empty directory.
        self._endpoints = _ParsedDir(self.endpoints_dir, Endpoint.from_json, missing_ok=False)
        self._gateways = _ParsedDir(self.gateways_dir, GatewayStatus.from_json, missing_ok=True)
        self._closed = threading.Event()
        self._created = not create_dirs

    # --- writing our own files ---

    def publish(self, endpoint: Endpoint) -> None:
        name = check_name(endpoint.object_name(), "endpoint object name")
        _ensure_dir(self.endpoints_dir)
        atomic_write(self.endpoints_dir, name + ".json", _to_bytes(endpoint.to_k8s_object()))

    def withdraw(self, endpoint: Endpoint) -> None:
        name = check_name(endpoint.object_name(), "endpoint object name")
        # Every form of our entry: a hand-written YAML copy would otherwise keep us listed.
        for suffix in _SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.endpoints_dir / (name + suffix))

    def write_status(self, hostname: str, status: GatewayStatus) -> None:
        check_name(hostname, "hostname")
        obj = {
            "apiVersion": API_VERSION,
            "kind": "Gateway",
            "metadata": {"name": hostname},
            "status": status.to_json(),
        }
        _ensure_dir(self.gateways_dir)
        atomic_write(self.gateways_dir, hostname + ".json", _to_bytes(obj))

    def remove_status(self, hostname: str) -> None:
        """Remove this gateway's status (on cleanup); missing is fine."""
        check_name(hostname, "hostname")
        for suffix in _SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.gateways_dir / (hostname + suffix))

    # --- reading everyone's ---

    def _first_use(self) -> None:
        # Only once: re-creating a directory someone is deleting (rm -rf) would fight them.
        if self._created:
            return
        try:
            _ensure_dir(self.endpoints_dir)
            _ensure_dir(self.gateways_dir)
        except OSError as exc:
            log.warning("cannot create the store directories under %s: %s", self.root, exc)
        self._created = True

    def snapshot(self) -> Snapshot:
        self._first_use()
        snap = Snapshot()
        for stem, result in self._endpoints.scan().items():
            if isinstance(result, _Bad):
                snap.errors[stem] = result.message
            else:
                snap.endpoints[stem] = result
        return snap

    def read_statuses(self) -> dict[str, GatewayStatus]:
        self._first_use()
        # Bad files were logged when parsed (once per change); here they are just skipped.
        return {
            stem: result
            for stem, result in self._gateways.scan().items()
            if not isinstance(result, _Bad)
        }

    # --- watching ---

    def watch(self, changed: Callable[[], None], stop: threading.Event) -> None:
        """Call ``changed()`` soon after anything in ``endpoints/`` changes, until ``stop``.

        It is also called once as soon as the watch is in place, so that a change made between
        the caller's first snapshot and the start of the watch is not missed.
        """
        self._first_use()
        if self.use_inotify:
            try:
                ino = inotify.Inotify()
            except OSError as exc:
                log.info(
                    "inotify unavailable (%s); polling %s every %ss",
                    exc,
                    self.endpoints_dir,
                    self.poll_interval,
                )
            else:
                with ino:
                    self._watch_inotify(ino, changed, stop)
                return
        self._watch_polling(changed, stop)

    def _stopped(self, stop: threading.Event) -> bool:
        return stop.is_set() or self._closed.is_set()

    def _listing(self) -> dict[str, _Key]:
        out: dict[str, _Key] = {}
        try:
            entries = os.scandir(self.endpoints_dir)
        except OSError:
            return out  # missing (or unreadable): compares as empty
        with entries:
            for entry in entries:
                if not is_entry_name(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                out[entry.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return out

    def _watch_polling(self, changed: Callable[[], None], stop: threading.Event) -> None:
        before = self._listing()
        notify(changed)
        while not stop.wait(self.poll_interval) and not self._closed.is_set():
            now = self._listing()
            if now != before:
                before = now
                notify(changed)

    def _watch_inotify(
        self, ino: inotify.Inotify, changed: Callable[[], None], stop: threading.Event
    ) -> None:
        watcher = _InotifyWatcher(ino, self.root, self.endpoints_dir)
        pending = True  # the initial call
        while not self._stopped(stop):
            if watcher.rewatch():
                pending = True  # files may have appeared before the watch was in place
            if pending:
                if watcher.writing:
                    # A file is being written in place: read it once it is closed (0.5 s
                    # at most), not half-written (it would read as broken, its tunnel drop).
                    _settle(ino, watcher, until_closed=True)
                # At once: a lone write, the common case, costs no wait. The rest of a
                # burst (an rsync, a thousand files) is gathered, then reported once more.
                notify(changed)
                pending = _settle(ino, watcher)
                continue
            # The timeout bounds how late a stop is seen and how often a missing
            # directory is looked for again.
            pending = watcher.handle(ino.read(self.poll_interval))

    def server_addresses(self) -> list[IPAddress]:
        return []  # a local directory: no server

    def close(self) -> None:
        """Make running watches return (within ``poll_interval``, or once a burst's events
        are gathered: ``_BURST_MAX`` at most)."""
        self._closed.set()


def _settle(ino: inotify.Inotify, watcher: _InotifyWatcher, until_closed: bool = False) -> bool:
    """Take events until none came for ``_COALESCE`` and no file is being written (with
    ``until_closed``: only until then), for ``_BURST_MAX`` at most; True if the endpoints
    may have changed meanwhile."""
    start = last = time.monotonic()
    relevant = False
    while not (until_closed and not watcher.writing):
        end = start + _BURST_MAX
        if not watcher.writing:
            end = min(end, last + _COALESCE)
        if (left := end - time.monotonic()) <= 0:
            # So long: a writer that never closes (a hard link, a chmod), or a stuck one.
            watcher.writing.clear()
            break
        if watcher.handle(ino.read(left)):
            relevant = True
            last = time.monotonic()
    return relevant


class _InotifyWatcher:
    """Keeps watches on the root (for the endpoints directory coming and going) and on the
    endpoints directory, re-adding them when the directories are deleted and re-created."""

    def __init__(self, ino: inotify.Inotify, root: Path, endpoints: Path) -> None:
        self._ino = ino
        self._root = root
        self._endpoints = endpoints
        self._root_wd: int | None = None
        self._ep_wd: int | None = None
        # Entries created or modified and not yet closed: written in place, maybe half-way.
        self.writing: set[str] = set()

    def _add(self, path: Path, mask: int) -> int | None:
        try:
            return self._ino.add_watch(path, mask)
        except OSError as exc:
            # Missing or not a directory: looked for again on the next wakeup.
            log.debug("cannot watch %s yet: %s", path, exc)
            return None

    def _drop_endpoints(self) -> None:
        if self._ep_wd is not None:
            # The watch follows the inode: a renamed-away directory must be unwatched.
            self._ino.rm_watch(self._ep_wd)
            self._ep_wd = None

    def rewatch(self) -> bool:
        """Add missing watches; True if the endpoints watch was (re)added."""
        if self._root_wd is None:
            self._root_wd = self._add(self._root, _ROOT_MASK)
        if self._ep_wd is None:
            self._ep_wd = self._add(self._endpoints, _ENDPOINTS_MASK)
            return self._ep_wd is not None
        return False

    def handle(self, events: list[inotify.Event]) -> bool:
        """Update the watches from ``events``; True if the endpoints may have changed."""
        relevant = False
        for ev in events:
            if ev.mask & inotify.IN_Q_OVERFLOW:
                relevant = True  # events were lost: assume anything changed
            elif ev.wd == self._ep_wd:
                if ev.mask & inotify.IN_IGNORED:
                    self._ep_wd = None  # the kernel dropped it (directory deleted)
                    relevant = True
                elif ev.mask & _GONE:
                    self._drop_endpoints()
                    relevant = True
                elif is_entry_name(ev.name):
                    relevant = True
                    if ev.mask & (inotify.IN_CREATE | inotify.IN_MODIFY):
                        self.writing.add(ev.name)
                    elif ev.mask & (inotify.IN_CLOSE_WRITE | inotify.IN_DELETE
                                    | inotify.IN_MOVED_FROM | inotify.IN_MOVED_TO):
                        self.writing.discard(ev.name)
            elif ev.wd == self._root_wd:
                if ev.mask & inotify.IN_IGNORED:
                    self._root_wd = None
                elif ev.mask & _GONE:
                    self._ino.rm_watch(self._root_wd)
                    self._root_wd = None
                    self._drop_endpoints()
                    relevant = True
                elif ev.name == self._endpoints.name:
                    # Created, deleted or renamed: whatever is there now gets watched anew.
                    self._drop_endpoints()
                    relevant = True
        return relevant
