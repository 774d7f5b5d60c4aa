"""Go time.Duration text: Go's own String() and ParseDuration results, and round trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgcable.cable.godur import (
    HOUR,
    MAX_NS,
    MICROSECOND,
    MILLISECOND,
    MIN_NS,
    MINUTE,
    SECOND,
    format_duration,
    format_duration_ns,
    parse_duration,
    parse_duration_ns,
    to_nanoseconds,
)
from wgcable.safetext import safe

# Go's time package tests (durationTests): String() output for these values, and back.
GO_STRINGS = [
    ("0s", 0),
    ("1ns", 1),
    ("1.1µs", 1100),
    ("2.2ms", 2200 * MICROSECOND),
    ("3.3s", 3300 * MILLISECOND),
    ("4m5s", 4 * MINUTE + 5 * SECOND),
    ("4m5.001s", 4 * MINUTE + 5001 * MILLISECOND),
    ("5h6m7.001s", 5 * HOUR + 6 * MINUTE + 7001 * MILLISECOND),
    ("8m0.000000001s", 8 * MINUTE + 1),
    ("2562047h47m16.854775807s", MAX_NS),
    ("-2562047h47m16.854775808s", MIN_NS),
    ("1µs", MICROSECOND),
    ("999ns", 999),
    ("999.999µs", MILLISECOND - 1),
    ("999.999999ms", SECOND - 1),
    ("1m0s", MINUTE),
    ("1h0m0.5s", HOUR + SECOND // 2),
    ("-850µs", -850 * MICROSECOND),
]


@pytest.mark.parametrize(("text", "ns"), GO_STRINGS)
def test_format_matches_go(text: str, ns: int) -> None:
    assert format_duration_ns(ns) == text


@pytest.mark.parametrize(("text", "ns"), GO_STRINGS)
def test_parse_reads_go_strings(text: str, ns: int) -> None:
    assert parse_duration_ns(text, "f") == ns


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0, "0s"),
        (1.5e-6, "1.5µs"),
        (0.001234, "1.234ms"),
        (0.000850, "850µs"),
        (90, "1m30s"),
        (3600, "1h0m0s"),
        (3723.5, "1h2m3.5s"),
        (1e-9, "1ns"),
        (12e-9, "12ns"),
        (1.5, "1.5s"),
        (123.5, "2m3.5s"),
        (-1.5, "-1.5s"),
        (0.4e-9, "0s"),  # rounds to whole nanoseconds
        (0.6e-9, "1ns"),
    ],
)
def test_format_float_seconds(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        # More of Go's ParseDuration table, including its float64 fraction arithmetic.
        ("5s", 5 * SECOND),
        ("-5s", -5 * SECOND),
        ("+5s", 5 * SECOND),
        ("-0", 0),
        ("+0", 0),
        ("0", 0),
        ("5.0s", 5 * SECOND),
        ("5.s", 5 * SECOND),
        (".5s", SECOND // 2),
        ("1.0040s", 1004 * MILLISECOND),
        ("100.00100s", 100 * SECOND + MILLISECOND),
        ("11us", 11 * MICROSECOND),
        ("12µs", 12 * MICROSECOND),
        ("12μs", 12 * MICROSECOND),  # Greek mu, also accepted by Go
        ("13ms", 13 * MILLISECOND),
        ("15m", 15 * MINUTE),
        ("16h", 16 * HOUR),
        ("3h30m", 3 * HOUR + 30 * MINUTE),
        ("10.5s4m", 4 * MINUTE + 10500 * MILLISECOND),
        ("-2m3.4s", -(2 * MINUTE + 3400 * MILLISECOND)),
        ("1h2m3s4ms5us6ns", HOUR + 2 * MINUTE + 3 * SECOND + 4 * MILLISECOND + 5000 + 6),
        ("39h9m14.425s", 39 * HOUR + 9 * MINUTE + 14425 * MILLISECOND),
        ("52763797000ns", 52763797000),
        ("0.3333333333333333333h", 20 * MINUTE),
        ("0.100000000000000000000h", 6 * MINUTE),
        ("0.830103483285477580700h", 49 * MINUTE + 48 * SECOND + 372539827),
        ("9223372036854775807ns", MAX_NS),
        ("9223372036854775.807us", MAX_NS),
        ("9223372036854ms775us807ns", MAX_NS),
        ("-9223372036854775808ns", MIN_NS),
        ("-9223372036854775.808us", MIN_NS),
    ],
)
def test_parse_matches_go(text: str, ns: int) -> None:
    assert parse_duration_ns(text, "f") == ns


def test_parse_returns_seconds() -> None:
    assert parse_duration("1.234ms", "f") == 0.001234
    assert parse_duration("850us", "f") == 0.00085


@pytest.mark.parametrize(
    "text",
    [
        "",
        "3",
        "-",
        "s",
        ".",
        "-.",
        ".s",
        "+.s",
        "1d",
        "1S",
        " 1s",
        "1s ",
        "1.2.3s",
        "\x85\x85",
        "hello \xffff world",
        "9223372036854775808ns",
        "9223372036854775.808us",
        "9223372036854ms775us808ns",
        "-9223372036854775809ns",
    ],
)
def test_parse_errors_name_field_and_value(text: str) -> None:
    with pytest.raises(ValueError, match=r"latencyRTT\.last") as info:
        parse_duration(text, "latencyRTT.last")
    assert safe(text) in str(info.value)  # quoted and escaped as every untrusted value is


def test_parse_refuses_non_strings() -> None:
    with pytest.raises(ValueError, match=r"avg=12"):
        parse_duration(12, "avg")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_format_refuses_non_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        format_duration(bad)


@pytest.mark.parametrize("ns", [MAX_NS + 1, MIN_NS - 1])
def test_format_refuses_out_of_range(ns: int) -> None:
    with pytest.raises(ValueError, match="int64"):
        format_duration_ns(ns)


@given(st.integers(min_value=MIN_NS, max_value=MAX_NS))
def test_ns_round_trip(ns: int) -> None:
    assert parse_duration_ns(format_duration_ns(ns), "f") == ns


# Seconds whose nanosecond count fits in Go's int64.
go_seconds = st.floats(min_value=-9.2e9, max_value=9.2e9, allow_nan=False)


@given(go_seconds)
def test_seconds_round_trip_to_whole_ns(seconds: float) -> None:
    assert parse_duration(format_duration(seconds), "f") == to_nanoseconds(seconds) / SECOND


@given(st.integers(min_value=-(2**22) * SECOND, max_value=2**22 * SECOND))
def test_whole_ns_floats_are_exact_for_latencies(ns: int) -> None:
    # Up to 2**22 s (~48 days) float seconds keep every nanosecond: API round trips are exact.
    assert to_nanoseconds(ns / SECOND) == ns
