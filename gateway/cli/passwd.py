"""``cpmictl passwd``: hash a lot password for the ``[[lot]] password`` key.

The password is read from the first line of standard input (only the line
ending is removed), or prompted for twice on a terminal, and its Argon2id hash
(``$argon2id$...``, libsodium's interactive limits) is printed. The password
itself is never printed.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING, TextIO

import nacl.pwhash

if TYPE_CHECKING:
    from gateway.cli.command import Subparsers

__all__ = ["add_parser", "hash_password", "read_first_line", "run"]


def add_parser(subparsers: Subparsers) -> None:
    """Add ``cpmictl passwd``."""
    parser = subparsers.add_parser(
        "passwd",
        help="hash a lot password for the config",
        description=(
            "Read a password from the first line of standard input (or prompt on a "
            "terminal) and print its $argon2id$ hash for a [[lot]] password key."
        ),
    )
    parser.set_defaults(handler=run)


def hash_password(password: str) -> str:
    """The ``$argon2id$...`` hash of ``password`` (UTF-8) with the interactive limits."""
    hashed: bytes = nacl.pwhash.argon2id.str(
        password.encode("utf-8"),
        opslimit=nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE,
        memlimit=nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE,
    )
    return hashed.decode("ascii")


def read_first_line(stream: TextIO) -> str:
    """The first line of ``stream`` without its ``\\n`` or ``\\r\\n`` ending."""
    line = stream.readline()
    if line.endswith("\r\n"):
        return line[:-2]
    if line.endswith("\n"):
        return line[:-1]
    return line


def run(args: argparse.Namespace) -> int:
    """Print the hash of the password given on standard input or the terminal."""
    stdin = sys.stdin
    try:
        if stdin is not None and stdin.isatty():
            first = getpass.getpass("Password: ", stream=sys.stderr)
            if first and getpass.getpass("Again: ", stream=sys.stderr) != first:
                return _fail("the passwords do not match")
            password = first
        else:
            password = "" if stdin is None else read_first_line(stdin)
    except EOFError:
        password = ""
    except UnicodeDecodeError:
        return _fail("the password is not valid text in the input encoding")
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    if not password:
        return _fail("no password: give it on the first line of standard input")
    sys.stdout.write(hash_password(password) + "\n")
    return 0


def _fail(message: str) -> int:
    """Report an input error on standard error; exit code 2."""
    print(f"cpmictl passwd: {message}", file=sys.stderr)
    return 2
