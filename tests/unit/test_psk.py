"""The preshared key from a text, as Submariner derives it from CE_IPSEC_PSK: the test
vectors, the settings that give it, the refusals of the keys anyone can compute, and that
the text never shows.

The expected keys were computed outside Python, e.g.
``printf %s 'default psk' | openssl dgst -sha256 -binary | base64``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from wgcable.agent.config import AgentConfig, ConfigError, load_config
from wgcable.cable.types import Endpoint
from wgcable.cable.wireguard import psk
from wgcable.cable.wireguard.config import WireGuardConfig
from wgcable.cable.wireguard.driver import WireGuardDriver
from wgcable.wgctrl import Key, write_key_file

# Submariner's envconfig: the default "default psk" applies only to an unset variable.
UNSET = "iDiacu9g3CLyI2r1jtb22B9Ly/ASOgll2vv9GSFZPJw="  # sha256("default psk")
EMPTY = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="  # sha256("")
TEXT = "Sb3HxGpVX5s0ZVDf2+0cLQ=="  # a text as subctl makes them (base64 of random bytes)
TEXT_KEY = "7atnCjBYxrT+v3mJzTu0ju5FBA1PtLxN9NOJADBBwSs="
UTF8_TEXT, UTF8_KEY = "clé secrète", "O2ms1Jw67jFIsEb01MB+FJ5ViOQ5xkxqidIWQ6Sm8BM="
SPACES_KEY = "Cq19p30u1Zw5bJmnTknzpFJNzby1FjJRsUM9ZAJHrrQ="  # sha256("   "): kept as given

REQUIRED = ["--store", "/srv/store", "--cluster-id", "east", "--cluster-cidr", "10.10.0.0/16",
            "--private-ip", "192.0.2.10", "--hostname", "gw", "--health-check-ip", "none"]


def load(argv: list[str] | None = None, env: dict[str, str] | None = None) -> AgentConfig:
    return load_config([*REQUIRED, *(argv or [])], env or {})


def problems(argv: list[str] | None = None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(argv, env)
    return info.value.problems


def b64(key: Key | None) -> str | None:
    return None if key is None else key.base64()


@pytest.mark.parametrize(("text", "expected"), [
    (None, UNSET), ("", EMPTY), (TEXT, TEXT_KEY), (UTF8_TEXT, UTF8_KEY), ("   ", SPACES_KEY),
], ids=["unset", "empty", "set", "utf8", "spaces"])
def test_psk_vectors_of_submariner_s_derivation(text: str | None, expected: str) -> None:
    assert psk.from_text(text).base64() == expected


def test_psk_from_the_environment_set_and_set_but_empty() -> None:
    assert b64(load(env={"CE_IPSEC_PSK": TEXT}).psk) == TEXT_KEY
    # Set but empty is the empty text (envconfig), not unset: the key anyone can compute,
    # accepted only when allowed.
    assert b64(load(["--allow-default-psk"], {"CE_IPSEC_PSK": ""}).psk) == EMPTY
    assert b64(load(env={"CE_IPSEC_PSK": "   "}).psk) == SPACES_KEY


def test_psk_unset_is_none_unless_the_default_is_allowed() -> None:
    assert load().psk is None  # no preshared key, as before
    # With --allow-default-psk, an unset text is what it is to Submariner: "default psk".
    assert b64(load(["--allow-default-psk"]).psk) == UNSET
    assert b64(load(env={"WGCABLE_ALLOW_DEFAULT_PSK": "true"}).psk) == UNSET


def test_psk_flag_and_yaml_forms(tmp_path: Path) -> None:
    assert b64(load(["--psk", TEXT]).psk) == TEXT_KEY
    assert b64(load(["--psk", UTF8_TEXT]).psk) == UTF8_KEY
    conf = tmp_path / "agent.yaml"
    conf.write_text(f"psk: '{TEXT}'\n")
    assert b64(load(["--config", str(conf)]).psk) == TEXT_KEY
    conf.write_text("psk: ''\nallow_default_psk: true\n")
    assert b64(load(["--config", str(conf)]).psk) == EMPTY
    conf.write_text("psk: null\n")
    assert load(["--config", str(conf)]).psk is None
    # The flag wins over the environment, which wins over the file.
    conf.write_text("psk: from-the-file\n")
    assert b64(load(["--config", str(conf)], {"CE_IPSEC_PSK": TEXT}).psk) == TEXT_KEY
    assert b64(load(["--config", str(conf), "--psk", TEXT],
                    {"CE_IPSEC_PSK": "from-the-env"}).psk) == TEXT_KEY


@pytest.mark.parametrize(("argv", "env", "what"), [
    ([], {"CE_IPSEC_PSK": "default psk"}, "Submariner's default text 'default psk'"),
    ([], {"CE_IPSEC_PSK": ""}, "an empty text"),
    (["--psk", ""], {}, "an empty text"),
    (["--psk", "default psk"], {}, "Submariner's default text"),
], ids=["default-env", "empty-env", "empty-flag", "default-flag"])
def test_psk_default_refused_unless_allowed_naming_the_risk(
        argv: list[str], env: dict[str, str], what: str) -> None:
    [problem] = problems(argv, env)
    assert problem.startswith("--psk")
    assert what in problem
    assert "anyone who knows Submariner's default can compute it" in problem
    assert "--allow-default-psk" in problem
    assert load([*argv, "--allow-default-psk"], env).psk is not None


def test_psk_never_allowed_when_it_is_no_key_at_all() -> None:
    # sha256("default") is refused whatever is allowed (a near miss of the default).
    [problem] = problems(["--psk", "default", "--allow-default-psk"])
    assert "empty or well-known" in problem


def test_psk_and_psk_file_are_exclusive_naming_both(tmp_path: Path) -> None:
    f = tmp_path / "psk"
    write_key_file(f, Key.generate_preshared())
    [problem] = problems(["--psk-file", str(f)], {"CE_IPSEC_PSK": TEXT})
    assert "--psk (CE_IPSEC_PSK)" in problem
    assert "--psk-file" in problem
    assert TEXT not in problem


def test_psk_text_never_shows(tmp_path: Path) -> None:
    secret = "my-very-secret-psk-text"  # noqa: S105 (a test's text)
    cfg = load(["--psk", secret])
    for text in (repr(cfg), str(cfg), repr(cfg.driver_config()), repr(cfg.psk)):
        assert secret not in text
        assert cfg.psk is not None
        assert cfg.psk.base64() not in text
    # Nor in a refusal, nor in the message for a value that is not a text.
    conf = tmp_path / "agent.yaml"
    conf.write_text("psk: 123456789\n")
    [problem] = problems(["--config", str(conf)])
    assert "123456789" not in problem
    assert "not a text" in problem
    f = tmp_path / "psk"
    write_key_file(f, Key.generate_preshared())
    [problem] = problems(["--psk", secret, "--psk-file", str(f)])
    assert secret not in problem


def driver(tmp_path: Path, **cfg: object) -> WireGuardDriver:
    ep = Endpoint(cluster_id="c1", subnets=["10.1.0.0/16"], private_ip="198.18.0.1")
    return WireGuardDriver(ep, WireGuardConfig(state_dir=str(tmp_path / "s"), netns="wgc-none",
                                               **cfg))  # type: ignore[arg-type]


def test_psk_driver_warns_of_the_allowed_default(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    default = psk.from_text(None)
    with pytest.raises(ValueError, match=r"preshared key refused: .*anyone who knows"):
        driver(tmp_path, preshared_key=default)._load_psk()
    caplog.set_level(logging.WARNING)
    assert driver(tmp_path, preshared_key=default, allow_default_psk=True)._load_psk() == default
    assert "anyone who knows Submariner's default can compute it" in caplog.text
    caplog.clear()
    strong = psk.from_text(TEXT)
    assert driver(tmp_path, preshared_key=strong)._load_psk() == strong
    assert caplog.text == ""


def test_psk_driver_refuses_a_file_and_a_key(tmp_path: Path) -> None:
    f = tmp_path / "psk"
    write_key_file(f, Key.generate_preshared())
    with pytest.raises(ValueError, match="give one"):
        driver(tmp_path, preshared_key=psk.from_text(TEXT),
               preshared_key_file=str(f))._load_psk()
    # A file holding Submariner's default key: refused, or accepted when allowed.
    write_key_file(f, psk.from_text(""))
    with pytest.raises(ValueError, match="an empty text"):
        driver(tmp_path, preshared_key_file=str(f))._load_psk()
    assert driver(tmp_path, preshared_key_file=str(f), allow_default_psk=True)._load_psk() \
        == psk.from_text("")
