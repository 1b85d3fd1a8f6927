"""``cpmictl log verify``: the chain and the seals, in one pass."""

from __future__ import annotations

import argparse
import base64
import os
import shlex
import sys

from nacl.signing import VerifyKey

from gateway.cli.log.common import Usage, byte_bar, guard, journal_segments, say, whole_end
from gateway.journal.damage import ChainError
from gateway.journal.integrity import KeyChangeError, KeyRun, Recovery, verify_journal
from gateway.journal.restore import RESTORE
from gateway.journal.segments import list_segments
from gateway.keys import parse_public_key_b64


def run_verify(args: argparse.Namespace) -> int:
    """``cpmictl log verify``: the chain and every seal, in one pass; exit 1 with the first bad seq."""
    return guard("verify", lambda: _verify(args))


def _read_pubkey(text: str) -> VerifyKey:
    """``--pubkey``: a base64 public key, or a file holding one."""
    if os.path.isfile(text):
        with open(text, "rb") as file:
            content = file.read(4096).decode("ascii", "replace").strip()
        if content.startswith("ed25519:"):
            raise Usage(
                f"--pubkey: {text} is a signing key file; give its public key (cpmictl pubkey {text})"
            )
        try:
            return parse_public_key_b64(content)
        except ValueError as e:
            raise Usage(f"--pubkey: {text}: {e}") from None
    try:
        return parse_public_key_b64(text)
    except ValueError:
        raise Usage(
            f"--pubkey: not a public key (base64 of 32 bytes) nor a file holding one: {text!r}"
        ) from None


def _verify(args: argparse.Namespace) -> int:
    segments = journal_segments(args.dir)
    # the same key given twice (as a file and in base64, say) is one key
    given = list({bytes(key): key for key in map(_read_pubkey, args.pubkey or [])}.values())
    try:
        with byte_bar(args, segments, "verify") as bar:
            verdict = verify_journal(
                args.dir,
                allow_partial_tail=True,
                seals=True,
                keys=given,
                progress=lambda segment: bar.update(os.stat(segment.path).st_size),
            )
    except ChainError as e:
        where = f" (segment {e.segment}, offset {e.offset})" if e.segment else ""
        print(
            f"first bad seq: {e.seq if e.seq is not None else 'unknown'}: {e.reason}{where}", file=sys.stderr
        )
        if isinstance(e, KeyChangeError):
            print(_key_change_hint(e, given_keys=bool(given), directory=args.dir), file=sys.stderr)
        return 1
    count, key, last_seal = verdict.records, verdict.key, verdict.last_seal
    first_seq = segments[0].first_seq
    last_seq = first_seq + count - 1 + sum(recovery.lost_count for recovery in verdict.recoveries)
    if verdict.seals and key is not None:
        if len(given) > 1:
            checked = "the given keys: " + _key_runs(verdict.sealed_by, [bytes(each) for each in given])
        elif given:
            checked = f"the given key: {_b64(key)}"
        else:
            checked = f"the key the journal recorded first: {_b64(key)}"
        out = [f"journal whole: {count} records, {verdict.seals} seals (checked with {checked})"]
        after = (
            last_seq
            - (last_seal or 0)
            - sum(r.lost_count for r in verdict.recoveries if r.lost and r.lost[0] > (last_seal or 0))
        )
        out.append(
            f"last seal: #{last_seal}, over the records up to #{(last_seal or 1) - 1}; "
            f"{after} records after it are covered by the chain only"
        )
    else:
        out = [f"journal whole: {count} records, no seals (nothing signed to check)"]
    out += [_recovery_line(recovery) for recovery in verdict.recoveries]
    if first_seq > 1:
        out.append(f"older segments were removed: the chain is checked from #{first_seq}, taken as it is")
    last = list_segments(args.dir)[-1]
    if whole_end(last.path) < os.stat(last.path).st_size:
        out.append(
            f"the last line of {last.name} is incomplete (being written, or torn by a crash): not checked"
        )
    say("\n".join(out))
    return 0


def _recovery_line(recovery: Recovery) -> str:
    """What ``verify`` says of damage set aside (or a restore's seq jump), and which record vouches for it."""
    if recovery.reason == RESTORE:
        skipped = (
            f"seqs #{recovery.lost[0]}\u2013#{recovery.lost[1]} skipped"
            if recovery.lost
            else "no seq skipped"
        )
        return (
            f"restored: {recovery.detail}; {skipped} (the lost journal may have used them); vouched for "
            f"by restore record #{recovery.seq} in segment {recovery.segment}, signed with "
            f"{_b64(recovery.key)}"
        )
    if recovery.lost is None:
        lost = "no record lost (a line that was not one)"
    elif recovery.lost[0] == recovery.lost[1]:
        lost = f"record #{recovery.lost[0]} lost"
    else:
        lost = f"records #{recovery.lost[0]}\u2013#{recovery.lost[1]} lost"
    return (
        f"set aside: {lost}: {recovery.length} bytes at offset {recovery.offset} of segment "
        f"{recovery.segment} ({recovery.detail}); vouched for by recovery record #{recovery.seq}, "
        f"signed with {_b64(recovery.key)}"
    )


def _key_runs(runs: tuple[KeyRun, ...], given: list[bytes]) -> str:
    """Each key and the seals it made, in journal order (a key used twice, twice); unused keys last."""
    parts = []
    for run in runs:
        seals = f"seal #{run.first}" if run.seals == 1 else f"seals #{run.first}\u2013#{run.last}"
        parts.append(f"{_b64(run.key)} ({seals})")
    used = {run.key for run in runs}
    parts += [f"{_b64(key)} (no seals)" for key in given if key not in used]
    return ", ".join(parts)


def _key_change_hint(e: KeyChangeError, *, given_keys: bool, directory: str) -> str:
    """
    What to do about a seal by a key not checked against: the line after ``first bad seq``.

    A rotated signing key and a journal rewritten under someone else's key look
    the same here; the operator tells them apart by knowing the gateway's keys,
    so the hint says to check the key before giving it.
    """
    new = _b64(e.recorded)
    pubkeys = " ".join(f"--pubkey {key}" for key in [*map(_b64, e.checked), new])
    command = f"cpmictl log verify {pubkeys} {shlex.quote(directory)}"
    if given_keys:
        return (
            f"the seal at #{e.seq} was made by a key not given ({new}): if it is a key of this gateway "
            f"(after a rotation of [gateway] signing_key; cpmictl pubkey KEYFILE prints a key file's), "
            f"add it: {command}"
        )
    return (
        f"the seals change key at #{e.seq}: if the gateway's signing key was rotated, make sure both "
        f"keys are its own (cpmictl pubkey KEYFILE prints a key file's), then check with both: {command}"
    )


def _b64(key: bytes) -> str:
    """A public key in base64, as ``cpmictl pubkey`` prints it."""
    return base64.b64encode(key).decode("ascii")
