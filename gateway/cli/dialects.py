"""``cpmictl dialects``: the dialects this installation can speak, and where each comes from.

A vendor checks with it that their package's dialect is discovered; an operator
sees which `[listen]` keys a dialect needs before giving a lot ``dialect = ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from gateway.dialects import DialectConflict, installed

if TYPE_CHECKING:
    from gateway.cli.command import Subparsers


def add_parser(subparsers: Subparsers) -> None:
    """Add ``dialects``."""
    parser = subparsers.add_parser(
        "dialects",
        help="list the installed dialects (lot software the gateway can speak to)",
        description="List the installed dialect plugins: name, the [listen] keys each needs, "
        "what it is for, and the module it comes from.",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per dialect")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        dialects = installed()
    except DialectConflict as error:
        print(f"cpmictl dialects: {error}", file=sys.stderr)
        return 1
    for name in sorted(dialects):
        dialect = dialects[name]
        entry = {
            "name": name,
            "listeners": list(dialect.listeners),
            "summary": dialect.summary,
            "module": type(dialect).__module__,
        }
        if args.json:
            print(json.dumps(entry, ensure_ascii=False))
        else:
            listen = ", ".join(f"[listen] {key}" for key in dialect.listeners)
            print(f"{name}\t{listen}\t{dialect.summary}\t({entry['module']})")
    return 0
