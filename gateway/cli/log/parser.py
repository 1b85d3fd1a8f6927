"""The ``cpmictl log VERB`` argument parser: options, argument types, and DIR from the configuration."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.cli import progress as progress_bars
from gateway.cli.log.backup import run_backup, run_restore
from gateway.cli.log.common import Position, parse_position, parse_seq
from gateway.cli.log.export import run_export
from gateway.cli.log.replay import DEFAULT_BATCH, run_replay
from gateway.cli.log.show import run_show
from gateway.cli.log.stats import run_stats
from gateway.cli.log.tail import run_tail
from gateway.cli.log.verify import run_verify
from gateway.config import CONFIG_SEARCH, ConfigError, find_config
from gateway.config import load as load_config

if TYPE_CHECKING:
    from gateway.cli.command import Subparsers


def _seq_arg(text: str) -> int:
    try:
        return parse_seq(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _position_arg(text: str) -> Position:
    try:
        return parse_position(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _count_arg(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a count (0, 1, 2, ...): {text!r}")
    return int(text)


def _positive_arg(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return int(text)


def _add_filters(parser: argparse.ArgumentParser, *, until: bool) -> None:
    parser.add_argument(
        "--since",
        type=_position_arg,
        metavar="T",
        help="from this seq (42 or #42) or RFC 3339 time with offset on (inclusive)",
    )
    if until:
        parser.add_argument(
            "--until", type=_position_arg, metavar="T", help="up to this seq or time (inclusive)"
        )
    parser.add_argument("--park", action="append", metavar="P", help="only this lot (repeat for several)")
    parser.add_argument("--code", action="append", metavar="C", help="only this interface code (repeatable)")
    parser.add_argument("--kind", action="append", metavar="K", help="only this record kind (repeatable)")


def _add_journal(parser: argparse.ArgumentParser, *, progress: bool = False) -> None:
    """Add a verb's --config and its DIR (the journal), which the configuration gives when left out."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"the gateway's configuration, for journal.path and the sink (default: {CONFIG_SEARCH})",
    )
    if progress:
        progress_bars.add_option(parser)
    parser.add_argument(
        "dir",
        metavar="DIR",
        nargs="?",
        help="the journal directory (default: journal.path of the configuration)",
    )


