"""The picture as GraphViz DOT (pure).

Node and cluster IDs are made by ``model.py``; broker text (cluster IDs, hostnames, IPs,
subnets, status messages) appears only inside HTML-like labels, after ``escape``: cut
short, control and non-ASCII characters written as escapes and backslashes doubled
(``safetext.plain``), then ``& < > "`` as entities. Nothing a broker writes can therefore
end a label, add an attribute, a node or an edge, or reach Graphviz's backslash escapes:
even in an HTML label, ``\\N`` shows the node's ID and ``\\G`` the graph's name, while the
doubled ``\\\\N`` shows as ``\\N``. (Checked with the real ``dot`` in tests/unit/test_graph.py.)
"""

from __future__ import annotations

from wgcable.cli.format import bytes_human
from wgcable.graph.model import Cable, ClusterBox, GatewayNode, Picture
from wgcable.safetext import plain

NAME_LIMIT = 63  # a DNS label; longer names are cut
ADDRESS_LIMIT = 49  # an IPv6 CIDR
MESSAGE_LIMIT = 80
NOTE_LIMIT = 100
MAX_SUBNETS = 4  # shown per cluster; more are counted

# Cable status -> colour (Submariner's statuses; anything else is grey).
STATUS_COLOURS = {"connected": "#2e7d32", "connecting": "#ef6c00", "error": "#c62828"}
GREY = "#757575"
FONT = "Helvetica"


def escape(value: str, limit: int) -> str:
    """Broker text as HTML-label text: one line, printable ASCII, entities for markup."""
    text = plain(value, limit)
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def _small(text: str) -> str:
    return f'<FONT POINT-SIZE="10">{text}</FONT>'


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _gateway(n: GatewayNode) -> str:
    lines = [f"<B>{escape(n.hostname or '(no hostname)', NAME_LIMIT)}</B>", n.role]
    if n.private_ip:
        lines.append(_small(f"private {escape(n.private_ip, ADDRESS_LIMIT)}"))
    if n.public_ip:
        lines.append(_small(f"public {escape(n.public_ip, ADDRESS_LIMIT)}"))
    if n.nat_enabled:
        lines.append(_small("behind NAT"))
    lines += [_small(f"<I>{escape(note, NOTE_LIMIT)}</I>") for note in n.notes]
    if n.role == "active":
        style, colour, width = "rounded,filled,bold", "#1565c0", "2"
    elif n.role == "passive":
        style, colour, width = "rounded,filled,dashed", GREY, "1"
    else:
        style, colour, width = "rounded,filled,dotted", GREY, "1"
    fill = "#e3f2fd" if n.role == "active" and not n.notes else "#fafafa"
    return (f'    {n.key} [label=<{"<BR/>".join(lines)}>, style="{style}", '
            f'color="{colour}", fillcolor="{fill}", penwidth={width}];')


def _cluster(c: ClusterBox) -> list[str]:
    subnets = ", ".join(escape(s, ADDRESS_LIMIT) for s in c.subnets[:MAX_SUBNETS])
    if len(c.subnets) > MAX_SUBNETS:
        subnets += f" and {len(c.subnets) - MAX_SUBNETS} more"
    label = f"<B>{escape(c.cluster_id or '(no cluster ID)', NAME_LIMIT)}</B>"
    if subnets:
        label += f"<BR/>{_small(subnets)}"
    return [f"  subgraph {c.key} {{",
            f"    label=<{label}>;",
            '    style="rounded"; color="#90a4ae";',
            *(_gateway(n) for n in c.gateways),
            "  }"]


def _side(c: Cable, names: dict[str, str]) -> list[str]:
    """One side's view of a cable: who reports, the status, RTT, bytes, address and NAT."""
    colour = GREY if c.stale else STATUS_COLOURS.get(c.status, GREY)
    first = (f"{names[c.tail]} to {names[c.head]}: "
             f'<FONT COLOR="{colour}"><B>{escape(c.status, NAME_LIMIT)}</B></FONT>')
    details = []
    if c.rtt is not None:
        details.append(f"RTT {_ms(c.rtt)}")
    if c.transfer is not None:
        details.append(f"rx {bytes_human(c.transfer[0])} / tx {bytes_human(c.transfer[1])}")
    if c.using_ip or c.using_nat:
        via = f"via {escape(c.using_ip, ADDRESS_LIMIT)}" if c.using_ip else "via"
        details.append(f"{via}{' (NAT)' if c.using_nat else ''}")
    lines = [first, ", ".join(details)] if details else [first]
    if c.message:
        lines.append(f"<I>{escape(c.message, MESSAGE_LIMIT)}</I>")
    if c.stale:
        lines.append("<I>stale report</I>")
    return lines


def _half(c: Cable | None) -> str:
    """The attributes of a cable's half drawn for one side: its status' colour, dashed
    unless connected, dotted when that side does not report the cable."""
    if c is None:
        return f'color="{GREY}", style="dotted"'
    colour = GREY if c.stale else STATUS_COLOURS.get(c.status, GREY)
    style = "solid" if c.status == "connected" and not c.stale else "dashed"
    return f'color="{colour}", style="{style}", penwidth=2'


def _cables(picture: Picture) -> list[str]:
    """One box per pair of gateways, between them, holding each side's view; each half of
    the line is drawn as its side sees the cable. (Two labelled edges per pair, in a full
    mesh, put labels over each other.)"""
    names = {n.key: f"<B>{escape(n.hostname or n.key, NAME_LIMIT)}</B>"
             for c in picture.clusters for n in c.gateways}
    pairs: dict[tuple[str, str], list[Cable]] = {}
    for c in picture.cables:
        pairs.setdefault((c.tail, c.head) if c.tail <= c.head else (c.head, c.tail),
                         []).append(c)
    out = []
    for i, ((a, b), sides) in enumerate(pairs.items()):
        by_tail = {c.tail: c for c in sides}
        lines = [line for c in sides for line in _side(c, names)]
        out += [f'  cable{i} [label=<{_small("<BR/>".join(lines))}>, shape="box", '
                f'style="rounded", color="#cfd8dc"];',
                f"  {a} -> cable{i} [{_half(by_tail.get(a))}, dir=\"none\"];",
                f"  cable{i} -> {b} [{_half(by_tail.get(b))}, dir=\"none\"];"]
    return out


def render_dot(picture: Picture) -> str:
    gateways = sum(len(c.gateways) for c in picture.clusters)
    heading = [f"<B>{escape(picture.title, NOTE_LIMIT)}</B>"] if picture.title else []
    cables = len({frozenset((c.tail, c.head)) for c in picture.cables})
    heading.append(", ".join(_count(n, word) for n, word in (
        (len(picture.clusters), "cluster"), (gateways, "gateway"), (cables, "cable"))))
    heading += [_small(f"<I>{escape(n, NOTE_LIMIT)}</I>") for n in picture.notes]
    out = [
        "digraph wgcable {",
        f'  graph [label=<{"<BR/>".join(heading)}>, labelloc="t", fontname="{FONT}", '
        'nodesep="0.4", ranksep="0.5"];',
        f'  node [shape="box", fontname="{FONT}"];',
        f'  edge [fontname="{FONT}", arrowsize="0.7"];',
    ]
    for c in picture.clusters:
        out += _cluster(c)
    out += _cables(picture)
    out.append("}")
    return "\n".join(out) + "\n"
