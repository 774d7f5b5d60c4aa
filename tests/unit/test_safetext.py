"""The one form in which untrusted values enter messages (wgcable.safetext)."""

from __future__ import annotations

import pytest

from wgcable.safetext import describe, oneline, plain, safe


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("10.0.0.0/8", "'10.0.0.0/8'"),
        ("a\nb\rc\td", "'a\\nb\\rc\\td'"),
        ("\x1b[2J\x00", "'\\x1b[2J\\x00'"),
        ("it's", "'it\\'s'"),
        ("caf\u00e9\u202e", "'caf\\xe9\\u202e'"),  # non-ASCII, bidi overrides included
        (5, "5"),
        (None, "None"),
        (True, "True"),
        ([1, 2, 3], "<list of 3>"),
        ({"a": "secret"}, "<dict of 1>"),
        (b"raw", "<3 bytes>"),
    ],
)
def test_hostile_values_are_quoted_and_escaped(value: object, shown: str) -> None:
    assert safe(value) == shown


def test_hostile_long_values_are_cut() -> None:
    out = safe("A" * 1_000_000)
    assert out == "'" + "A" * 37 + "...'"
    assert len(safe("\x00" * 1000, 20)) <= 22  # escapes count towards the limit
    assert plain("k\n" * 100, 10) == "k\\nk\\nk..."


def test_hostile_documents_show_no_text() -> None:
    assert describe("a private key, whole") == "<string of 20 characters>"
    assert describe(7) == "7"


def test_oneline_keeps_escapes_and_drops_line_breaks() -> None:
    assert oneline("a\\nb\n c\x07") == "a\\nb c\\x07"
    assert oneline("x" * 500, 10) == "xxxxxxx..."
