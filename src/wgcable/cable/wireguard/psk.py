"""The preshared key: Submariner's derivation from a text, and the keys refused as known.

Submariner's WireGuard driver puts one preshared key on every peer: the SHA-256 of the
``CE_IPSEC_PSK`` text. It reads the variable with envconfig, whose default ("default psk")
applies only to an *unset* variable: a variable set to the empty text gives the SHA-256 of
nothing. A gateway of ours given the same text derives the same key, so the two can form a
cable.

Both defaults are keys anyone can compute, and so is an all-zero key (which to WireGuard
means no preshared key at all). They are refused unless the user accepts Submariner's two
defaults explicitly (``--allow-default-psk``); the driver then warns that they protect
nothing.
"""

from __future__ import annotations

import hashlib

from wgcable.wgctrl import Key

# What Submariner hashes when CE_IPSEC_PSK is unset (envconfig's `default:"default psk"`).
SUBMARINER_DEFAULT_TEXT = "default psk"

# The keys Submariner derives by default: from an unset and from an empty CE_IPSEC_PSK.
SUBMARINER_DEFAULTS = frozenset({
    hashlib.sha256(SUBMARINER_DEFAULT_TEXT.encode()).digest(),
    hashlib.sha256(b"").digest(),
})

# Keys anyone could guess protect nothing: refused whatever the user allows (zero is "no
# key" to WireGuard; the SHA-256 of "default" is a near miss of Submariner's default).
ALWAYS_REFUSED = frozenset({bytes(32), hashlib.sha256(b"default").digest()})
WELL_KNOWN = SUBMARINER_DEFAULTS | ALWAYS_REFUSED

DEFAULT_RISK = ("anyone who knows Submariner's default can compute it, so it protects "
                "nothing")


def from_text(text: str | None) -> Key:
    """Submariner's preshared key for ``CE_IPSEC_PSK`` = ``text``: the SHA-256 of its bytes;
    of "default psk" when unset (None). The text's bytes are the ones the process was given
    (Python decodes the environment and the command line with ``surrogateescape``)."""
    raw = (SUBMARINER_DEFAULT_TEXT if text is None else text).encode("utf-8", "surrogateescape")
    return Key(hashlib.sha256(raw).digest(), "preshared key")


def is_submariner_default(key: Key) -> bool:
    return key.raw in SUBMARINER_DEFAULTS


def why_weak(key: Key, *, allow_default: bool = False) -> str | None:
    """Why ``key`` is refused as a preshared key; None when it is not."""
    raw = key.raw
    if raw in SUBMARINER_DEFAULTS:
        if allow_default:
            return None
        what = "an empty text" if raw == hashlib.sha256(b"").digest() else \
            f"Submariner's default text {SUBMARINER_DEFAULT_TEXT!r}"
        return (f"it is the key of {what}: {DEFAULT_RISK}; give a strong random text "
                "(`wgcable genpsk` prints one), or accept the risk with --allow-default-psk")
    if raw in ALWAYS_REFUSED or len(set(raw)) == 1:
        return "empty or well-known"
    return None


def check(key: Key, source: str, *, allow_default: bool = False) -> Key:
    """``key``, or ValueError naming ``source`` (never the key or the text)."""
    if why := why_weak(key, allow_default=allow_default):
        raise ValueError(f"{source}: preshared key refused: {why}")
    return key
