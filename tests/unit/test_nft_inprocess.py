"""Our nftables table without starting nft (``routing/libnft.py``), and the ``nft -f -``
fallback when libnftables is missing. The library against a real kernel, in a namespace:
tests/integration/test_driver_e2e.py (the SNAT table tests)."""

from __future__ import annotations

import logging
import subprocess
from typing import Any

import pytest

from wgcable.routing import libnft, nftables


@pytest.fixture
def no_library(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], str | None]]:
    """libnftables missing; every nft command started is recorded, and "succeeds"."""
    monkeypatch.setattr(libnft, "_lib", None)
    monkeypatch.setattr(libnft, "_missing", None)
    monkeypatch.setattr(libnft, "LIBRARY", "libwgcable-no-such-nftables.so.0")
    monkeypatch.setattr(nftables.shutil, "which", lambda name: f"/usr/sbin/{name}")
    ran: list[tuple[list[str], str | None]] = []

    def run(args: list[str], input: str | None = None, **kw: Any) -> Any:
        ran.append((args, input))
        return subprocess.CompletedProcess(args, 0, '{"nftables": []}', "")
    monkeypatch.setattr(nftables.subprocess, "run", run)
    return ran


def test_without_the_library_nft_is_started_in_the_namespace(
        no_library: list[tuple[list[str], str | None]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wgcable.routing.libnft")
    t = nftables.NftTable("subwg0", "ns1")
    t.apply("table inet wgcable_subwg0 {\n}\n")
    assert not t.exists()
    assert no_library[0] == (["ip", "netns", "exec", "ns1", "nft", "-f", "-"],
                             nftables.transaction("wgcable_subwg0",
                                                  "table inet wgcable_subwg0 {\n}\n"))
    assert no_library[1] == (["ip", "netns", "exec", "ns1", "nft", "-j", "-f", "-"],
                             "list tables inet")
    t2 = nftables.NftTable("subwg1")
    t2.remove()
    assert no_library[2][0] == ["nft", "-f", "-"]
    # The reason is logged once, not per call.
    reasons = [r for r in caplog.records if "libnftables not usable" in r.getMessage()]
    assert len(reasons) == 1
    assert libnft.missing_reason()


def test_nothing_to_remove_without_nftables_at_all(
        no_library: list[tuple[list[str], str | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nftables.shutil, "which", lambda name: None)
    nftables.NftTable("subwg0").remove()
    assert no_library == []
    with pytest.raises(nftables.NftError, match="nft not found"):
        nftables.NftTable("subwg0").apply("table inet wgcable_subwg0 {\n}\n")


def test_a_command_with_a_nul_byte_is_refused_before_the_library() -> None:
    lib = libnft._load()
    if lib is None:
        pytest.skip(f"libnftables not here: {libnft.missing_reason()}")
    ctx = libnft.Context(lib, None)  # nothing is run: refused before the call
    try:
        with pytest.raises(ValueError, match="NUL"):
            ctx.run("list tables\0flush ruleset")
    finally:
        ctx.close()
