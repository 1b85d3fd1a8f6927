"""One segment of the journal checked line by line (and seal by seal): the check's inner loop.

:func:`check_segment` runs in a worker process of
:func:`gateway.journal.integrity.verify_journal` (or in the caller's), from the
(seq, chain) of the line before the segment, and stops at the first break;
the driver combines the segments' :class:`SegmentResult` in journal order.
A bad line is accepted only where a signed ``recovery`` record vouches for it
(:func:`_vouched`), a seq jump only where a ``restore`` record starts the
segment (:func:`_restore_jump`).
"""

from __future__ import annotations

import os
import re
from hashlib import blake2b
from operator import itemgetter

import orjson
from attrs import frozen
from nacl.signing import VerifyKey

from gateway.journal.kinds import SEAL_RECORD
from gateway.journal.record import CHAIN_TAIL_LEN, GENESIS_CHAIN, BadLine, check_line, decode_line
from gateway.journal.recovery import check_recovery, find_recovery, holds_set_aside, resume_point
from gateway.journal.restore import RESTORE, check_restore
from gateway.journal.seals import check_seal
from gateway.journal.segments import Segment, line_seq
from gateway.journal.verdict import KeyRun, Recovery, another_key
from gateway.keys import parse_public_key_b64

__all__ = ["TAIL_CHAIN", "Break", "SegmentResult", "Task", "check_segment"]

_READ_BUFFER = 1 << 20
# The chain's 32 hex digits in a line's fixed tail ,"chain":"<32 hex>"}\n
TAIL_CHAIN = slice(-CHAIN_TAIL_LEN + len(b',"chain":"'), -len(b'"}\n'))
# A seal found the way `cpmictl log` finds kinds: in the head, before the body,
# fields unescaped. A line is checked as a seal when this says so or when its
# decoded kind does.
_SEAL_KIND = b'"kind":"seal"'
_SEAL_KIND_REACH = 128
_SEAL_HEAD = re.compile(
    rb'\{"seq":[1-9][0-9]*,"ts":"[^"\\]*","kind":"seal","park":"[^"\\]*",'
    rb'"code":"[^"\\]*","opr":"[^"\\]*","body":'
)


@frozen
class Task:
    """
    One segment to check, from ``entry``: the (seq, chain) of the line before it.

    ``keys``: the keys a seal may be made by; none, the key of the segment's first seal.
    """

    segment: Segment
    entry: tuple[int, bytes | None]
    partial_tail: bool
    seals: bool
    keys: tuple[bytes, ...]


@frozen
class Break:
    """Where a segment's check stopped, and why (a :class:`ChainError` to be)."""

    seq: int | None
    reason: str
    segment: str
    offset: int
    key_change: tuple[bytes, tuple[bytes, ...]] | None = None
    """A seal by another key: the key it records and the keys it was held against."""


@frozen
class SegmentResult:
    """
    What checking one segment found.

    ``end`` is the (seq, chain) of its last line (``entry`` when it has none).
    Without a given key, a segment's seals are checked with its first seal's
    key, which ``first_key`` holds (seq, key, offset) for the combining step to
    hold against the journal's. ``runs``: which key made which of its seals.
    """

    records: int
    end: tuple[int, bytes | None]
    broken: Break | None
    seals: int
    last_seal: int | None
    first_key: tuple[int, bytes, int] | None
    runs: tuple[KeyRun, ...]
    recoveries: tuple[Recovery, ...] = ()


class _BadSeal(Exception):
    def __init__(self, reason: str, key_change: tuple[bytes, tuple[bytes, ...]] | None = None) -> None:
        super().__init__(reason)
        self.key_change = key_change


