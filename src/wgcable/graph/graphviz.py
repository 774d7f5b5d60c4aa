"""SVG and PNG by Graphviz's ``dot`` (Debian package ``graphviz``).

DOT needs no Graphviz; the other formats fail, without it, with an error that names the
package to install.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from wgcable.safetext import oneline, safe

FORMATS = ("dot", "svg", "png")
SUFFIXES = {".dot": "dot", ".gv": "dot", ".svg": "svg", ".png": "png"}
# A picture of a few hundred gateways lays out in seconds; far more is a broker's flood.
DOT_TIMEOUT = 120.0


class GraphError(RuntimeError):
    """The picture could not be made or written; the message says why."""


def format_for(path: str, fmt: str | None) -> str:
    """The format asked for, or the one ``path``'s suffix names (standard output: DOT)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise GraphError(f"--format {safe(fmt)}: must be one of {', '.join(FORMATS)}")
        return fmt
    if path == "-":
        return "dot"
    found = SUFFIXES.get(Path(path).suffix.lower())
    if found is None:
        raise GraphError(f"output {safe(path, 200)}: cannot tell the format from its suffix "
                         f"(use {', '.join(SUFFIXES)}, or --format)")
    return found


def dot_command() -> str:
    """The path of Graphviz's ``dot``; GraphError naming the package when it is missing."""
    found = shutil.which("dot")
    if found is None:
        raise GraphError("SVG and PNG need Graphviz's `dot`, which is not installed: "
                         "install the Debian package graphviz (apt-get install graphviz, "
                         "or run scripts/install.sh); DOT output (--format dot) needs nothing")
    return found


def render(dot_text: str, fmt: str) -> bytes:
    """``dot_text`` in ``fmt``: the text itself for DOT, else what ``dot -T<fmt>`` makes."""
    if fmt == "dot":
        return dot_text.encode()
    if fmt not in FORMATS:
        raise GraphError(f"format {safe(fmt)}: must be one of {', '.join(FORMATS)}")
    try:
        done = subprocess.run([dot_command(), f"-T{fmt}"], input=dot_text.encode(),
                              capture_output=True, timeout=DOT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise GraphError(f"dot did not finish within {DOT_TIMEOUT:.0f} s") from None
    if done.returncode != 0 or not done.stdout:
        why = oneline(done.stderr.decode(errors="replace"), 500) or f"exit {done.returncode}"
        raise GraphError(f"dot -T{fmt} failed: {why}")
    return done.stdout
