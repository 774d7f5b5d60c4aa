"""A mistyped or unusable --store is refused at start, and nothing is created for it.

(What a newcomer hit: ``--store kuberentes`` made ./kuberentes/{endpoints,gateways} and ran
alone; ``--store /etc/hostname`` ran, logging "store unavailable" forever.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wgcable.agent.config import load_config
from wgcable.cli.main import main
from wgcable.store import open as store_open
from wgcable.store.base import StoreUnavailableError
from wgcable.store.directory import DirectoryStore
from wgcable.store.open import StoreSpec, check_directory_store, open_store


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def refusal(spec: StoreSpec) -> str:
    with pytest.raises(StoreUnavailableError) as info:
        open_store(spec)
    return str(info.value)


@pytest.mark.parametrize("word", ["kuberentes", "kubernets", "Kubernetes", "k8s"])
def test_validation_newcomer_misspelt_kubernetes_is_refused_with_did_you_mean(
    cwd: Path, word: str,
) -> None:
    message = refusal(StoreSpec(word))
    assert f"--store {word!r}: no such directory; did you mean 'kubernetes'?" in message
    assert "--create-store" in message
    assert list(cwd.iterdir()) == []  # nothing made in the current directory


def test_validation_newcomer_unknown_word_is_refused_suggesting_kubernetes(cwd: Path) -> None:
    message = refusal(StoreSpec("mystore"))
    assert "--store 'mystore': no such directory" in message
    assert "did you mean" not in message
    assert "for a broker API server, say --store kubernetes" in message
    assert not (cwd / "mystore").exists()


def test_validation_a_file_is_refused_at_start(tmp_path: Path) -> None:
    file = tmp_path / "hostname"
    file.write_text("gw1\n")
    assert f"--store {str(file)!r} is not a directory" in refusal(StoreSpec(str(file)))
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "nowhere")
    assert "is not a directory" in refusal(StoreSpec(str(dangling)))
    assert not (tmp_path / "nowhere").exists()


def test_validation_an_existing_directory_is_used_as_it_is(cwd: Path) -> None:
    (cwd / "store").mkdir()
    assert isinstance(open_store(StoreSpec("store")), DirectoryStore)
    assert list((cwd / "store").iterdir()) == []  # its subdirectories come on first use


def test_validation_create_store_creates_a_missing_directory(cwd: Path) -> None:
    store = open_store(StoreSpec("new/store", create=True))
    assert isinstance(store, DirectoryStore)
    assert (cwd / "new" / "store").is_dir()


def test_validation_absolute_path_under_a_documented_parent_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    parent = tmp_path / "var-lib-wgcable"
    monkeypatch.setattr(store_open, "AUTO_CREATE_PARENTS", (parent,))
    open_store(StoreSpec(str(parent / "store")))
    assert (parent / "store").is_dir()
    # Not the parent itself, not a way out of it, not a relative path.
    escape = f"{parent}/../elsewhere"
    assert "no such directory" in refusal(StoreSpec(escape))
    assert not (tmp_path / "elsewhere").exists()
    os.chdir(tmp_path)
    assert "no such directory" in refusal(StoreSpec("var-lib-wgcable/other"))
    assert not (parent / "other").exists()


def test_validation_cleanup_creates_no_store(tmp_path: Path) -> None:
    spec = StoreSpec(str(tmp_path / "missing"), create=True)
    check_directory_store(spec, create=False)
    assert not (tmp_path / "missing").exists()
    with pytest.raises(StoreUnavailableError, match="no such directory"):
        check_directory_store(StoreSpec(str(tmp_path / "missing")), create=False)


def test_validation_documented_parents_are_the_agent_own() -> None:
    documented = (Path("/var/lib/wgcable"), Path("/run/wgcable"))  # README, config's doc
    assert documented == store_open.AUTO_CREATE_PARENTS


def test_validation_newcomer_agent_refuses_a_mistyped_store_before_anything(
    cwd: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["agent", "--store", "kuberentes", "--cluster-id", "east",
                 "--cluster-cidr", "10.1.0.0/16", "--private-ip", "198.18.0.1",
                 "--health-check-ip", "none", "--state-dir", str(cwd / "state")])
    err = capsys.readouterr().err
    assert code == 1
    assert "wgcable agent: --store 'kuberentes': no such directory; did you mean " \
        "'kubernetes'?" in err
    assert list(cwd.iterdir()) == []  # no store, no state directory, no key


def test_validation_store_timeout_and_create_store_settings() -> None:
    base = ["--store", "/s", "--cluster-id", "east", "--cluster-cidr", "10.0.0.0/8",
            "--private-ip", "198.18.0.1", "--health-check-ip", "none"]
    cfg = load_config(base, {})
    assert (cfg.store_timeout, cfg.create_store) == (10.0, False)
    cfg = load_config([*base, "--store-timeout", "2.5", "--create-store"], {})
    assert (cfg.store_spec().timeout, cfg.store_spec().create) == (2.5, True)
    cfg = load_config(base, {"WGCABLE_STORE_TIMEOUT": "3", "WGCABLE_CREATE_STORE": "yes"})
    assert (cfg.store_timeout, cfg.create_store) == (3.0, True)
    with pytest.raises(ValueError, match=r"store-timeout.*not a positive number"):
        load_config([*base, "--store-timeout", "0"], {})


def test_validation_readers_add_no_directories_to_the_path_they_are_given(cwd: Path) -> None:
    """`wgcable graph --store /etc` (and diagnose, cleanup) read through open_store with
    create=False: a reading made /etc/endpoints and /etc/gateways before."""
    (cwd / "elsewhere").mkdir()
    store = open_store(StoreSpec("elsewhere"), create=False)
    with pytest.raises(StoreUnavailableError, match="endpoints is missing"):
        store.snapshot()
    assert store.read_statuses() == {}
    assert list((cwd / "elsewhere").iterdir()) == []
    agent_store = open_store(StoreSpec("elsewhere"))  # the agent's: made on first use
    assert agent_store.snapshot().endpoints == {}
    assert sorted(p.name for p in (cwd / "elsewhere").iterdir()) == ["endpoints", "gateways"]
