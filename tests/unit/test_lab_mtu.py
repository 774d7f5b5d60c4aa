"""The lab's `--mtu` option without building anything: refused out of range before any
output (CLI) or anything made (API), and passed on to `Lab.up` when given."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from wgcable.cli.main import main
from wgcable.lab.lab import Lab, LabState
from wgcable.lab.netns import LabError


@pytest.mark.parametrize("mtu", ["1339", "9001", "0"])
@pytest.mark.parametrize("argv", [("lab", "up"), ("demo", "--name", "mtutest")])
def test_mtu_lab_option_refused_before_any_output(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, mtu: str,
        argv: tuple[str, ...]) -> None:
    code = main([*argv, "--mtu", mtu, "--root", str(tmp_path)])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err == f"wgcable {argv[0]}: --mtu {mtu}: must be 1340-9000\n"


@pytest.mark.parametrize("mtu", [1339, 9001])
def test_mtu_lab_up_api_refuses(tmp_path: Path, mtu: int) -> None:
    with pytest.raises(LabError, match=f"--mtu {mtu}: must be 1340-9000"):
        Lab.up("x", 2, mtu=mtu, root=str(tmp_path))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("argv", "mtu"), [(("lab", "up"), 1500), (("demo",), 1500),
                                           (("lab", "up", "--mtu", "1400"), 1400),
                                           (("demo", "--mtu", "9000"), 9000)])
def test_mtu_lab_option_reaches_lab_up(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        argv: tuple[str, ...], mtu: int) -> None:
    seen: dict[str, Any] = {}

    def up(*args: Any, **kwargs: Any) -> Lab:
        seen.update(kwargs)
        raise LabError("reached Lab.up")

    monkeypatch.setattr(Lab, "up", up)
    monkeypatch.setattr("wgcable.cli.lab.check_can_build", lambda name, root: None)
    monkeypatch.setattr("wgcable.cli.demo.check_can_build", lambda name, root: None)
    monkeypatch.setattr("wgcable.cli.demo.remove", lambda name, root: (False, []))
    assert main([*argv, "--root", str(tmp_path), "--name", "mtutest"]) == 1
    assert seen["mtu"] == mtu
    assert (f"MTU {mtu}" in capsys.readouterr().err) is (mtu != 1500)


def test_mtu_lab_json_from_before_the_option_reads_as_1500(tmp_path: Path) -> None:
    doc = asdict(LabState("x", "wglx", str(tmp_path), False, False, False, 0.0, mtu=1400))
    del doc["mtu"]
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "lab.json").write_text(json.dumps(doc))
    assert Lab.load("x", root=str(tmp_path)).state.mtu == 1500
