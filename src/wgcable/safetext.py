"""One way to put an untrusted value into a message: short, quoted, one line.

Values from other clusters, from store files or from the API server end up in logs, in the
gateway status (published to every cluster) and in ``status.json``. A value may be a whole
file (a private key behind a symlink), a multi-megabyte list, or text with newlines that
forges log lines. ``safe()`` shows at most ``limit`` characters of it, with control and
non-ASCII characters escaped, so a message says *which* value is wrong without carrying it.
"""

from __future__ import annotations

DEFAULT_LIMIT = 40  # enough for an IPv6 CIDR or a cluster ID; too little for a secret's bulk
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\", "'": "\\'"}
_ELLIPSIS = "..."


def _escape(text: str, quote: bool = True) -> str:
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if ch == "'" and not quote:
            out.append(ch)
        elif ch in _NAMED:
            out.append(_NAMED[ch])
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def safe(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """A quoted, escaped, truncated form of ``value`` for a message.

    Strings are quoted (``'10.0.0.0/8'``); other values name their type and, for sizes,
    their length (a list or mapping is never rendered whole: it may hold anything).
    """
    if value is None or isinstance(value, bool | int | float):
        return _escape(repr(value))[:limit]
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, list | tuple | dict | set | frozenset):
        return f"<{type(value).__name__} of {len(value)}>"
    if not isinstance(value, str):
        return f"<{type(value).__name__}>"
    # Escape only the prefix that can be shown: a huge value costs nothing.
    escaped = _escape(value[:limit])
    if len(escaped) > limit or len(value) > limit:
        return "'" + escaped[: max(limit - len(_ELLIPSIS), 0)] + _ELLIPSIS + "'"
    return "'" + escaped + "'"


def describe(value: object) -> str:
    """What ``value`` is, without any of its text: for values that may be a whole file."""
    if value is None or isinstance(value, bool | int | float):
        return safe(value)
    if isinstance(value, str):
        return f"<string of {len(value)} characters>"
    return safe(value)


def plain(text: str, limit: int = 120) -> str:
    """``text`` escaped and truncated but not quoted: for names built from untrusted keys
    (a field path such as ``backend_config.<key>``)."""
    escaped = _escape(text[:limit], quote=False)
    if len(escaped) > limit or len(text) > limit:
        return escaped[: limit - len(_ELLIPSIS)] + _ELLIPSIS
    return escaped


def oneline(text: str, limit: int = 300) -> str:
    """A message that may hold already-escaped parts, made one line: whitespace runs become
    one space and the remaining control characters are escaped (backslashes are left)."""
    text = " ".join(text.split())
    out = "".join(ch if ch.isprintable() and ch.isascii() else _escape(ch) for ch in text)
    return out if len(out) <= limit else out[: limit - len(_ELLIPSIS)] + _ELLIPSIS
