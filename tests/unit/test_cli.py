"""The `wgcable` command: key tools, `show` over a memory backend, and human formats."""

from __future__ import annotations

import io
import ipaddress
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from wgcable.cli import format as fmt
from wgcable.cli.main import main
from wgcable.wgctrl.client import Client
from wgcable.wgctrl.key import Key
from wgcable.wgctrl.memory import MemoryBackend
from wgcable.wgctrl.types import Config, PeerConfig, UDPAddr

ALICE_PRIVATE = Key.from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = Key.from_hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


@pytest.fixture
def mp(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    return monkeypatch


def run(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *argv: str,
    stdin: str = "",
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- keys ---------------------------------------------------------------------------------


def test_genkey_then_pubkey(capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch) -> None:
    code, private, err = run(capsys, mp, "genkey")
    assert (code, err) == (0, "")
    assert re.fullmatch(r"[A-Za-z0-9+/]{43}=\n", private)
    key = Key.from_base64(private)
    assert key.clamped() == key  # printed clamped, as `wg genkey` does

    code, public, err = run(capsys, mp, "pubkey", stdin=private)
    assert (code, err) == (0, "")
    assert public == key.public_key().base64() + "\n"
    assert public != private


def test_genkey_twice_differs(capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch) -> None:
    assert run(capsys, mp, "genkey")[1] != run(capsys, mp, "genkey")[1]


def test_genpsk(capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch) -> None:
    code, out, _ = run(capsys, mp, "genpsk")
    assert code == 0
    assert len(Key.from_base64(out).raw) == 32


def test_pubkey_rfc7748(capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch) -> None:
    code, out, _ = run(capsys, mp, "pubkey", stdin=f"  {ALICE_PRIVATE.base64()}\n\n")
    assert code == 0
    assert out == ALICE_PUBLIC.base64() + "\n"


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "hello there, not a key\n",
        ALICE_PRIVATE.base64()[:-3] + "\n",
        ALICE_PRIVATE.hex() + "\n",
        ALICE_PRIVATE.base64()[:20] + "!" + ALICE_PRIVATE.base64()[21:],
    ],
    ids=["empty", "text", "short", "hex", "bad-char"],
)
def test_pubkey_of_garbage(
    capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch, garbage: str
) -> None:
    code, out, err = run(capsys, mp, "pubkey", stdin=garbage)
    assert code == 1
    assert out == ""
    assert err.startswith("wgcable pubkey: stdin: invalid key")
    for secret in (garbage.strip(), ALICE_PRIVATE.base64()[:12], ALICE_PRIVATE.hex()[:12]):
        if len(secret) >= 8:
            assert secret not in err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch) -> None:
    code, out, _ = run(capsys, mp)
    assert code == 0
    assert "genkey" in out
    assert "show" in out


# --- show ---------------------------------------------------------------------------------

PEER_A = Key(b"\xaa" * 32)
PEER_B = Key(b"\xbb" * 32)
PSK = Key(b"\x42" * 32)


@pytest.fixture
def memory(monkeypatch: pytest.MonkeyPatch) -> MemoryBackend:
    mem = MemoryBackend()
    mem.add("wg0")
    mem.configure(
        "wg0",
        Config(
            private_key=ALICE_PRIVATE,
            listen_port=51820,
            fwmark=0x1234,
            peers=[
                PeerConfig(
                    PEER_A,
                    preshared_key=PSK,
                    endpoint=UDPAddr.parse("[2001:db8::1]:4500"),
                    persistent_keepalive=25,
                    allowed_ips=[
                        ipaddress.ip_network("10.0.0.0/24"),
                        ipaddress.ip_network("fd00::/64"),
                    ],
                ),
                PeerConfig(PEER_B),
            ],
        ),
    )
    a = mem.devices["wg0"].peers[0]
    a.last_handshake = datetime.now(UTC) - timedelta(seconds=90)
    a.rx_bytes, a.tx_bytes = 1536, 5 * 1024**3
    mem.add("wg1")
    monkeypatch.setattr("wgcable.cli.show.Client", lambda: Client([mem]))
    # Only the memory backend's devices: not whatever links this machine has.
    monkeypatch.setattr("wgcable.cli.show.hidden_devices", lambda known: ([], {}))
    return mem


