"""Keys: encodings, redaction, RFC 7748 derivation, clamping, and key files on disk."""

from __future__ import annotations

import base64
import copy
import os
import pickle
import stat
import string
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgcable.wgctrl.errors import InvalidKeyError
from wgcable.wgctrl.key import Key, clamp, read_key_file, write_key_file

raw_keys = st.binary(min_size=32, max_size=32)

# RFC 7748 section 6.1 (Curve25519 Diffie-Hellman): Alice's key pair.
ALICE_PRIVATE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
ALICE_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
# Bob's, same section.
BOB_PRIVATE = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
BOB_PUBLIC = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"


def leaked(text: str, message: str, n: int = 6) -> bool:
    """Whether any n consecutive characters of ``text`` appear in ``message``."""
    text = text.strip()
    if len(text) < n:
        return text in message and bool(text)
    return any(text[i : i + n] in message for i in range(len(text) - n + 1))


# --- encodings ----------------------------------------------------------------------------


@given(raw_keys)
def test_base64_round_trip(raw: bytes) -> None:
    k = Key(raw)
    text = k.base64()
    assert text == base64.b64encode(raw).decode()
    assert Key.from_base64(text) == k
    assert Key.from_base64(f"  {text}\n") == k  # files and stdin carry whitespace
    assert Key.from_base64(text).raw == raw


@given(raw_keys)
def test_hex_round_trip(raw: bytes) -> None:
    k = Key(raw)
    assert k.hex() == raw.hex()
    assert Key.from_hex(k.hex()) == k
    assert Key.from_hex(k.hex().upper()) == k


@given(raw_keys, raw_keys)
def test_equality_and_hash_follow_bytes(a: bytes, b: bytes) -> None:
    assert (Key(a) == Key(b)) == (a == b)
    if a == b:
        assert hash(Key(a)) == hash(Key(b))
    assert Key(a) != a  # a key is not its bytes


@pytest.mark.parametrize("n", [0, 1, 16, 31, 33, 64])
def test_wrong_raw_length_is_refused(n: int) -> None:
    with pytest.raises(InvalidKeyError, match=f"got {n}"):
        Key(b"\x01" * n)


def test_non_bytes_is_refused() -> None:
    with pytest.raises(InvalidKeyError, match="got str"):
        Key("x" * 32)  # type: ignore[arg-type]


def _bad_base64(raw: bytes, how: int) -> str:
    text = base64.b64encode(raw).decode()
    return [
        text[:-2],  # too short
        text + "A",  # too long
        text[:10] + "!" + text[11:],  # a character outside the alphabet
        base64.b64encode(raw[:31]).decode().rstrip("=") + "A==",  # 44 chars decoding to 31+
        base64.b64encode(raw + b"\x00").decode()[:44],  # 44 chars, no padding
        text.replace("=", "#"),
    ][how]


@given(raw_keys, st.integers(0, 5))
def test_bad_base64_never_echoes_input(raw: bytes, how: int) -> None:
    bad = _bad_base64(raw, how)
    with pytest.raises(InvalidKeyError) as info:
        Key.from_base64(bad, "peer public key")
    msg = str(info.value)
    assert msg.startswith("peer public key: invalid key")
    assert info.value.field == "peer public key"
    assert not leaked(bad, msg), msg
    assert not leaked(base64.b64encode(raw).decode(), msg), msg


def _bad_hex(raw: bytes, how: int) -> str:
    text = raw.hex()
    return [
        text[:-1],
        text + "0",
        text[:20] + "zz" + text[22:],
        text[:63] + "g",
        " " * 3 + text[:30],
    ][how]


@given(raw_keys, st.integers(0, 4))
def test_bad_hex_never_echoes_input(raw: bytes, how: int) -> None:
    bad = _bad_hex(raw, how)
    with pytest.raises(InvalidKeyError) as info:
        Key.from_hex(bad, "private_key")
    msg = str(info.value)
    assert msg.startswith("private_key: invalid key")
    assert not leaked(bad, msg), msg
    assert not leaked(raw.hex(), msg), msg


# No lowercase letters or spaces: hypothesis mines string constants from the code under test,
# and the error messages' own words would otherwise count as an "echo" of the input.
KEYISH = string.ascii_uppercase + string.digits + "+/=!#_-"


def refusal(parse: Callable[[str], Key], text: str) -> str | None:
    try:
        parse(text)
    except InvalidKeyError as e:
        return str(e)
    return None


@given(st.text(alphabet=KEYISH, min_size=8, max_size=80))
def test_any_text_that_is_not_a_key_is_refused_quietly(text: str) -> None:
    for parse in (Key.from_base64, Key.from_hex):
        msg = refusal(parse, text)
        assert msg is None or not leaked(text, msg, n=8), msg


# --- redaction ----------------------------------------------------------------------------


