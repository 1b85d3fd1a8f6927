"""
The ``restore`` record: where a journal restored from a backup goes on, and why its seqs jump (no I/O).

A restored journal holds the backup's records, up to some seq N. The journal
that was lost may have gone on past N -- records acknowledged, forwarded and
seen by the cloud under the event ids ``{gateway}-{seq}`` -- and nothing left
says how far. So the journal does not go on at N + 1: it goes on at a *floor*
no lost record can have reached, the time of the restore in microseconds
since 1970 (see :func:`seq_floor`), in a new segment named for it.

The first record of that segment is the ``restore`` record, at the floor
itself. Its chain is computed on the backup's last record, like any record's
on the one before, but its seq is not one more: the jump is what it vouches
for, signed with the gateway's key as a damage ``recovery`` record is, and in
the same form::

    {"reason": "restore", "backup": {"seq": N, "chain": "...", "ts": "..."},
     "before": {"seq": N, "chain": "..."}, "lost": {"first": N + 1, "last": F - 1},
     "after": {"seq": F}, "floor": "microseconds since 1970 at the restore",
     "gateway": "gw-01", "key": "<base64>", "signature": "<base64>"}

``lost`` names the seqs skipped: not records known to be lost, but every seq
the lost tail may have used, none of which is issued again. The signature is
over ``cpmi-journal-recovery\\n`` and the body but ``signature``, compact
(:func:`gateway.journal.recovery.recovery_message`); its ``reason`` keeps it
from passing for a damage record.
"""

from __future__ import annotations

import base64
import math

from nacl.signing import SigningKey

from gateway.journal.kinds import RESTORE_RECORD
from gateway.journal.record import CHAIN_TAIL_LEN, BadLine, Record, chain_digest, check_line, decode_line
from gateway.journal.recovery import check_recovery, recovery_message

__all__ = ["RESTORE", "RestoreJump", "check_restore", "restore_body", "seq_floor"]


RESTORE = "restore"
"""Its ``reason``, as a damage recovery record's is ``damaged``."""

FLOOR_RULE = "microseconds since 1970 at the restore"


def seq_floor(last_seq: int, now: float) -> int:
    """
    The seq a journal restored from a backup ending at ``last_seq`` goes on from, at time ``now``.

    The time of the restore in whole microseconds since 1970, or ``last_seq +
    1`` if that is higher. Safe because every seq ever issued is below the
    time it was issued in microseconds: a journal never restored counts from
    1 (a million records a second for 56 years would be needed to catch up),
    and one restored before goes on from the time of that restore, one seq a
    record, never a million records a second. So whatever the lost tail used
    is below the time it was lost, which is before now.
    """
    return max(last_seq + 1, math.floor(now * 1_000_000))


def restore_body(before: Record, floor: int, *, gateway: str, key: SigningKey | None) -> dict[str, object]:
    """The body of the ``restore`` record at ``floor`` after the backup's last record ``before``."""
    body: dict[str, object] = {
        "reason": RESTORE,
        "backup": {"seq": before.seq, "chain": before.chain, "ts": before.ts},
        "before": {"seq": before.seq, "chain": before.chain},
        "lost": {"first": before.seq + 1, "last": floor - 1} if floor > before.seq + 1 else None,
        "after": {"seq": floor},
        "floor": FLOOR_RULE,
        "gateway": gateway,
    }
    if key is None:
        return body
    body["key"] = base64.b64encode(bytes(key.verify_key)).decode("ascii")
    body["signature"] = base64.b64encode(key.sign(recovery_message(body)).signature).decode("ascii")
    return body


class RestoreJump:
    """A seq jump a ``restore`` record vouches for: from ``before`` to its own ``seq``, signed by ``key``."""

    __slots__ = ("before", "chain", "key", "seq")

    def __init__(self, seq: int, chain: bytes, before: int, key: bytes) -> None:
        self.seq = seq
        self.chain = chain
        self.before = before
        self.key = key

    @property
    def lost(self) -> tuple[int, int] | None:
        """The seqs skipped: the first and last, or None."""
        return (self.before + 1, self.seq - 1) if self.seq > self.before + 1 else None


def check_restore(line: bytes, before: tuple[int, bytes | None]) -> RestoreJump:
    """
    Check that ``line`` is a signed ``restore`` record going on from ``before`` (seq, chain).

    Its chain must be computed on ``before``'s chain, its body must name
    ``before`` exactly (so it vouches for this place of this chain and no
    other), its seq must be the one its ``after`` says, above ``before``, and
    its signature must hold with the key it records (whether that key is the
    journal's is the caller's to check). Raises :class:`BadLine` saying why not.
    """
    seq, chain = check_line(line, None, None)
    record = decode_line(line)
    if record.kind != RESTORE_RECORD:
        raise BadLine(f"seq {seq} where {before[0] + 1} was expected")
    body = record.body
    if not isinstance(body, dict) or body.get("reason") != RESTORE:
        raise BadLine(f"restore record #{seq} has no reason {RESTORE!r}")
    before_seq, before_chain = before
    named = {"seq": before_seq, "chain": before_chain.decode("ascii") if before_chain is not None else None}
    if body.get("before") != named:
        raise BadLine(
            f"restore record #{seq} goes on from {body.get('before')}, but the record before it is {named}"
        )
    if before_chain is None or chain_digest(before_chain, line[:-CHAIN_TAIL_LEN]) != chain:
        raise BadLine(f"restore record #{seq}: chain does not match the record before it")
    after = body.get("after")
    if not isinstance(after, dict) or after.get("seq") != seq or seq <= before_seq:
        raise BadLine(f"restore record #{seq} does not say it goes on at its own seq")
    lost = {"first": before_seq + 1, "last": seq - 1} if seq > before_seq + 1 else None
    if body.get("lost") != lost:
        raise BadLine(
            f"restore record #{seq}: the seqs it says were skipped ({body.get('lost')}) are not those skipped"
        )
    try:
        key, problem = check_recovery(body)
    except ValueError as e:
        raise BadLine(f"restore record #{seq}: {str(e).replace('recovery record', 'it')}") from None
    if problem is not None:
        raise BadLine(f"restore record #{seq}: {problem.replace('recovery record', 'it')}")
    return RestoreJump(seq, chain, before_seq, key)
