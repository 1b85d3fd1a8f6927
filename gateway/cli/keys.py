"""``cpmictl keygen`` and ``cpmictl pubkey``: the gateway's Ed25519 key file.

See :mod:`gateway.keys` for the file format.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from nacl.signing import SigningKey

from gateway.keys import KeyFileError, load_signing_key, public_key_b64, write_signing_key

if TYPE_CHECKING:
    from gateway.cli.command import Subparsers

__all__ = ["add_parser", "run_keygen", "run_pubkey"]


def add_parser(subparsers: Subparsers) -> None:
    """Add ``cpmictl keygen PATH`` and ``cpmictl pubkey PATH``."""
    keygen = subparsers.add_parser(
        "keygen",
        help="write a new Ed25519 signing key and print its public key",
        description=(
            "Write a new Ed25519 signing key to PATH (mode 0600; an existing file is "
            "never overwritten) and print its public key, base64."
        ),
    )
    keygen.add_argument("path", metavar="PATH", help="the key file to create")
    keygen.set_defaults(handler=run_keygen)

    pubkey = subparsers.add_parser(
        "pubkey",
        help="print the public key of a signing key file",
        description="Print the public key, base64, of the Ed25519 signing key at PATH.",
    )
    pubkey.add_argument("path", metavar="PATH", help="the key file to read")
    pubkey.set_defaults(handler=run_pubkey)


def run_keygen(args: argparse.Namespace) -> int:
    """Create the key file ``args.path`` and print its public key."""
    key = SigningKey.generate()
    try:
        write_signing_key(args.path, key)
    except KeyFileError as e:
        print(f"cpmictl keygen: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(public_key_b64(key) + "\n")
    return 0


def run_pubkey(args: argparse.Namespace) -> int:
    """Print the public key of the key file ``args.path``."""
    try:
        key = load_signing_key(args.path)
    except KeyFileError as e:
        print(f"cpmictl pubkey: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(public_key_b64(key) + "\n")
    return 0