def check_segment(task: Task) -> SegmentResult:
    """Check one segment's lines (and seals) from ``task.entry``; stop at the first break."""
    segment = task.segment
    first_seq, _ = task.entry
    seq, chain = task.entry
    seals = 0
    last_seal: int | None = None
    first_key: tuple[int, bytes, int] | None = None
    given = task.keys
    key: bytes | None = None  # without given keys, the segment's first seal's
    runs: list[KeyRun] = []
    recoveries: list[Recovery] = []
    lost = 0  # seqs lost in damage set aside: not records
    check_seals = task.seals
    # A segment that starts later than the seq expected must begin with a restore record.
    restored = segment.first_seq > seq + 1
    if segment.first_seq <= seq:
        reason = f"segment starts at seq {segment.first_seq} where {seq + 1} was expected"
        return SegmentResult(0, (seq, chain), Break(seq + 1, reason, segment.name, 0), 0, None, None, ())
    # Looked up once: this loop runs for every line of the journal.
    hasher = blake2b(digest_size=16).copy
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    head_fields = itemgetter("seq", "chain", "ts", "kind", "park", "code", "opr", "body")
    seal_kind, seal_reach, seal_head = _SEAL_KIND, _SEAL_KIND_REACH, _SEAL_HEAD.match
    seal_record = SEAL_RECORD
    tail_len = CHAIN_TAIL_LEN
    with open(segment.path, "rb", buffering=_READ_BUFFER) as file:
        for line in file:
            expected = seq + 1
            kind = None
            # The fast path: what check_line and decode_line check, without their objects.
            if chain is not None and line.startswith(b'{"seq":%d,' % expected):
                digest = hasher()
                digest.update(chain)
                digest.update(line[:-tail_len])
                hex_digest = digest.hexdigest()
                new_chain = hex_digest.encode()
                if line.endswith(b',"chain":"%s"}\n' % new_chain):
                    try:
                        # a line that starts with '{' and parses is an object
                        in_seq, in_chain, ts, in_kind, park, code, opr, _ = head_fields(loads(line))
                    except (decode_error, KeyError):
                        pass
                    else:
                        if (
                            in_seq == expected
                            and type(in_seq) is int
                            and in_chain == hex_digest
                            and type(ts) is str
                            and type(in_kind) is str
                            and type(park) is str
                            and type(code) is str
                            and type(opr) is str
                        ):
                            kind = in_kind
            if kind is None:
                # Not taken by the fast path: the definitions decide, and give the reason.
                if task.partial_tail and not line.endswith(b"\n"):
                    break
                try:
                    _, new_chain = check_line(line, seq, chain)
                    record = decode_line(line)
                    if record.seq != expected or record.chain != new_chain.decode("ascii"):
                        raise BadLine("decoded record does not match its line")
                except BadLine as e:
                    offset = file.tell() - len(line)
                    if restored and offset == 0:
                        restored = False
                        jump = _restore_jump(segment, line, (seq, chain), given)
                        if isinstance(jump, Recovery):
                            recoveries.append(jump)
                            lost += jump.lost_count
                            seq, chain = jump.seq, line[TAIL_CHAIN]
                            continue
                        return SegmentResult(
                            0, (seq, chain), Break(expected, jump, segment.name, 0), 0, None, None, ()
                        )
                    vouched = _vouched(segment, offset, (seq, chain), given)
                    if isinstance(vouched, Recovery):
                        # Set aside under a signed recovery record: go on after it.
                        recoveries.append(vouched)
                        lost += vouched.lost_count
                        file.seek(offset + vouched.length)
                        seq, chain = vouched.resume
                        continue
                    return SegmentResult(
                        seq - first_seq - lost,
                        (seq, chain),
                        Break(expected, vouched or e.args[0], segment.name, offset),
                        seals,
                        last_seal,
                        first_key,
                        tuple(runs),
                        tuple(recoveries),
                    )
                kind = record.kind
            if check_seals and (
                kind == seal_record
                or (line.find(seal_kind, 0, seal_reach) >= 0 and seal_head(line) is not None)
            ):
                offset = file.tell() - len(line)
                # The record just before it, unless that went with older segments (the anchor).
                signed = (seq, chain) if chain is not None else None
                try:
                    body = decode_line(line).body
                    recorded = _recorded_key(body, signed)
                    if given:
                        if recorded not in given:
                            raise _BadSeal(another_key(recorded, given), (recorded, given))
                    elif key is None:  # the segment's first seal: _combine holds it against the journal's
                        key = recorded
                        first_key = (expected, recorded, offset)
                    elif recorded != key:
                        raise _BadSeal(another_key(recorded, (key,)), (recorded, (key,)))
                    problem = check_seal(body, VerifyKey(recorded))
                    if problem is not None:
                        raise _BadSeal(problem)
                except (BadLine, _BadSeal) as e:
                    key_change = e.key_change if isinstance(e, _BadSeal) else None
                    return SegmentResult(
                        seq - first_seq - lost,
                        (seq, chain),
                        Break(expected, e.args[0], segment.name, offset, key_change),
                        seals,
                        last_seal,
                        first_key,
                        tuple(runs),
                        tuple(recoveries),
                    )
                seals += 1
                last_seal = expected
                if runs and runs[-1].key == recorded:
                    run = runs[-1]
                    runs[-1] = KeyRun(recorded, run.first, expected, run.seals + 1)
                else:
                    runs.append(KeyRun(recorded, expected, expected, 1))
            seq, chain = expected, new_chain
    return SegmentResult(
        seq - first_seq - lost,
        (seq, chain),
        None,
        seals,
        last_seal,
        first_key,
        tuple(runs),
        tuple(recoveries),
    )


