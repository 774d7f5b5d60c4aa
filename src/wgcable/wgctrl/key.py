"""WireGuard keys: 32 bytes, base64 in configs, hex on the UAPI wire. Never printed."""

from __future__ import annotations

import base64
import binascii
import os
import secrets

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


def write_key_file(path: str | os.PathLike[str], key: Key) -> None:
    """Write a key as base64 to a file created 0600, atomically (write, fsync, rename)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # umask or an older file must not widen it
        os.write(fd, (key.base64() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_key_file(path: str | os.PathLike[str], field: str | None = None) -> Key:
    """Read a base64 key file; refuse one that others can read."""
    path = os.fspath(path)
    st = os.stat(path)
    if st.st_mode & 0o077:
        raise InvalidKeyError(field or path, f"key file mode {st.st_mode & 0o777:o} is too open")
    with open(path) as f:
        return Key.from_base64(f.read(), field or path)