@given(raw_keys)
def test_repr_and_str_never_show_material(raw: bytes) -> None:
    k = Key(raw)
    for shown in (repr(k), str(k), f"{k}", f"{k!r}", repr([k]), repr({"k": k})):
        assert k.base64() not in shown
        assert k.hex() not in shown
        assert not leaked(k.base64(), shown, n=8)
        assert not leaked(k.hex(), shown, n=8)
        assert "redacted" in shown


def test_pickling_is_refused() -> None:
    k = Key.generate()
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="not picklable"):
            pickle.dumps(k, protocol=protocol)
    with pytest.raises(TypeError):
        pickle.dumps({"nested": [k]})


def test_copy_and_deepcopy_work_and_share_the_key() -> None:
    # Devices holding keys are deep-copied (memory backend, engine snapshots).
    k = Key.generate()
    assert copy.copy(k) is k
    assert copy.deepcopy(k) is k
    assert copy.deepcopy({"k": [k]})["k"][0] == k


# --- derivation and clamping --------------------------------------------------------------


def test_public_key_matches_rfc7748_vectors() -> None:
    assert Key.from_hex(ALICE_PRIVATE).public_key().hex() == ALICE_PUBLIC
    assert Key.from_hex(BOB_PRIVATE).public_key().hex() == BOB_PUBLIC


def test_public_key_is_the_same_for_the_clamped_form() -> None:
    alice = Key.from_hex(ALICE_PRIVATE)
    assert alice.clamped().public_key().hex() == ALICE_PUBLIC


@given(raw_keys)
def test_same_private_after_clamping(raw: bytes) -> None:
    k = Key(raw)
    c = k.clamped()
    assert k.same_private(c)
    assert c.same_private(k)
    assert c.clamped() == c  # clamping is idempotent
    assert c.raw == clamp(raw)
    assert c.raw[0] & 7 == 0
    assert c.raw[31] & 0x80 == 0
    assert c.raw[31] & 0x40
    assert k.public_key() == c.public_key()


@given(raw_keys, raw_keys)
def test_same_private_distinguishes_different_keys(a: bytes, b: bytes) -> None:
    assert Key(a).same_private(Key(b)) == (clamp(a) == clamp(b))


def test_same_private_ignores_only_the_clamped_bits() -> None:
    k = Key(bytes(32))
    assert k.same_private(Key(bytes([7]) + bytes(30) + bytes([0x80])))
    assert not k.same_private(Key(bytes([8]) + bytes(31)))


def test_generated_keys_are_clamped_and_distinct() -> None:
    keys = [Key.generate() for _ in range(20)]
    assert all(k.clamped() == k for k in keys)
    assert len({k.raw for k in keys}) == 20
    psks = [Key.generate_preshared() for _ in range(20)]
    assert len({k.raw for k in psks}) == 20
    assert Key.zero().is_zero()
    assert not keys[0].is_zero()


# --- key files ----------------------------------------------------------------------------


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.usefixtures("umask_zero")
def test_write_key_file_is_0600_even_under_umask_zero(tmp_path: Path) -> None:
    path = tmp_path / "private.key"
    k = Key.generate()
    write_key_file(path, k)
    assert mode(path) == 0o600
    assert path.read_text() == k.base64() + "\n"
    assert read_key_file(path) == k
    assert [p.name for p in tmp_path.iterdir()] == ["private.key"]  # no temp file left


@pytest.mark.usefixtures("umask_zero")
def test_write_key_file_over_an_existing_0644_file(tmp_path: Path) -> None:
    path = tmp_path / "private.key"
    path.write_text("old contents\n")
    path.chmod(0o644)
    k = Key.generate()
    write_key_file(str(path), k)
    assert mode(path) == 0o600
    assert read_key_file(str(path)) == k


def test_read_key_file_refuses_a_world_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "private.key"
    k = Key.generate()
    write_key_file(path, k)
    path.chmod(0o644)
    with pytest.raises(InvalidKeyError, match="644") as info:
        read_key_file(path, "cable private key")
    assert info.value.field == "cable private key"
    assert k.base64() not in str(info.value)
    path.chmod(0o640)
    with pytest.raises(InvalidKeyError, match="too open"):
        read_key_file(path)


def test_read_key_file_with_garbage_names_the_file_not_the_content(tmp_path: Path) -> None:
    path = tmp_path / "private.key"
    path.write_text("this-is-not-a-key-but-is-secret-anyway\n")
    path.chmod(0o600)
    with pytest.raises(InvalidKeyError) as info:
        read_key_file(path)
    assert str(path) in str(info.value)
    assert "secret" not in str(info.value)


def test_non_ascii_base64_is_an_invalid_key_error() -> None:
    with pytest.raises(InvalidKeyError, match="not valid base64"):
        Key.from_base64("é" * 43 + "=", "publicKey")
