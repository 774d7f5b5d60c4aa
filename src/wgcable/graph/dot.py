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


def _cable(c: Cable) -> str:
    colour = GREY if c.stale else STATUS_COLOURS.get(c.status, GREY)
    lines = [f'<B><FONT COLOR="{colour}">{escape(c.status, NAME_LIMIT)}</FONT></B>']
    if c.rtt is not None:
        lines.append(f"RTT {_ms(c.rtt)}")
    if c.transfer is not None:
        lines.append(f"rx {bytes_human(c.transfer[0])} / tx {bytes_human(c.transfer[1])}")
    if c.using_ip or c.using_nat:
        via = f"via {escape(c.using_ip, ADDRESS_LIMIT)}" if c.using_ip else "via"
        lines.append(f"{via}{' (NAT)' if c.using_nat else ''}")
    if c.message:
        lines.append(f"<I>{escape(c.message, MESSAGE_LIMIT)}</I>")
    if c.stale:
        lines.append("<I>stale report</I>")
    style = "dashed" if c.stale or c.status != "connected" else "solid"
    return (f'  {c.tail} -> {c.head} [label=<{_small("<BR/>".join(lines))}>, '
            f'color="{colour}", style="{style}"];')


def render_dot(picture: Picture) -> str:
    gateways = sum(len(c.gateways) for c in picture.clusters)
    heading = [f"<B>{escape(picture.title, NOTE_LIMIT)}</B>"] if picture.title else []
    heading.append(f"{len(picture.clusters)} clusters, {gateways} gateways, "
                   f"{len(picture.cables)} cable reports (one per side)")
    heading += [_small(f"<I>{escape(n, NOTE_LIMIT)}</I>") for n in picture.notes]
    out = [
        "digraph wgcable {",
        f'  graph [label=<{"<BR/>".join(heading)}>, labelloc="t", fontname="{FONT}", '
        'rankdir="LR", nodesep="0.6", ranksep="1.6"];',
        f'  node [shape="box", fontname="{FONT}"];',
        f'  edge [fontname="{FONT}", arrowsize="0.7"];',
    ]
    for c in picture.clusters:
        out += _cluster(c)
    out += [_cable(c) for c in picture.cables]
    out.append("}")
    return "\n".join(out) + "\n"
