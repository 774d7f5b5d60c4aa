"""WireGuard keys: 32 bytes, base64 in configs, hex on the UAPI wire. Never printed."""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import os
import secrets
import stat

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from wgcable.wgctrl.errors import InvalidKeyError

KEY_LEN = 32


def clamp(raw: bytes) -> bytes:
    """Curve25519 clamping (RFC 7748): what the device does to every private key it stores."""
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


class Key:
    """A 32-byte WireGuard key (private, public or preshared).

    Equality is exact byte equality, which is right for public and preshared keys. Private
    keys are compared with :meth:`same_private`, after clamping, because devices store and
    report the clamped form of whatever they were given.
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes, field: str = "key") -> None:
        if not isinstance(raw, bytes | bytearray) or len(raw) != KEY_LEN:
            n = len(raw) if isinstance(raw, bytes | bytearray) else type(raw).__name__
            raise InvalidKeyError(field, f"must be {KEY_LEN} bytes, got {n}")
        self._raw = bytes(raw)

    @classmethod
    def generate(cls) -> Key:
        """A new private key, clamped as `wg genkey` prints it."""
        return cls(clamp(secrets.token_bytes(KEY_LEN)))

    @classmethod
    def generate_preshared(cls) -> Key:
        return cls(secrets.token_bytes(KEY_LEN))

    @classmethod
    def zero(cls) -> Key:
        return cls(bytes(KEY_LEN))

    @classmethod
    def from_base64(cls, text: str, field: str = "key") -> Key:
        text = text.strip()
        if len(text) != 44 or not text.endswith("="):
            raise InvalidKeyError(field, f"base64 key must be 44 characters, got {len(text)}")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):  # ValueError: non-ASCII text
            raise InvalidKeyError(field, "not valid base64") from None
        return cls(raw, field)

    @classmethod
    def from_hex(cls, text: str, field: str = "key") -> Key:
        text = text.strip()
        if len(text) != 2 * KEY_LEN:
            raise InvalidKeyError(field, f"hex key must be 64 characters, got {len(text)}")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise InvalidKeyError(field, "not valid hex") from None
        return cls(raw, field)

    def public_key(self) -> Key:
        """The public key of this private key."""
        pub = X25519PrivateKey.from_private_bytes(self._raw).public_key()
        return Key(pub.public_bytes(Encoding.Raw, PublicFormat.Raw))

    def clamped(self) -> Key:
        return Key(clamp(self._raw))

    def same_private(self, other: Key) -> bool:
        """Whether two private keys are the same key once clamped."""
        return clamp(self._raw) == clamp(other._raw)

    def is_zero(self) -> bool:
        return self._raw == bytes(KEY_LEN)

    @property
    def raw(self) -> bytes:
        return self._raw

    def base64(self) -> str:
        return base64.b64encode(self._raw).decode()

    def hex(self) -> str:
        return self._raw.hex()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Key):
            return NotImplemented
        return secrets.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        # A repr ends up in logs and tracebacks: never show key material, whatever the kind.
        return "Key(<redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("keys are not picklable, so they never reach disk by accident")

    # copy and deepcopy would otherwise go through __reduce__ and fail; a Key is immutable,
    # so a copy is the key itself (this is what lets Devices and Configs be deep-copied).
    def __copy__(self) -> Key:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Key:
        return self


_KEY_FILE_MAX = 256  # a base64 key and a newline is 45 bytes; read no more than this


def _fsync_dir(directory: str) -> None:
    """Make a rename durable (best effort: some file systems refuse fsync on a directory)."""
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


def write_key_file(path: str | os.PathLike[str], key: Key) -> None:
    """Write a key as base64 to a file created 0600, atomically: a new temp file (O_EXCL,
    O_NOFOLLOW: never someone's file or link planted under that name), fsync, rename, and
    fsync of the directory so that the rename survives a crash."""
    path = os.fspath(path)
    directory, name = os.path.split(path)
    directory = directory or "."
    tmp = os.path.join(directory, f".{name}.tmp.{os.getpid()}.{secrets.token_hex(4)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask must not narrow it, nothing may widen it
            data = (key.base64() + "\n").encode()
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)  # replaces a symlink at ``path`` itself, never its target
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def replace_key_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move a key file written by ``write_key_file`` over another, in one atomic rename made
    durable (the directory fsynced): a crash leaves one of the two, never a mix."""
    os.replace(src, dst)  # replaces a symlink at ``dst`` itself, never its target
    _fsync_dir(os.path.dirname(os.fspath(dst)) or ".")


def read_key_file(
    path: str | os.PathLike[str], field: str | None = None, *, follow_symlinks: bool = False
) -> Key:
    """Read a base64 key file. Refuse a symlink (unless ``follow_symlinks``: Kubernetes
    mounts Secrets through links), anything but a regular file, a file owned by another
    user, and one that group or others may read or write: checked on the file we read.
    No message ever contains the file's content."""
    path = os.fspath(path)
    what = field or path
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise InvalidKeyError(what, f"{path} is a symbolic link; refusing to follow it") \
                from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidKeyError(what, f"{path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise InvalidKeyError(
                what, f"{path} is owned by uid {st.st_uid}, not by this process (uid "
                f"{os.geteuid()}): someone else could have chosen or read it")
        if st.st_mode & 0o077:
            raise InvalidKeyError(
                what, f"key file mode {st.st_mode & 0o777:o} is too open (want 600)")
        data = os.read(fd, _KEY_FILE_MAX + 1)
    finally:
        os.close(fd)
    if len(data) > _KEY_FILE_MAX:
        raise InvalidKeyError(what, f"{path} is longer than a key file ({_KEY_FILE_MAX} bytes)")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidKeyError(what, f"{path} is not base64 text") from None
    return Key.from_base64(text, what)


def tighten_private_dir(directory: str | os.PathLike[str]) -> bool:
    """Create ``directory`` 0700, or take group and other access from one that has it (the
    key file is 0600, but a writable directory lets others replace it, and a readable one
    shows what is there). True when an existing directory had to be tightened."""
    directory = os.fspath(directory)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # The directory itself may be reached through a link (an operator's choice, like the
    # path): owner and mode are checked on what the fd is, not on the name.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise InvalidKeyError(
                directory, f"state directory is owned by uid {st.st_uid}, not by this "
                f"process (uid {os.geteuid()})")
        if not st.st_mode & 0o077:
            return False
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)
    finally:
        os.close(fd)
    return True