def _restore_jump(
    segment: Segment, line: bytes, state: tuple[int, bytes | None], keys: tuple[bytes, ...]
) -> Recovery | str:
    """The seq jump the ``restore`` record starting ``segment`` vouches for, or why it does not."""
    try:
        jump = check_restore(line, state)
    except BadLine as e:
        if line_seq(line) != segment.first_seq or b'"kind":"restore"' not in line[:_SEAL_KIND_REACH]:
            return f"segment starts at seq {segment.first_seq} where {state[0] + 1} was expected"
        return str(e.args[0])
    if keys and jump.key not in keys:
        return another_key(jump.key, keys, f"restore record #{jump.seq}: signed")
    return Recovery(
        jump.seq,
        segment.name,
        0,
        0,
        jump.lost,
        f"from a backup ending at #{jump.before}",
        jump.key,
        RESTORE,
    )


@frozen
class _Vouched(Recovery):
    """A :class:`Recovery` and the (seq, chain) the check goes on from after it."""

    resume: tuple[int, bytes] = (0, GENESIS_CHAIN)


def _vouched(
    segment: Segment, offset: int, state: tuple[int, bytes | None], keys: tuple[bytes, ...]
) -> _Vouched | str | None:
    """
    The signed ``recovery`` record that vouches for the bad line at ``offset``, or why it does not.

    None when no recovery record names it (the break stands as it is). The
    record must be signed by its key (one of ``keys``, when given), name the
    record just before the damage as ``state`` (so it vouches for this place
    of this chain and no other), and the bytes it set aside must be a hole or
    the damaged bytes it took the digest of.
    """
    found = find_recovery(os.path.dirname(segment.path), segment.name, offset)
    if found is None:
        return None
    body = found.body
    where = f"recovery record #{found.seq}"
    try:
        key, problem = check_recovery(body)
    except ValueError as e:
        return f"{where}: {e}"
    if problem is not None:
        return f"{where}: {problem}"
    if keys and key not in keys:
        return another_key(key, keys, f"{where}: signed")
    assert isinstance(body, dict)
    seq, chain = state
    before = {"seq": seq, "chain": chain.decode("ascii") if chain is not None else None}
    if body.get("before") != before:
        return f"{where} names damage after {body.get('before')}, but the record before it is {before}"
    point = resume_point(body)
    if point is None:
        return f"{where} does not say where the chain resumes"
    length, resume_seq, resume_prev = point
    if not holds_set_aside(segment.path, offset, length, body.get("digest")):
        return f"{where}: the {length} bytes it set aside were changed since"
    lost_body = body.get("lost")
    lost = (seq + 1, resume_seq - 1) if resume_seq > seq + 1 else None
    if (lost_body or None) != ({"first": lost[0], "last": lost[1]} if lost else None):
        return f"{where}: the seqs it says were lost ({lost_body}) are not those skipped"
    return _Vouched(
        found.seq,
        segment.name,
        offset,
        length,
        lost,
        str(body.get("detail", "")),
        key,
        resume=(resume_seq - 1, resume_prev),
    )


def _recorded_key(body: object, signed: tuple[int, bytes] | None) -> bytes:
    """
    The key a seal records, once its body holds up and signs ``signed``; raises _BadSeal.

    A seal is checked in this order: the body, what it signs, the key it
    records (here); that key against the journal's, the signature (after).
    """
    if not isinstance(body, dict):
        raise _BadSeal("seal body is not an object")
    if signed is not None:
        says = (body.get("seq"), body.get("chain"))
        seq, chain = signed[0], signed[1].decode("ascii")
        if says != (seq, chain):
            raise _BadSeal(
                f"seal signs #{says[0]} with chain {says[1]}, but the record before it is "
                f"#{seq} with chain {chain}"
            )
    recorded_text = body.get("key")
    try:
        if not isinstance(recorded_text, str):
            raise ValueError("no key")
        return bytes(parse_public_key_b64(recorded_text))
    except ValueError:
        raise _BadSeal("seal does not record a base64 Ed25519 public key") from None
