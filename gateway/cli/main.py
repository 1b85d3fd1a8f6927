"""``cpmictl``, the operator command line: argument parsing and dispatch only.

Each command group lives in its own module under ``gateway.cli`` and exposes

    def add_parser(subparsers: Subparsers) -> None

which adds its sub-command(s) and sets ``handler`` -- a
``Callable[[argparse.Namespace], int]`` returning the exit code -- with
``set_defaults``. To add a group, write the module and list it in
``COMMAND_GROUPS``.

Exit codes: 0 success, 1 the command failed (missing or bad file, refused
overwrite), 2 usage or input error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Protocol

from gateway.cli import apitoken, config, conformance, dialects, init, keys, log, lot, passwd

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["COMMAND_GROUPS", "CommandGroup", "Handler", "build_parser", "main"]

DISTRIBUTION = "cpmi-gateway"

Handler = Callable[[argparse.Namespace], int]


class CommandGroup(Protocol):
    """A module that adds one or more sub-commands to ``cpmictl``."""

    def add_parser(self, subparsers: Subparsers) -> None:
        """Add the group's sub-commands, each with a ``handler`` default."""


COMMAND_GROUPS: Sequence[CommandGroup] = (
    init,
    passwd,
    keys,
    apitoken,
    log,
    lot,
    conformance,
    dialects,
    config,
)


def distribution_version() -> str:
    """The installed cpmi-gateway version, or "unknown" when not installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``cpmictl`` argument parser with every command group added."""
    parser = argparse.ArgumentParser(
        prog="cpmictl",
        description="Operator tools for the cpmi-gateway.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {distribution_version()}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``cpmictl`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser()
    if not argv:
        parser.print_usage(sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        # argparse exits for --help, --version and usage errors; return instead.
        return _exit_code(e.code)
    handler: Handler = args.handler
    return handler(args)


def _exit_code(code: str | int | None) -> int:
    """The integer exit status ``sys.exit(code)`` would give."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
