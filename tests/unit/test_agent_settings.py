"""The agent's settings declarations, and what is generated from them: the flags, --help,
the docstring's and the README's tables."""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from wgcable.agent import config as agent_config
from wgcable.agent import settings_table
from wgcable.agent.config import AgentConfig, load_config
from wgcable.agent.settings import (
    CONFIG_ENV,
    SETTINGS,
    Setting,
    add_arguments,
    markdown_table,
    text_table,
)
from wgcable.agent.values import DETECT, REQUIRED
from wgcable.cli.main import main

README = Path(__file__).resolve().parents[2] / "README.md"
REQUIRED_ARGV = ["--store", "/s", "--cluster-id", "east", "--cluster-cidr", "10.0.0.0/8",
                 "--private-ip", "192.0.2.1", "--hostname", "gw"]


def _agent_help() -> str:
    parser = argparse.ArgumentParser(prog="wgcable agent")
    add_arguments(parser)
    return parser.format_help()


def test_settings_readme_table_is_the_generated_one() -> None:
    # On failure: python -m wgcable.agent.settings_table --write README.md
    assert settings_table.table_in(README.read_text(encoding="utf-8")) == markdown_table()


def test_settings_every_config_field_is_declared() -> None:
    declared = {s.name for s in SETTINGS}
    fields = {f.name for f in dataclasses.fields(AgentConfig)}
    assert fields - declared == {"config_file"}  # the one field that is not a setting
    assert declared <= fields


def test_settings_flags_variables_and_keys_are_unique() -> None:
    for attr in ("flag", "env", "key"):
        values = [getattr(s, attr) for s in SETTINGS]
        assert len(values) == len(set(values)), attr
    assert CONFIG_ENV not in {s.env for s in SETTINGS}
    assert "config" not in {s.key for s in SETTINGS}


def test_settings_yaml_key_is_the_flag_in_snake_case() -> None:
    # What the --help epilog and users rely on; a declaration may override it, none does.
    for s in SETTINGS:
        assert s.key == s.flag.removeprefix("--").replace("-", "_"), s.flag


@pytest.mark.parametrize("table", [markdown_table, text_table, _agent_help],
                         ids=["readme", "docstring", "help"])
def test_settings_every_table_names_every_setting(table: Callable[[], str]) -> None:
    text = table()
    for s in SETTINGS:
        assert re.search(rf"{re.escape(s.flag)}\b", text), s.flag
        assert re.search(rf"\b{s.env}\b", text), s.env
        assert re.search(rf"\b{s.key}\b", text), s.key


def test_settings_docstring_carries_the_generated_table() -> None:
    doc = agent_config.__doc__ or ""
    assert doc.endswith(text_table())
    assert "Loading never creates anything" in doc  # the prose is kept


def test_settings_help_shows_each_default_variable_and_key() -> None:
    text = " ".join(_agent_help().split())  # argparse wraps lines
    for s in SETTINGS:
        default = "(required)" if s.default is REQUIRED else f"(default: {s.shows})"
        assert f"{s.help} {default} env {s.env}, YAML {s.key}" in text, s.flag
    assert f"YAML settings file env {CONFIG_ENV}" in text


def test_settings_agent_help_is_the_agents(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["agent", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: wgcable agent ")
    assert "cable driver:" in out
    assert "env SUBMARINER_CLUSTERID, YAML cluster_id" in out


def test_settings_shown_defaults_are_the_defaults() -> None:
    # A declared default is what loading gives when nothing is set, and what the tables say.
    cfg = load_config(REQUIRED_ARGV, {}, detect_ip=lambda: None,
                      detect_health_check_ip=lambda _: None)
    for s in SETTINGS:
        if s.default in (REQUIRED, DETECT):
            continue
        assert getattr(cfg, s.name) == s.default, s.name
        if isinstance(s.default, int | str) and not isinstance(s.default, bool):
            assert s.shows == str(s.default), s.name


def test_settings_default_lists_are_not_shared() -> None:
    # AgentConfig is frozen but a list is not: one config's list must not be another's.
    first = load_config(REQUIRED_ARGV, {})
    second = load_config(REQUIRED_ARGV, {})
    assert first.service_cidrs == second.service_cidrs == []
    assert first.service_cidrs is not second.service_cidrs
    assert first.protected_cidrs is not second.protected_cidrs


@pytest.mark.parametrize("s", [s for s in SETTINGS if s.kind == "switch"], ids=lambda s: s.flag)
def test_settings_every_switch_has_a_no_form(s: Setting) -> None:
    no_flag = "--no-" + s.flag.removeprefix("--")
    assert getattr(load_config([*REQUIRED_ARGV, no_flag], {}), s.name) is False
    assert getattr(load_config([*REQUIRED_ARGV, s.flag], {}), s.name) is True


@pytest.mark.parametrize("s", [s for s in SETTINGS if s.kind == "list"], ids=lambda s: s.flag)
def test_settings_every_list_repeats_and_splits(s: Setting) -> None:
    # The cluster CIDR from the environment, so that a --cluster-cidr flag replaces it; the
    # lists lie outside it, as service CIDRs must.
    argv = [*REQUIRED_ARGV[:4], *REQUIRED_ARGV[6:],
            s.flag, "172.16.1.0/24,172.16.2.0/24", s.flag, "172.16.3.0/24"]
    cfg = load_config(argv, {"SUBMARINER_CLUSTERCIDR": "10.0.0.0/8"})
    assert [str(n) for n in getattr(cfg, s.name)] == \
        ["172.16.1.0/24", "172.16.2.0/24", "172.16.3.0/24"]


# --- The README table's generator ---


def test_settings_table_write_replaces_only_the_table(tmp_path: Path) -> None:
    doc = tmp_path / "README.md"
    doc.write_text(f"before\n{settings_table.BEGIN}\nstale | table\n{settings_table.END}\n"
                   "after\n")
    assert settings_table.main(["--write", str(doc)]) == 0
    assert doc.read_text() == (f"before\n{settings_table.BEGIN}\n{markdown_table()}"
                               f"{settings_table.END}\nafter\n")


def test_settings_table_write_without_markers_fails(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "README.md"
    doc.write_text("no table here\n")
    assert settings_table.main(["--write", str(doc)]) == 1
    assert doc.read_text() == "no table here\n"
    assert "no settings table markers" in capsys.readouterr().err


def test_settings_table_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert settings_table.main([]) == 0
    assert capsys.readouterr().out == markdown_table()
