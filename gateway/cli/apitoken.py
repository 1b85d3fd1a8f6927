"""``cpmictl apitoken``: make a token for an ``[[api_client]]`` of the command API.

Prints a new random token (``secrets.token_urlsafe(32)``, 256 bits) and its hex
SHA-256, then a ready ``[[api_client]]`` entry. The gateway keeps only the
SHA-256 in its configuration; the token itself goes to the client and is shown
only this once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sys
from typing import TYPE_CHECKING

from gateway.config import ROLES

if TYPE_CHECKING:
    from gateway.cli.command import Subparsers

__all__ = ["add_parser", "new_token", "run", "token_sha256"]


def add_parser(subparsers: Subparsers) -> None:
    """Add ``cpmictl apitoken``."""
    parser = subparsers.add_parser(
        "apitoken",
        help="make a command API token and its SHA-256 for [[api_client]]",
        description=(
            "Print a new random API token, its hex SHA-256 and a ready [[api_client]] "
            "entry for the configuration. Give the token to the client; keep only "
            "the SHA-256 in the configuration."
        ),
    )
    parser.add_argument("--name", default="client", help="the entry's name (default: client)")
    parser.add_argument(
        "--role",
        dest="roles",
        action="append",
        choices=ROLES,
        help="a role of the entry; repeat for several (default: read)",
    )
    parser.set_defaults(handler=run)


def new_token() -> str:
    """A new random token: 32 random bytes, URL-safe base64."""
    return secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    """The hex SHA-256 of ``token`` (UTF-8), as ``[[api_client]] token_sha256`` holds it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def run(args: argparse.Namespace) -> int:
    """Print a new token, its SHA-256 and an ``[[api_client]]`` entry."""
    name: str = getattr(args, "name", "client") or ""
    if not name:
        print("cpmictl apitoken: --name must not be empty", file=sys.stderr)
        return 2
    roles: list[str] = list(dict.fromkeys(getattr(args, "roles", None) or ["read"]))
    token = new_token()
    digest = token_sha256(token)
    # JSON strings are valid TOML basic strings for any name (quotes, backslashes, non-ASCII).
    entry = "\n".join(
        [
            "[[api_client]]",
            f"name = {json.dumps(name, ensure_ascii=False)}",
            f'token_sha256 = "{digest}"',
            f"roles = [{', '.join(json.dumps(role) for role in roles)}]",
        ]
    )
    sys.stdout.write(f"token: {token}\ntoken_sha256: {digest}\n\n{entry}\n")
    return 0
