"""Go ``time.Duration`` text, as Submariner writes it in ``latencyRTT`` (e.g. ``1.234ms``).

A Go duration is a signed 64-bit count of nanoseconds. The ``*_ns`` functions work on that
integer exactly; the float-second wrappers are what the API types use. Floats hold whole
nanoseconds exactly only up to about 48 days (2**22 s), which covers every latency.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from wgcable.safetext import safe

NANOSECOND = 1
MICROSECOND = 1_000
MILLISECOND = 1_000_000
SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

MIN_NS = -(1 << 63)
MAX_NS = (1 << 63) - 1

# Go accepts "us", the micro sign U+00B5 and the Greek mu U+03BC; units are case-sensitive.
_UNITS = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "\u00b5s": MICROSECOND,
    "\u03bcs": MICROSECOND,
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}

# One component: digits, optional fraction, then the unit (everything up to the next number).
_COMPONENT = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


def _trim_fraction(value: int, digits: int) -> tuple[int, str]:
    """Split ``value`` (in units of 10**-digits) into whole part and trimmed ``.frac`` text."""
    whole, frac = divmod(value, 10**digits)
    text = f"{frac:0{digits}d}".rstrip("0") if digits else ""
    return whole, f".{text}" if text else ""


def format_duration_ns(ns: int) -> str:
    """Render nanoseconds exactly as Go's ``Duration.String()`` does."""
    if not MIN_NS <= ns <= MAX_NS:
        raise ValueError(f"duration {ns}ns is outside Go's int64 range")
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    # Below one second Go switches to the largest unit that keeps the integer part non-zero.
    if u < MICROSECOND:
        return f"{sign}{u}ns"
    if u < MILLISECOND:
        whole, frac = _trim_fraction(u, 3)
        return f"{sign}{whole}{frac}\u00b5s"
    if u < SECOND:
        whole, frac = _trim_fraction(u, 6)
        return f"{sign}{whole}{frac}ms"
    secs, frac = _trim_fraction(u, 9)
    minutes, secs = divmod(secs, 60)
    hours, minutes = divmod(minutes, 60)
    # Go stops at hours (days vary in length) and prints every lower unit once a higher one shows.
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}{frac}s"
    if minutes:
        return f"{sign}{minutes}m{secs}{frac}s"
    return f"{sign}{secs}{frac}s"


def _fraction_ns(digits: str, unit: int) -> int:
    """The fraction's nanoseconds, computed as Go does so results match it to the nanosecond.

    Go keeps digits while they fit in an int64, then scales in float64 and truncates; exact
    arithmetic would differ (Go reads ``0.3333333333333333333h`` as exactly 20m).
    """
    value, scale = 0, 1.0
    for c in digits:
        if value > MAX_NS // 10 or value * 10 + int(c) > 1 << 63:
            break  # Go ignores the remaining digits once the next one would overflow
        value = value * 10 + int(c)
        scale *= 10
    return int(float(value) * (float(unit) / scale))


def parse_duration_ns(text: str, field: str) -> int:
    """Parse Go duration text into nanoseconds, accepting what ``time.ParseDuration`` accepts.

    Fractions become whole nanoseconds by Go's own float64 rounding and truncation.
    """

    def bad(reason: str) -> ValueError:
        return ValueError(f"{field}={safe(text)}: invalid duration: {reason}")

    if not isinstance(text, str):
        raise bad("expected a string")
    rest = text
    negative = rest[:1] == "-"
    if rest[:1] in ("-", "+"):
        rest = rest[1:]
    if rest == "0":  # Go's only unit-less form
        return 0
    if not rest:
        raise bad("empty")
    total = 0
    pos = 0
    while pos < len(rest):
        match = _COMPONENT.match(rest, pos)
        assert match is not None  # every part of the pattern may be empty
        whole, frac, unit = match.group(1), match.group(2), match.group(3)
        if not whole and not frac:
            raise bad(f"expected a number at {safe(rest[pos:])}")
        if not unit:
            raise bad("missing unit (ns, us, µs, ms, s, m, h)")
        scale = _UNITS.get(unit)
        if scale is None:
            raise bad(f"unknown unit {safe(unit)}")
        total += int(whole or "0") * scale
        if frac:
            total += _fraction_ns(frac, scale)
        pos = match.end()
    if total > (-MIN_NS if negative else MAX_NS):
        raise bad("out of Go's int64 nanosecond range")
    return -total if negative else total


def to_nanoseconds(seconds: float) -> int:
    """Round float seconds to whole nanoseconds (exact value of the float, ties to even)."""
    if not math.isfinite(seconds):
        raise ValueError(f"duration {seconds!r} is not a finite number of seconds")
    return round(Fraction(seconds) * SECOND)


def format_duration(seconds: float) -> str:
    """Render float seconds as Go's ``Duration.String()`` would, after rounding to whole ns."""
    return format_duration_ns(to_nanoseconds(seconds))


def parse_duration(text: str, field: str) -> float:
    """Parse Go duration text into float seconds; ``ValueError`` names ``field`` and the value."""
    return parse_duration_ns(text, field) / SECOND
