"""The metric names a PromQL expression reads, for checking that the shipped alert rules and
dashboard use only metrics the agent exports. A small lexer, not a parser: promtool and a real
Prometheus check the syntax; this finds the bare identifiers that are not functions,
aggregations, keywords, label names or durations."""

from __future__ import annotations

import re

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")  # label matchers
_RANGE = re.compile(r"\[[^\[\]]*\]")  # [5m], [5m:1m]
# Label lists after these name labels, not metrics.
_LABEL_LIST = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_IDENT = re.compile(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
             "or", "unless", "offset", "atan2", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (Grafana's ``$variables`` are taken as values)."""
    text = _STRING.sub(" ", expr)
    text = re.sub(r"\$\{?\w+\}?", "0", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for m in _IDENT.finditer(text):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names
