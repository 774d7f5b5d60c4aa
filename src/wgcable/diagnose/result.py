"""The outcome of one diagnose check, as a line for people and an object for machines."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from wgcable.safetext import oneline

# Every check's name, in the order they are shown (`--check` picks some).
CHECKS = ("agent", "wireguard", "device", "key-file", "peers", "handshake", "routes", "rule",
          "nft-table", "mss-clamp", "masquerade", "rp-filter", "udp-port", "mtu", "store",
          "subnet-overlap", "broker", "clock-skew", "rbac")


class Level(enum.StrEnum):
    PASS = "PASS"  # noqa: S105 - a verdict, not a password
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Result:
    """``check``: a stable name (``routes``, ``udp-port``); ``detail``: what was found;
    ``fix``: what to do ("" when nothing is to be done)."""

    check: str
    level: Level
    detail: str
    fix: str = ""

    def line(self) -> str:
        # Details may quote another cluster's text: one line, control characters escaped.
        text = f"{self.level.value}  {self.check}  {oneline(self.detail, 2000)}"
        return f"{text}  fix: {oneline(self.fix, 1000)}" if self.fix else text

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.level.value.lower(),
                "detail": self.detail, "fix": self.fix}


def passed(check: str, detail: str) -> Result:
    return Result(check, Level.PASS, detail)


def warn(check: str, detail: str, fix: str) -> Result:
    return Result(check, Level.WARN, detail, fix)


def fail(check: str, detail: str, fix: str) -> Result:
    return Result(check, Level.FAIL, detail, fix)


def exit_code(results: Iterable[Result]) -> int:
    """1 when any check failed, else 0 (warnings do not fail)."""
    return 1 if any(r.level is Level.FAIL for r in results) else 0
