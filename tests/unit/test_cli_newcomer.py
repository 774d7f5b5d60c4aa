"""What a new user hit in issue 21, at the CLI: numbers checked before anything is printed
or built, and one meaning for a wait of 0 in `lab up` and `demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wgcable.cli.main import main
from wgcable.lab.lab import Lab
from wgcable.lab.netns import LabError
from wgcable.wgctrl.client import Client
from wgcable.wgctrl.memory import MemoryBackend


@pytest.fixture
def no_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing in these tests may build a lab: reaching Lab.up is an error of its own."""
    def up(*args: Any, **kwargs: Any) -> Lab:
        raise LabError("reached Lab.up")
    monkeypatch.setattr(Lab, "up", up)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.usefixtures("no_build")
@pytest.mark.parametrize("clusters", ["0", "1", "51", "-3"])
def test_validation_lab_up_clusters_refused_before_any_output(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, clusters: str) -> None:
    code, out, err = _run(capsys, "lab", "up", "--clusters", clusters, "--root", str(tmp_path))
    assert (code, out) == (1, "")
    assert err == f"wgcable lab: --clusters {clusters}: must be 2-50\n"


@pytest.mark.usefixtures("no_build")
@pytest.mark.parametrize("clusters", ["0", "1", "51"])
def test_validation_demo_clusters_refused_before_any_output(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, clusters: str) -> None:
    code, out, err = _run(capsys, "demo", "--clusters", clusters, "--root", str(tmp_path),
                          "--name", "newcomer")
    assert (code, out) == (1, "")  # no "removing the lab", no "demo took"
    assert err == f"wgcable demo: --clusters {clusters}: must be 2-50\n"


@pytest.mark.usefixtures("no_build")
@pytest.mark.parametrize(("argv", "flag"), [
    (("lab", "up", "--wait"), "--wait"),
    (("demo", "--name", "newcomer", "--timeout"), "--timeout"),
])
@pytest.mark.parametrize("value", ["-5", "-1", "-0.5", "nan"])
def test_validation_negative_wait_refused_naming_flag_and_value(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: tuple[str, ...], flag: str,
        value: str) -> None:
    code, out, err = _run(capsys, *argv, value, "--root", str(tmp_path))
    assert (code, out) == (1, "")
    assert err.endswith(f": {flag} {float(value):g}: must be 0 or more seconds "
                        "(0: do not wait)\n")
    assert err.count("\n") == 1


@pytest.mark.usefixtures("no_build")
@pytest.mark.parametrize("argv", [
    ("lab", "up", "--wait", "0"),
    ("demo", "--name", "newcomer", "--timeout", "0"),
])
def test_validation_zero_wait_accepted_by_both(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        argv: tuple[str, ...]) -> None:
    # Past the checks of the options and of the machine: the build is where it stops.
    monkeypatch.setattr("wgcable.cli.lab.check_can_build", lambda name, root: None)
    monkeypatch.setattr("wgcable.cli.demo.check_can_build", lambda name, root: None)
    monkeypatch.setattr("wgcable.cli.demo.remove", lambda name, root: (False, []))
    code, _out, err = _run(capsys, *argv, "--root", str(tmp_path))
    assert code == 1
    assert "reached Lab.up" in err
    assert "must be 0 or more" not in err


@pytest.mark.parametrize(("argv", "expected"), [
    ((), "no WireGuard devices\n"),
    (("--json",), "[]\n"),
])
def test_newcomer_show_without_devices_says_so(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        argv: tuple[str, ...], expected: str) -> None:
    monkeypatch.setattr("wgcable.cli.show.Client", lambda: Client([MemoryBackend()]))
    monkeypatch.setattr("wgcable.cli.show.hidden_devices", lambda known: ([], {}))
    assert _run(capsys, "show", *argv) == (0, expected, "")
