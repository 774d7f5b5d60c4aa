"""`wgcable graph`: the picture's content, its DOT, and the escaping of broker text.

Cluster IDs, hostnames, IPs and status messages come from the broker: hostile ones must
render as text, never end a label, add an attribute, a node or an edge. The checks that
need Graphviz's `dot` (the real parser) are skipped without it.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from wgcable.agent.statusfile import write_status_file
from wgcable.cable.types import (
    Connection,
    ConnectionStatus,
    Endpoint,
    GatewayStatus,
    HAStatus,
    LatencyRTT,
)
from wgcable.cli.main import main as cli_main
from wgcable.graph import graphviz
from wgcable.graph.dot import escape, render_dot
from wgcable.graph.graphviz import GraphError, format_for, render
from wgcable.graph.model import GatewayReport, build_picture
from wgcable.store.directory import DirectoryStore

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is not installed (scripts/install.sh)")


def _ep(cid: str, host: str, ip: str, *, public: str = "", nat: bool = False) -> Endpoint:
    return Endpoint(cluster_id=cid, cable_name=f"submariner-cable-{cid}-{ip.replace('.', '-')}",
                    hostname=host, subnets=[f"10.{cid[-1]}.0.0/16"], private_ip=ip,
                    public_ip=public, nat_enabled=nat, backend="wireguard")


C1 = _ep("cluster1", "gw1", "198.18.0.1")
C1_STANDBY = _ep("cluster1", "gw1-1", "198.18.1.11")
C2 = _ep("cluster2", "gw2", "198.19.2.2", public="198.18.0.102", nat=True)


def _set() -> list[GatewayReport]:
    """Cluster 1: an active gateway and a passive one; cluster 2 behind NAT, whose side of
    the cable is in error."""
    to2 = Connection(endpoint=C2, status=ConnectionStatus.CONNECTED, using_ip="198.18.0.102",
                     using_nat=True, latency_rtt=LatencyRTT(average=0.000412))
    to1 = Connection(endpoint=C1, status=ConnectionStatus.ERROR,
                     status_message="no handshake for 130 s", using_ip="198.18.0.1")
    return [
        GatewayReport(GatewayStatus(local_endpoint=C2, ha_status=HAStatus.ACTIVE,
                                    connections=[to1])),
        GatewayReport(GatewayStatus(local_endpoint=C1, ha_status=HAStatus.ACTIVE,
                                    connections=[to2]),
                      transfer={"cluster2": (1024, 2048)}, age=1.0, alive=True),
        GatewayReport(GatewayStatus(local_endpoint=C1_STANDBY, ha_status=HAStatus.PASSIVE)),
    ]


def svg_texts(svg: str) -> list[str]:
    """The texts an SVG of Graphviz shows, unescaped."""
    return [html.unescape(t) for t in re.findall(r"<text[^>]*>(.*?)</text>", svg)]


def _dot_json(dot_text: str) -> dict[str, object]:
    """What Graphviz's own parser makes of the DOT: objects and edges."""
    out = subprocess.run(["dot", "-Tjson"], input=dot_text, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    doc: dict[str, object] = json.loads(out)
    return doc


# --- the picture ---------------------------------------------------------------------------

def test_graph_picture_has_clusters_roles_and_each_sides_cable() -> None:
    pic = build_picture(_set(), [C1, C2], title="lab t")
    assert [c.cluster_id for c in pic.clusters] == ["cluster1", "cluster2"]
    c1 = pic.clusters[0]
    assert [(g.hostname, g.role) for g in c1.gateways] == [("gw1", "active"), ("gw1-1", "passive")]
    assert c1.subnets == ("10.1.0.0/16",)
    gw = {g.hostname: g.key for c in pic.clusters for g in c.gateways}
    cables = {(c.tail, c.head): c for c in pic.cables}
    assert set(cables) == {(gw["gw1"], gw["gw2"]), (gw["gw2"], gw["gw1"])}
    one_to_two = cables[(gw["gw1"], gw["gw2"])]
    assert (one_to_two.status, one_to_two.rtt, one_to_two.transfer) == ("connected", 0.000412,
                                                                         (1024, 2048))
    assert one_to_two.using_nat
    assert one_to_two.using_ip == "198.18.0.102"
    two_to_one = cables[(gw["gw2"], gw["gw1"])]
    assert two_to_one.status == "error"
    assert two_to_one.message == "no handshake for 130 s"
    assert two_to_one.transfer is None  # a store's report has no counters


def test_graph_marks_what_is_missing_or_stale() -> None:
    """An Endpoint without a Gateway status, a connection to a gateway nobody reports, an
    active gateway whose Endpoint is gone, a report that is old or whose agent is dead."""
    c3 = _ep("cluster3", "gw3", "198.18.0.3")
    c4 = _ep("cluster4", "gw4", "198.18.0.4")
    old = GatewayReport(GatewayStatus(local_endpoint=C1, ha_status=HAStatus.ACTIVE,
                                      connections=[Connection(endpoint=c4)]),
                        age=42.0, alive=False)
    pic = build_picture([old], [c3])
    nodes = {g.hostname: g for c in pic.clusters for g in c.gateways}
    assert nodes["gw1"].notes == ("agent not running", "status 42 s old",
                                  "no Endpoint in the store")
    assert nodes["gw3"].role == nodes["gw4"].role == "unknown"
    assert nodes["gw3"].notes == nodes["gw4"].notes == ("no Gateway status",)
    assert [c.stale for c in pic.cables] == [True]


def test_graph_is_the_same_whatever_the_sources_order() -> None:
    reports = _set()
    assert render_dot(build_picture(reports)) == render_dot(build_picture(reports[::-1]))


# --- DOT -----------------------------------------------------------------------------------

def test_graph_dot_structure() -> None:
    text = render_dot(build_picture(_set(), [C1, C2], title="lab t"))
    assert text.startswith("digraph wgcable {")
    assert text.endswith("}\n")
    assert len(re.findall(r"^  subgraph cluster_\d+ \{$", text, re.M)) == 2
    assert len(re.findall(r"^    g\d+ \[label=<", text, re.M)) == 3
    # One box per pair of gateways, holding both sides' views, a line to each gateway.
    assert len(re.findall(r"^  cable\d+ \[label=<", text, re.M)) == 1
    assert len(re.findall(r"^  g\d+ -> cable\d+ \[", text, re.M)) == 1
    assert len(re.findall(r"^  cable\d+ -> g\d+ \[", text, re.M)) == 1
    for shown in ("<B>cluster1</B>", "<B>gw1-1</B><BR/>passive", "RTT 0.41 ms",
                  "<B>gw1</B> to <B>gw2</B>", "<B>gw2</B> to <B>gw1</B>",
                  "RTT 0.41 ms, rx 1.00 KiB / tx 2.00 KiB, via 198.18.0.102 (NAT)", "behind NAT",
                  "public 198.18.0.102", "no handshake for 130 s",
                  "2 clusters, 3 gateways, 1 cable>"):
        assert shown in text, shown
    passive = next(line for line in text.splitlines() if "gw1-1" in line)
    assert 'style="rounded,filled,dashed"' in passive


@needs_dot
def test_graph_dot_parses_in_graphviz() -> None:
    doc = _dot_json(render_dot(build_picture(_set(), [C1, C2])))
    names = sorted(o["name"] for o in doc["objects"])  # type: ignore[attr-defined]
    assert names == ["cable0", "cluster_0", "cluster_1", "g0", "g1", "g2"]
    assert len(doc["edges"]) == 2  # type: ignore[arg-type]


HOSTILE = [
    'x"]; evil [label="injected"]; y -> z; "',
    "<B>bold</B><TABLE>",
    "}\nsubgraph cluster_evil { owned }\n",
    "\\N \\G \\L back\\slash",
    "&amp; &#60; &lt;",
    "gw\x1b]0;title\x07\r\u202ereversed\u0000",
    "z" * 10000,
]


def _hostile_set() -> list[GatewayReport]:
    reports = []
    for i, name in enumerate(HOSTILE):
        ep = Endpoint(cluster_id=name, cable_name=f"cable-{i}", hostname=name,
                      subnets=[name], private_ip=name, public_ip=name, nat_enabled=True)
        peer = Endpoint(cluster_id=HOSTILE[i - 1], cable_name=f"cable-{(i - 1) % len(HOSTILE)}",
                        hostname=HOSTILE[i - 1])
        conn = Connection(endpoint=peer, status=ConnectionStatus.ERROR, status_message=name,
                          using_ip=name, using_nat=True)
        reports.append(GatewayReport(GatewayStatus(local_endpoint=ep, ha_status=HAStatus.ACTIVE,
                                                   status_failure=name, connections=[conn])))
    return reports


def test_graph_escape_hostile_text() -> None:
    for name in HOSTILE:
        text = escape(name, 63)
        assert text.isascii(), text
        assert text.isprintable(), text
        assert not set(text) & set('<>"'), text
        assert len(text) < 63 * 6
    assert escape("<B>&", 63) == "&lt;B&gt;&amp;"


def test_graph_hostile_names_stay_inside_their_labels() -> None:
    text = render_dot(build_picture(_hostile_set(), title=HOSTILE[0]))
    n = len(HOSTILE)
    # Every line is one of ours (the head, a cluster's 5, a cable's 3, the end): no line
    # break, statement or node from broker text.
    assert len(text.splitlines()) == 4 + n * 5 + n * 3 + 1
    assert not re.search(r"^\s*(evil|y|owned|subgraph cluster_evil)", text, re.M)
    assert "\x1b" not in text
    assert "\u202e" not in text
    assert "\x00" not in text
    assert "<B>bold" not in text
    assert max(len(line) for line in text.splitlines()) < 4000


@needs_dot
def test_graph_hostile_names_render_in_graphviz_and_inject_nothing() -> None:
    """The real parser sees exactly our clusters, nodes and edges, and each label shows the
    broker's text as text."""
    text = render_dot(build_picture(_hostile_set(), title=HOSTILE[0]))
    doc = _dot_json(text)
    n = len(HOSTILE)
    names = {o["name"] for o in doc["objects"]}  # type: ignore[attr-defined]
    assert names == {f"{kind}{i}" for i in range(n) for kind in ("cluster_", "g", "cable")}
    assert len(doc["edges"]) == 2 * n  # type: ignore[arg-type]
    for obj in doc["objects"]:  # type: ignore[attr-defined]
        assert "evil" not in obj
        assert "owned" not in obj
    svg = render(text, "svg").decode()
    shown = svg_texts(svg)
    assert "<B>bold</B><TABLE>" in shown  # shown, not interpreted
    assert 'x"]; evil [label="injected"]; y -> z; "' in shown
    # Shown as written: a bare \\N in a label would show the node's ID (\\G the graph's).
    assert HOSTILE[3] in shown
    assert "&amp; &#60; &lt;" in shown
    assert "gw\\x1b]0;title\\x07\\r\\u202ereversed\\x00" in shown
    assert "z" * 60 + "..." in shown  # cut short
    assert "<B>" not in svg
    assert "\x1b" not in svg


# --- formats and Graphviz --------------------------------------------------------------------

def test_graph_format_from_suffix_or_flag() -> None:
    assert [format_for(p, None) for p in ("-", "a.dot", "a.gv", "a.SVG", "x/a.png")] == [
        "dot", "dot", "dot", "svg", "png"]
    assert format_for("a.txt", "png") == "png"
    with pytest.raises(GraphError, match=r"output 'a\.jpg': cannot tell the format"):
        format_for("a.jpg", None)
    with pytest.raises(GraphError, match=r"--format 'gif'"):
        format_for("a.png", "gif")


def test_graph_without_dot_dot_works_and_svg_names_the_package(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(graphviz.shutil, "which", lambda _name: None)
    text = render_dot(build_picture(_set()))
    assert render(text, "dot") == text.encode()
    with pytest.raises(GraphError, match="Debian package graphviz"):
        render(text, "png")
    store = tmp_path / "store"
    (store / "endpoints").mkdir(parents=True)  # an empty store (graph creates none)
    assert cli_main(["graph", "--store", str(store), "-o", str(tmp_path / "x.svg")]) == 1
    assert "install the Debian package graphviz" in capsys.readouterr().err
    assert not (tmp_path / "x.svg").exists()
    assert cli_main(["graph", "--store", str(store), "-o", str(tmp_path / "x.dot")]) == 0
    assert (tmp_path / "x.dot").read_text().startswith("digraph wgcable {")


# --- the command, on a real directory store ------------------------------------------------

def _store_with(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    store = DirectoryStore(root)
    for r in _set():
        ep = r.status.local_endpoint
        if r.status.ha_status == HAStatus.ACTIVE:
            store.publish(ep)
        store.write_status(f"{ep.cluster_id}-{ep.hostname}", r.status)
    return root


def test_graph_store_prints_dot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _store_with(tmp_path)
    assert cli_main(["graph", "--store", str(root)]) == 0
    out = capsys.readouterr().out
    # As the reports were written, but for what a Gateway object does not carry: bytes, age.
    written = [GatewayReport(r.status) for r in _set()]
    assert out == render_dot(build_picture(written, [C1, C2], title=f"store: directory {root}"))


@needs_dot
def test_graph_store_writes_svg_and_png(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    root = _store_with(tmp_path)
    svg, png = tmp_path / "set.svg", tmp_path / "set.png"
    assert cli_main(["graph", "--store", str(root), "-o", str(svg)]) == 0
    assert cli_main(["graph", "--store", str(root), "-o", str(png)]) == 0
    shown = svg_texts(svg.read_text())
    for name in ("cluster1", "cluster2", "gw1-1", "passive", "connected", "error"):
        assert name in shown, name
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 5000
    assert png.stat().st_mode & 0o777 == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    assert "wrote" in capsys.readouterr().err


def test_graph_bad_store_or_output_is_named(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["graph", "--store", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("wgcable graph: store directory ")
    assert "no such directory" in err
    root = _store_with(tmp_path)
    out = tmp_path / "missing-dir" / "x.dot"
    assert cli_main(["graph", "--store", str(root), "-o", str(out)]) == 1
    assert f"cannot write '{out}'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["graph"])  # a source is required


def test_graph_cable_half_of_a_silent_side_is_dotted() -> None:
    """Only cluster 1 reports its cable to cluster 2: its half is drawn in its status, the
    other half dotted (no report)."""
    to2 = Connection(endpoint=C2, status=ConnectionStatus.CONNECTING)
    pic = build_picture([GatewayReport(GatewayStatus(local_endpoint=C1,
                                                     ha_status=HAStatus.ACTIVE,
                                                     connections=[to2]))])
    text = render_dot(pic)
    assert re.search(r'^  g0 -> cable0 \[color="#ef6c00", style="dashed"', text, re.M)
    assert re.search(r'^  cable0 -> g1 \[color="#757575", style="dotted"', text, re.M)


@pytest.mark.parametrize(("graph", "said"), [
    ("out.jpg", "output 'out.jpg': cannot tell the format from its suffix"),
    ("-", "--graph needs a file"),
    ("out.png", "install the Debian package graphviz"),
])
def test_graph_demo_refuses_a_picture_it_cannot_make_before_building(
        graph: str, said: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(graphviz.shutil, "which", lambda _name: None)  # no `dot` here
    code = cli_main(["demo", "--clusters", "2", "--graph", graph, "--name", "graphtest",
                     "--root", str(tmp_path / "labs")])
    assert code == 1
    out = capsys.readouterr()
    assert out.err.startswith("wgcable demo: ")
    assert said in out.err
    assert "bringing up" not in out.err  # refused before anything was built
    assert not (tmp_path / "labs").exists()


def test_graph_store_names_unreadable_endpoints(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    root = _store_with(tmp_path)
    (root / "endpoints" / "broken.json").write_text('{"spec": ')
    assert cli_main(["graph", "--store", str(root)]) == 0
    out = capsys.readouterr().out
    assert "1 unreadable Endpoint entries: broken" in out
    assert "<B>gw2</B>" in out  # the rest is drawn


def test_graph_store_with_a_local_state_dir_adds_that_gateway_s_bytes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On a gateway's host, its agent's status file adds the bytes a Gateway object lacks."""
    root = _store_with(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    c1 = _set()[1].status
    c1.connections[0].rx_bytes, c1.connections[0].tx_bytes = 3 * 1024, 4 * 1024
    write_status_file(state, c1)
    assert cli_main(["graph", "--store", str(root), "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "rx 3.00 KiB / tx 4.00 KiB" in out
    assert out.count(" / tx ") == 1  # gw2's side: no file, no bytes
    (state / "status.json").write_text("[]")
    assert cli_main(["graph", "--store", str(root), "--state-dir", str(state)]) == 1
    assert f"--state-dir '{state}': no readable status file" in capsys.readouterr().err