SECRETS = [
    ALICE_PRIVATE.base64(),
    ALICE_PRIVATE.hex(),
    ALICE_PRIVATE.clamped().base64(),
    ALICE_PRIVATE.clamped().hex(),
    PSK.base64(),
    PSK.hex(),
]


def assert_no_secrets(text: str) -> None:
    for s in SECRETS:
        assert s not in text
        assert s[:16] not in text


@pytest.mark.usefixtures("memory")
def test_show_json_all(capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch) -> None:
    code, out, err = run(capsys, mp, "show", "--json")
    assert (code, err) == (0, "")
    assert_no_secrets(out)
    doc = json.loads(out)
    assert isinstance(doc, list)
    assert [d["name"] for d in doc] == ["wg0", "wg1"]
    wg0, wg1 = doc
    assert set(wg0) == {"name", "backend", "public_key", "listen_port", "fwmark", "peers"}
    assert wg0["backend"] == "userspace"
    assert wg0["public_key"] == ALICE_PUBLIC.base64()
    assert (wg0["listen_port"], wg0["fwmark"]) == (51820, 0x1234)
    a, b = wg0["peers"]
    assert set(a) == {
        "public_key",
        "preshared_key",
        "endpoint",
        "allowed_ips",
        "latest_handshake",
        "handshake_age_seconds",
        "rx_bytes",
        "tx_bytes",
        "persistent_keepalive",
    }
    assert a["public_key"] == PEER_A.base64()
    assert a["preshared_key"] is True  # whether set, never the key
    assert a["endpoint"] == "[2001:db8::1]:4500"
    assert a["allowed_ips"] == ["10.0.0.0/24", "fd00::/64"]
    assert isinstance(a["latest_handshake"], float)
    assert 89 <= a["handshake_age_seconds"] < 120
    assert (a["rx_bytes"], a["tx_bytes"], a["persistent_keepalive"]) == (1536, 5 * 1024**3, 25)
    assert b == {
        "public_key": PEER_B.base64(),
        "preshared_key": False,
        "endpoint": None,
        "allowed_ips": [],
        "latest_handshake": None,
        "handshake_age_seconds": None,
        "rx_bytes": 0,
        "tx_bytes": 0,
        "persistent_keepalive": 0,
    }
    assert wg1 == {
        "name": "wg1",
        "backend": "userspace",
        "public_key": None,
        "listen_port": 0,
        "fwmark": 0,
        "peers": [],
    }


@pytest.mark.usefixtures("memory")
def test_show_json_one(capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch) -> None:
    code, out, _ = run(capsys, mp, "show", "wg0", "--json")
    assert code == 0
    assert_no_secrets(out)
    doc = json.loads(out)
    assert isinstance(doc, dict)
    assert doc["name"] == "wg0"
    assert len(doc["peers"]) == 2


@pytest.mark.usefixtures("memory")
def test_show_text(capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch) -> None:
    code, out, err = run(capsys, mp, "show")
    assert (code, err) == (0, "")
    assert_no_secrets(out)
    assert "interface: wg0" in out
    assert "interface: wg1" in out
    assert f"public key: {ALICE_PUBLIC.base64()}" in out
    assert "private key: (hidden)" in out
    assert "preshared key: (hidden)" in out
    assert "listening port: 51820" in out
    assert "fwmark: 0x1234" in out
    assert f"peer: {PEER_A.base64()}" in out
    assert "endpoint: [2001:db8::1]:4500" in out
    assert "allowed ips: 10.0.0.0/24, fd00::/64" in out
    assert "allowed ips: (none)" in out
    assert re.search(r"latest handshake: 1 minute, \d+ seconds? ago", out)
    assert "transfer: 1.50 KiB received, 5.00 GiB sent" in out
    assert "persistent keepalive: every 25 seconds" in out
    # The peer with a handshake comes first, as in wg(8).
    assert out.index(PEER_A.base64()) < out.index(PEER_B.base64())


