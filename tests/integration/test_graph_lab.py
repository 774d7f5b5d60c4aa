"""`wgcable demo --graph` and `wgcable graph --lab` on a real lab: one demo (three clusters,
the second behind a NAT router) is kept up for the `graph --lab` check, then removed,
pass or fail."""

from __future__ import annotations

import html
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from wgcable.cli.lab import remove

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which("dot") is None,
                       reason="Graphviz's dot is not installed (scripts/install.sh)"),
]


def _texts(svg: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(r"<text[^>]*>(.*?)</text>", svg)]


def test_demo_graph_png_and_graph_lab_svg(tmp_path: Path) -> None:
    root, name = tmp_path / "labs", f"gr{os.getpid() % 100000}"
    env = {**os.environ, "WGCABLE_LAB_ROOT": str(root)}
    png, svg = tmp_path / "demo.png", tmp_path / "lab.svg"

    def wgcable(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "wgcable", *args], capture_output=True,
                              text=True, env=env, timeout=180, check=False)

    try:
        r = wgcable("demo", "--clusters", "3", "--nodes", "1", "--nat", "--keep",
                    "--name", name, "--graph", str(png))
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"the lab's graph: {png}" in r.stdout
        g = wgcable("graph", "--lab", name, "-o", str(svg))
        assert g.returncode == 0, g.stderr
    finally:
        remove(name, str(root))

    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert width > 300
    assert height > 200
    assert len(data) > 20_000

    shown = _texts(svg.read_text())
    for cid in ("cluster1", "cluster2", "cluster3"):
        assert cid in shown, cid
    assert shown.count("active") == 3  # one gateway per cluster
    assert shown.count("connected") == 6  # each side of the 3 cables
    assert "behind NAT" in shown  # cluster 2's gateway
    # Each side's view of each cable: bytes and the address used (and RTT, once its health
    # checker measured: the demo waits up to 5 s for that); cluster 2's NAT router is in
    # the path of its cables.
    details = [t for t in shown if " / tx " in t]
    assert len(details) == 6, shown
    assert all(t.startswith(("RTT ", "rx ")) and ", via 198.18." in t for t in details)
    assert [t for t in details if t.startswith("RTT ")]
    assert [t for t in details if t.endswith(" (NAT)")]
