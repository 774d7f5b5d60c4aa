"""The repository itself: no merge-conflict markers left in any tracked file, and every
repository path named in a comment, docstring or document exists (a renamed folder leaves
such references behind, as the broker tests' folder did when it was renamed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# A conflict marker is a whole line: seven signs, then a space and a label or nothing.
MARKER = re.compile(r"^(<{7}|={7}|>{7})( .*)?$", re.MULTILINE)
# A path into one of our top-level folders, as written in prose or comments.
PATH = re.compile(r"(?<![\w./-])((?:tests|src|deploy|docs|scripts|bench)/[\w./-]*[\w/])")

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")


def _tracked_texts() -> dict[str, str]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    out = {}
    for name in filter(None, names):
        path = ROOT / name
        if not path.is_file():  # deleted in the worktree, not yet committed
            continue
        try:
            out[name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
    return out


def _exists(ref: str) -> bool:
    if (ROOT / ref).exists():
        return True
    # bench/common.Row: a name inside a module
    module = ref.rsplit(".", 1)[0]
    if module != ref and (ROOT / f"{module}.py").exists():
        return True
    # An output folder the repository ignores (bench/results/) need not exist.
    for form in (ref, ref.rstrip("/") + "/"):
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", form], cwd=ROOT)
        if ignored.returncode == 0:
            return True
    return False


def test_no_merge_conflict_markers() -> None:
    found = [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
             for name, text in _tracked_texts().items() for m in MARKER.finditer(text)]
    assert found == []


def test_paths_named_in_the_repository_exist() -> None:
    missing = sorted({f"{name}: {m.group(1)}" for name, text in _tracked_texts().items()
                      for m in PATH.finditer(text) if not _exists(m.group(1))})
    assert missing == []