@pytest.mark.usefixtures("memory")
def test_show_missing_device(capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch) -> None:
    code, out, err = run(capsys, mp, "show", "wg9")
    assert code == 1
    assert out == ""
    assert err.startswith("wgcable show: ")
    assert "'wg9'" in err


# --- human formats ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (1536, "1.50 KiB"),
        (1024**2 - 1, "1024.00 KiB"),
        (1024**2, "1.00 MiB"),
        (3 * 1024**3 + 1024**3 // 4, "3.25 GiB"),
        (1024**4, "1.00 TiB"),
        (2048 * 1024**4, "2048.00 TiB"),
    ],
)
def test_bytes_human(n: int, text: str) -> None:
    assert fmt.bytes_human(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-3, "Now"),
        (0, "Now"),
        (0.9, "Now"),
        (1, "1 second ago"),
        (1.7, "1 second ago"),
        (2, "2 seconds ago"),
        (59, "59 seconds ago"),
        (60, "1 minute ago"),
        (61, "1 minute, 1 second ago"),
        (125, "2 minutes, 5 seconds ago"),
        (3600, "1 hour ago"),
        (3661, "1 hour, 1 minute, 1 second ago"),
        (86400, "1 day ago"),
        (2 * 86400 + 3 * 3600 + 4, "2 days, 3 hours, 4 seconds ago"),
        (400 * 86400, "400 days ago"),
    ],
)
def test_age_human(seconds: float, text: str) -> None:
    assert fmt.age_human(seconds) == text


def test_agent_with_bad_settings_exits_2_with_one_line_per_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("SUBMARINER_CLUSTERID", "WGCABLE_STORE", "WGCABLE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    state = tmp_path / "state"
    code = main(["agent", "--cluster-cidr", "10.0.0.0/33", "--port", "99999",
                 "--state-dir", str(state)])
    assert code == 2
    err = capsys.readouterr().err.splitlines()
    assert "wgcable agent: --cluster-cidr: '10.0.0.0/33' is not a CIDR" in err
    assert "wgcable agent: --port: '99999' is out of range (1-65535)" in err
    assert any(line.startswith("wgcable agent: --cluster-id: required") for line in err)
    assert not state.exists()  # nothing is created


def test_a_command_imports_only_its_own_module() -> None:
    """`wgcable agent` must not pay for the lab's imports (start-up under emulation)."""
    import subprocess
    import sys

    probe = ("import sys; from wgcable.cli.main import build_parser; build_parser({argv}); "
             "print(sorted(m for m in sys.modules if m.startswith('wgcable.cli.')))")
    def loaded(argv: list[str]) -> list[str]:
        out = subprocess.run([sys.executable, "-c", probe.format(argv=argv)], check=True,
                             capture_output=True, text=True).stdout
        return list(json.loads(out.replace("'", '"')))

    assert "wgcable.cli.lab" not in loaded(["agent", "--help"])
    assert "wgcable.cli.demo" not in loaded(["agent"])
    assert {"wgcable.cli.lab", "wgcable.cli.agent", "wgcable.cli.show"} <= set(loaded([]))


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("genkey", "genpsk", "pubkey", "show", "agent", "cleanup", "handover",
                    "rotate-key", "lab", "demo"):
        assert command in out


@pytest.mark.parametrize(("argv", "prog"), [
    (["agent", "--bogus-flag"], "wgcable agent"),
    (["cleanup", "--bogus-flag"], "wgcable cleanup"),
    (["show", "--bogus-flag"], "wgcable show"),
    (["lab", "up", "--bogus-flag"], "wgcable lab up"),
])
def test_newcomer_bad_flag_prints_the_commands_usage(
    capsys: pytest.CaptureFixture[str], argv: list[str], prog: str
) -> None:
    """A mistyped flag must show the usage of the command it was given to, not the top
    level's (which lists no flag of the command)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {prog} ")
    assert f"{prog}: error: unrecognized arguments: --bogus-flag" in err
    assert "usage: wgcable [-h]" not in err


def test_newcomer_bad_top_level_flag_still_prints_the_top_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--bogus-flag"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: wgcable [-h]")
    assert "wgcable: error: unrecognized arguments: --bogus-flag" in err
