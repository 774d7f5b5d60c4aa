"""Human forms of sizes and ages, in the words `wg show` uses."""

from __future__ import annotations


def bytes_human(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.2f} {unit}"


def age_human(seconds: float) -> str:
    s = int(seconds)
    if s <= 0:
        return "Now"
    parts = []
    for name, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if s >= size:
            k, s = divmod(s, size)
            parts.append(f"{k} {name}{'' if k == 1 else 's'}")
    return ", ".join(parts) + " ago"