def _from_config(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`handler`, run with DIR from the configuration when not given, and the sink when it is that journal.

    The configuration is --config, else the one the gateway would read
    (gateway.config.find_config); the sink is known only for its journal.
    """

    def run(args: argparse.Namespace) -> int:
        verb = handler.__name__.removeprefix("run_")
        path = find_config(args.config)
        settings = None
        if args.config is not None or os.path.exists(path):
            try:
                settings = load_config(path)
            except ConfigError as e:
                if args.dir is None or args.config is not None:
                    print(f"cpmictl log {verb}: {e}", file=sys.stderr)
                    return 2
        if args.dir is None:
            if settings is None:
                print(
                    f"cpmictl log {verb}: give DIR, the journal directory, or --config (no {path})",
                    file=sys.stderr,
                )
                return 2
            args.dir = settings.journal.path
        same = settings is not None and os.path.abspath(settings.journal.path) == os.path.abspath(args.dir)
        args.sink = settings.cloud.sink if same and settings is not None else None
        return handler(args)

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def add_parser(subparsers: Subparsers) -> None:
    """Add ``cpmictl log VERB ... DIR``."""
    log = subparsers.add_parser(
        "log",
        help="read, check, export, replay and back up the replay journal",
        description=(
            "Read, check, export, replay and back up the gateway's replay journal (DIR: the "
            "journal directory; when left out, journal.path of the configuration). Safe while "
            "the gateway runs. T is a seq (42 or "
            "#42) or an RFC 3339 time with its offset (2026-11-24T08:30:00+08:00)."
        ),
    )
    verbs = log.add_subparsers(title="verbs", metavar="VERB", required=True)

    tail = verbs.add_parser(
        "tail",
        help="the last records, one readable line each",
        description=(
            "Print the last N matching records (20; with --since, all of them from T on), one "
            "line each with long base64 strings shortened; -f then prints new records as they "
            "are written, until Ctrl-C."
        ),
    )
    tail.add_argument("-f", "--follow", action="store_true", help="go on printing new records")
    tail.add_argument("-n", "--lines", type=_count_arg, metavar="N", help="print the last N records")
    _add_filters(tail, until=False)
    tail.add_argument("--json", action="store_true", help="print the raw lines (JSON, nothing shortened)")
    _add_journal(tail)
    tail.set_defaults(handler=_from_config(run_tail))

    show = verbs.add_parser(
        "show", help="one record, whole", description="Print record SEQ whole, as indented JSON."
    )
    show.add_argument("seq", type=_seq_arg, metavar="SEQ", help="the record's seq (42 or #42)")
    _add_journal(show)
    show.set_defaults(handler=_from_config(run_show))

    stats = verbs.add_parser(
        "stats",
        help="counts, forwarding backlog and lag",
        description=(
            "Count records per kind, code and park; show how far forwarding went and the events "
            "not forwarded yet (the oldest, and per park)."
        ),
    )
    _add_journal(stats)
    stats.set_defaults(handler=_from_config(run_stats))

    verify = verbs.add_parser(
        "verify",
        help="check the chain and the seals",
        description=(
            "Check the chain of every record and every seal. Exit 0 when whole, 1 with the first "
            "bad seq. Without --pubkey, seals are checked against the key the journal recorded "
            "first (which shows the key never changed, not whose it is). After a rotation of the "
            "gateway's signing key, give the old and the new key: --pubkey OLD --pubkey NEW."
        ),
    )
    verify.add_argument(
        "--pubkey",
        metavar="KEY",
        action="append",
        help=(
            "the gateway's public key, base64 (cpmictl pubkey prints it), or a file holding it; "
            "again for each key it has had: a seal holds when any of them made it"
        ),
    )
    _add_journal(verify, progress=True)
    verify.set_defaults(handler=_from_config(run_verify))

    export = verbs.add_parser(
        "export",
        help="the matching records as JSON Lines",
        description="Write the raw lines of the matching records (JSON Lines) to stdout or FILE.",
    )
    _add_filters(export, until=True)
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    _add_journal(export, progress=True)
    export.set_defaults(handler=_from_config(run_export))

    replay = verbs.add_parser(
        "replay",
        help="send the events of some records again, with their original ids",
        description=(
            "POST the events of records --from..--to to URL as signed CloudEvents batches, with "
            "their original ids ({gateway id}-{seq}), so the cloud can drop those it has. Stops "
            "at the first answer that is not 2xx and says where to resume."
        ),
    )
    replay.add_argument(
        "--from",
        dest="from_seq",
        type=_seq_arg,
        required=True,
        metavar="SEQ",
        help="the first record (42 or #42)",
    )
    replay.add_argument(
        "--to", dest="to_seq", type=_seq_arg, metavar="SEQ", help="the last record (default: the end)"
    )
    replay.add_argument("--park", action="append", metavar="P", help="only this lot (repeatable)")
    replay.add_argument("--url", required=True, metavar="URL", help="where to POST the batches")
    replay.add_argument("--key", metavar="PATH", help="the signing key file (default: gateway.signing_key)")
    replay.add_argument(
        "--gateway-id",
        metavar="ID",
        help="the gateway id (default: gateway.id; with no configuration file, the zone is Asia/Shanghai)",
    )
    replay.add_argument(
        "--batch", type=_positive_arg, default=DEFAULT_BATCH, metavar="N", help="events per batch (100)"
    )
    _add_journal(replay, progress=True)
    replay.set_defaults(handler=_from_config(run_replay))

    backup = verbs.add_parser(
        "backup",
        help="copy what is new in the journal into a backup, even while the gateway writes it",
        description=(
            "Copy the journal DIR into DEST (created if missing). Into a backup of the same "
            "journal, only what is new is copied: new whole lines of its last segment and new "
            "segments, each checked on the chain from DEST's last record and synced, so it can "
            "run every minute. A DEST that is not a backup of this journal is refused. DEST "
            "verifies on its own (cpmictl log verify DEST); restore it with cpmictl log restore."
        ),
    )
    _add_journal(backup, progress=True)
    backup.add_argument(
        "--progress", action="store_true", help="kept for old scripts: a bar is drawn on a terminal anyway"
    )
    backup.add_argument("dest", metavar="DEST", help="the backup directory (created if missing)")
    backup.set_defaults(handler=_from_config(run_backup))

    restore = verbs.add_parser(
        "restore",
        help="make DIR a journal restored from the backup DEST (the gateway stopped)",
        description=(
            "Copy the backup DEST into the journal directory DIR and append a restore record, "
            "signed with the gateway's key, from which the journal goes on at a seq no record "
            "of the lost journal can have used (the time in microseconds). Refused while a "
            "gateway holds DIR, and when DIR holds segments unless --replace."
        ),
    )
    restore.add_argument(
        "--config", metavar="FILE", help=f"the gateway's configuration (default: {CONFIG_SEARCH})"
    )
    restore.add_argument("--key", metavar="PATH", help="the signing key file (default: gateway.signing_key)")
    restore.add_argument("--gateway-id", metavar="ID", help="the gateway id (default: gateway.id)")
    restore.add_argument(
        "--replace",
        action="store_true",
        help="rename the segments DIR holds to <segment>.replaced-<time> rather than refuse",
    )
    restore.add_argument("dest", metavar="DEST", help="the backup directory to restore from")
    restore.add_argument("dir", metavar="DIR", help="the journal directory to make (the gateway stopped)")
    restore.set_defaults(handler=run_restore)
