"""`wgcable genkey` and `wgcable pubkey`: interchangeable with `wg genkey` / `wg pubkey`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from wgcable.wgctrl.key import Key


def register(sub: Any) -> None:
    p = sub.add_parser("genkey", help="print a new private key (base64)")
    p.set_defaults(handler=genkey)
    p = sub.add_parser("genpsk", help="print a new preshared key (base64)")
    p.set_defaults(handler=genpsk)
    p = sub.add_parser("pubkey", help="read a private key on stdin, print its public key")
    p.set_defaults(handler=pubkey)


def genkey(_: argparse.Namespace) -> int:
    print(Key.generate().base64())
    return 0


def genpsk(_: argparse.Namespace) -> int:
    print(Key.generate_preshared().base64())
    return 0


def pubkey(_: argparse.Namespace) -> int:
    # wg pubkey tolerates surrounding whitespace and reads at most one key.
    private = Key.from_base64(sys.stdin.read(), "stdin")
    print(private.public_key().base64())
    return 0
