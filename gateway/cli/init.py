"""``cpmictl init DIR``: a ready gateway directory, from the example configuration the wheel ships.

DIR gets ``gateway.toml`` (the example's ports and comments, its journal and
signing key inside DIR, absolute, so the gateway runs from any working
directory), the signing key, a new admin API token and a first lot with a new
password. The token and the password are printed once; the configuration keeps
only their hashes.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.apitoken import new_token, token_sha256
from gateway.cli.passwd import hash_password
from gateway.config import ROLES, ConfigError, load
from gateway.keys import KeyFileError, load_or_create_signing_key, public_key_b64

if TYPE_CHECKING:
    from gateway.cli.main import Subparsers

__all__ = ["add_parser", "example_config", "run", "write_config"]

CONFIG_NAME = "gateway.toml"
KEY_NAME = "gateway.key"
JOURNAL_NAME = "journal"


def add_parser(subparsers: Subparsers) -> None:
    """Add ``cpmictl init``."""
    parser = subparsers.add_parser(
        "init",
        help="make a ready gateway directory: configuration, key, admin API token, first lot",
        description=(
            "Write DIR/gateway.toml from the example configuration shipped with the gateway "
            "(its ports; the journal and the signing key inside DIR), create the signing key, "
            "and print a new admin API token and the first lot's new password, once. Then: "
            "twistd -n cpmi-gateway --config DIR/gateway.toml, from any directory."
        ),
    )
    parser.add_argument(
        "directory", metavar="DIR", help="the gateway's directory; made if missing, must hold no gateway.toml"
    )
    parser.set_defaults(handler=run)


def example_config() -> str:
    """The example configuration shipped in the package (conf/gateway.toml of the sources)."""
    return (resources.files("gateway") / "example.toml").read_text(encoding="utf-8")


def _replace(text: str, pattern: str, replacement: str) -> str:
    """`text` with the one line matching `pattern` replaced; ValueError when it is not there once."""
    found = re.findall(pattern, text, flags=re.MULTILINE)
    if len(found) != 1:
        raise ValueError(f"the example configuration has {len(found)} lines matching {pattern!r}, not 1")
    return re.sub(pattern, lambda _: replacement, text, flags=re.MULTILINE)


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=False)


def write_config(example: str, directory: Path, token: str, password_hash: str) -> str:
    """The example configuration made ready for `directory`: paths, admin token hash, lot password."""
    text = _replace(
        example,
        r'^signing_key = "[^"]*"',
        f"signing_key = {_toml_string(str(directory / KEY_NAME))}",
    )
    text = _replace(text, r'^path = "[^"]*"', f"path = {_toml_string(str(directory / JOURNAL_NAME))}")
    text = _replace(
        text,
        r'^api_token_file = "[^"]*".*$',
        'api_token = ""  # the admin\'s is [[api_client]] "admin", below',
    )
    text = _replace(text, r'^password = "\$argon2id\$[^"]*"', f"password = {_toml_string(password_hash)}")
    text = text.replace(
        '# A demo lot. Its password is "demo-password" (hash made with `cpmictl passwd`).\n'
        "# Replace it before connecting a real lot.\n",
        "# The first lot; its password was printed once by cpmictl init (a new one: cpmictl passwd).\n",
    )
    roles = ", ".join(_toml_string(role) for role in ROLES)
    return (
        text.rstrip("\n")
        + "\n\n# The admin's command API token (printed once by cpmictl init; only its SHA-256 is kept).\n"
        + f'[[api_client]]\nname = "admin"\ntoken_sha256 = "{token_sha256(token)}"\nroles = [{roles}]\n'
    )


def run(args: argparse.Namespace) -> int:
    """Make the directory; print where things are, the API token and the lot's password."""
    directory = Path(args.directory).absolute()
    config_path = directory / CONFIG_NAME
    if config_path.exists():
        print(f"cpmictl init: {config_path} exists; not overwritten", file=sys.stderr)
        return 1
    token = new_token()
    password = secrets.token_urlsafe(12)
    try:
        text = write_config(example_config(), directory, token, hash_password(password))
    except (OSError, ValueError) as error:
        print(f"cpmictl init: cannot read the example configuration: {error}", file=sys.stderr)
        return 1
    key_path = directory / KEY_NAME
    key_existed = key_path.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        key, _ = load_or_create_signing_key(str(key_path))
        with open(config_path, "x", encoding="utf-8") as file:
            file.write(text)
        settings = load(str(config_path))
    except (OSError, KeyFileError, ConfigError) as error:
        if not key_existed:
            key_path.unlink(missing_ok=True)
        config_path.unlink(missing_ok=True)
        print(f"cpmictl init: {error}", file=sys.stderr)
        return 1
    lot = settings.lots[0]
    print(f"configuration: {config_path}")
    print(f"signing key: {key_path} (public key {public_key_b64(key)})")
    print(f"journal: {settings.journal.path} (made at first start)")
    print(f"first lot: park {lot.park_code}, user {lot.username}, password {password}")
    print(f"api token: {token}")
    print(f"start it: twistd -n cpmi-gateway --config {config_path}")
    return 0
