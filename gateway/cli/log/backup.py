"""``cpmictl log backup DIR DEST`` and ``cpmictl log restore DEST DIR`` (gateway.journal.backup)."""

from __future__ import annotations

import argparse

from gateway.cli import progress as progress_bars
from gateway.cli.log.common import Failure, guard, say
from gateway.config import ConfigError, find_config, parse
from gateway.config import load as load_config
from gateway.journal import backup as journal_backup
from gateway.keys import KeyFileError, load_signing_key


def run_backup(args: argparse.Namespace) -> int:
    """``cpmictl log backup DIR DEST``: copy what is new in the journal into DEST (gateway.journal.backup)."""
    return guard("backup", lambda: _backup(args))


def _backup(args: argparse.Namespace) -> int:
    bar = progress_bars.bar(args, total=None, description="backup")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.refresh()  # the last figure, whatever tqdm's redraw interval skipped

    try:
        result = journal_backup.backup(args.dir, args.dest, progress=progress)
    except journal_backup.BackupRefused as e:
        raise Failure(str(e)) from None
    finally:
        bar.close()
    if result.first_new is None:
        summary = f"{args.dest}: nothing new since #{result.last_seq}" if result.last_seq else "no records"
    else:
        summary = (
            f"copied {result.records} records (#{result.first_new} to #{result.last_seq}), {result.bytes} "
            f"bytes, {result.new_segments} new segments, from {args.dir} to {args.dest}: chain checked"
        )
        if result.verified:
            summary += ", the whole backup verified"
    say(summary)
    if result.left_out:
        say(f"left out: the incomplete last line ({result.left_out} bytes, being written)")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    """``cpmictl log restore DEST DIR``: make DIR a journal restored from the backup DEST."""
    return guard("restore", lambda: _restore(args))


def _restore(args: argparse.Namespace) -> int:
    try:
        gateway_id = args.gateway_id
        if gateway_id is not None:
            parse({"gateway": {"id": gateway_id}})  # checks its spelling
        if gateway_id is None or args.key is None:
            config = load_config(find_config(args.config))
            gateway_id = gateway_id or config.gateway.id
            key_path = args.key or config.gateway.signing_key
        else:
            key_path = args.key
    except ConfigError as e:
        hint = "" if args.config else " (give --config, or --gateway-id and --key)"
        raise Failure(f"{e}{hint}") from None
    try:
        key = load_signing_key(key_path)
    except KeyFileError as e:
        raise Failure(str(e)) from None
    try:
        result = journal_backup.restore(
            args.dest, args.dir, signing_key=key, gateway_id=gateway_id, replace=args.replace
        )
    except journal_backup.BackupRefused as e:
        raise Failure(str(e)) from None
    for name in result.replaced:
        say(f"kept the journal that was there as {name}")
    say(
        f"restored {result.segments} segments, records up to #{result.last_seq}, from {args.dest} "
        f"to {args.dir}; the journal goes on at #{result.floor} (restore record, signed): "
        "no seq in between is used"
    )
    return 0
