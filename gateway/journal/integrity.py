"""
Checking a whole journal: every line's shape, seq, chain and JSON, and every seal, in one pass.

A journal is whole when each line passes :func:`~gateway.journal.record.check_line`
against the line before it and decodes (:func:`~gateway.journal.record.decode_line`)
to a record that says the same seq and chain; with ``seals``, each seal record
must also sign the record just before it with the journal's key. The first
break, in journal order, is raised as a :class:`ChainError`.

A line that does not check is accepted only as damage set aside at start-up
(see :mod:`gateway.journal.recovery`): a ``recovery`` record after it names
its segment and offset, is signed (by a given key, or the journal's), names
the last record proven before it as its ``before``, and the bytes there are
its hole or the damaged bytes of its digest; the check then goes on from its
``after``, and the verdict lists it in :attr:`Verdict.recoveries`.

The journal's key is the one the first seal (or recovery record) records, unless keys are given:
then a seal holds when any of them made it, so that a journal sealed before
and after a rotation of the gateway's signing key is checked with both (the
verdict says which key sealed which seals). A seal by another key is a
:class:`KeyChangeError`, which names the key.

Per line, only what that needs is done: the seq is compared as a prefix, the
chain hashed, the line parsed by orjson and its head fields looked at; no
:class:`Record` is built and only seal records are decoded fully. Any line the
fast path does not accept is checked again by ``check_line`` and
``decode_line`` themselves, so a break is reported with the very reason they
give (and what they accept is accepted).

Segments are checked in parallel, one per worker process, each from the seq
and chain of the line just before it, read off the end of the segment before
(:func:`~gateway.journal.segments.read_last_line`). That line is proven by the
previous segment's own check, and the results are combined in order,
comparing each segment's starting point with where the one before really
ended: the verdict is the one a single sequential pass gives.

These functions block and may start processes: call them from the command
line, or from a thread of a process that may fork.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from hashlib import blake2b
from operator import itemgetter

import orjson
from attrs import evolve, frozen
from nacl.signing import VerifyKey

from gateway.journal.kinds import SEAL_RECORD
from gateway.journal.reader import ChainError
from gateway.journal.record import CHAIN_TAIL_LEN, GENESIS_CHAIN, BadLine, check_line, decode_line
from gateway.journal.recovery import check_recovery, find_recovery, holds_set_aside, resume_point
from gateway.journal.restore import RESTORE, check_restore
from gateway.journal.seals import check_seal
from gateway.journal.segments import Segment, line_seq, list_segments, read_last_line
from gateway.keys import parse_public_key_b64

__all__ = ["PARALLEL_FROM_BYTES", "KeyChangeError", "KeyRun", "Recovery", "Verdict", "verify_journal"]

PARALLEL_FROM_BYTES = 16 * 2**20
"""Journals smaller than this are checked in this process unless told otherwise: a pool costs more."""

_READ_BUFFER = 1 << 20
# The chain's 32 hex digits in a line's fixed tail ,"chain":"<32 hex>"}\n
_TAIL_CHAIN = slice(-CHAIN_TAIL_LEN + len(b',"chain":"'), -len(b'"}\n'))
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
class KeyRun:
    """Seals in a row made by one key: ``seals`` of them, the first at ``first``, the last at ``last``."""

    key: bytes
    first: int
    last: int
    seals: int


@frozen
class Recovery:
    """
    Damage set aside, vouched for by the signed ``recovery`` record ``seq``.

    ``length`` bytes at ``offset`` of ``segment``; ``lost`` the first and last
    seq lost (None: no seq, an inserted line); ``detail`` what was wrong; ``key``
    the key that signed it.
    """

    seq: int
    segment: str
    offset: int
    length: int
    lost: tuple[int, int] | None
    detail: str
    key: bytes
    reason: str = "damaged"
    """``damaged`` (damage set aside) or ``restore`` (the seqs a restore from a backup skipped)."""

    @property
    def lost_count(self) -> int:
        """How many seqs were lost."""
        return 0 if self.lost is None else self.lost[1] - self.lost[0] + 1


@frozen
class Verdict:
    """A whole journal: its records, and its seals when they were checked."""

    records: int
    seals: int
    key: bytes | None
    """
    The public key the seals were checked with: the one given, else the one the
    first seal records (with several given, the one the first seal records).
    """
    last_seal: int | None
    sealed_by: tuple[KeyRun, ...] = ()
    """Which key made which seals, in journal order: a new run where the key changes."""
    recoveries: tuple[Recovery, ...] = ()
    """Damage set aside under signed ``recovery`` records, in journal order: what was lost."""


class KeyChangeError(ChainError):
    """
    A seal made by another key than the journal's (the one its first seal records) or the given ones.

    ``recorded`` is the key the seal records (and is signed with, or not);
    ``checked`` the keys it was held against. A rotated signing key looks like
    this, and so does a journal rewritten by someone else: only the operator
    can tell which, by knowing the gateway's keys.
    """

    recorded: bytes
    checked: tuple[bytes, ...]

    def __init__(
        self,
        seq: int | None,
        reason: str,
        segment: str | None = None,
        offset: int | None = None,
        *,
        recorded: bytes,
        checked: tuple[bytes, ...],
    ) -> None:
        super().__init__(seq, reason, segment, offset)
        self.recorded = recorded
        self.checked = checked


@frozen
class _Task:
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
class _Break:
    """Where a segment's check stopped, and why (a :class:`ChainError` to be)."""

    seq: int | None
    reason: str
    segment: str
    offset: int
    key_change: tuple[bytes, tuple[bytes, ...]] | None = None
    """A seal by another key: the key it records and the keys it was held against."""


@frozen
class _Result:
    """
    What checking one segment found.

    ``end`` is the (seq, chain) of its last line (``entry`` when it has none).
    Without a given key, a segment's seals are checked with its first seal's
    key, which ``first_key`` holds (seq, key, offset) for the combining step to
    hold against the journal's. ``runs``: which key made which of its seals.
    """

    records: int
    end: tuple[int, bytes | None]
    broken: _Break | None
    seals: int
    last_seal: int | None
    first_key: tuple[int, bytes, int] | None
    runs: tuple[KeyRun, ...]
    recoveries: tuple[Recovery, ...] = ()


class _BadSeal(Exception):
    def __init__(self, reason: str, key_change: tuple[bytes, tuple[bytes, ...]] | None = None) -> None:
        super().__init__(reason)
        self.key_change = key_change


def verify_journal(
    path: str | os.PathLike[str],
    *,
    allow_partial_tail: bool = False,
    seals: bool = False,
    key: VerifyKey | None = None,
    keys: Iterable[VerifyKey] = (),
    workers: int | None = None,
    executor: Executor | None = None,
    progress: Callable[[Segment], None] | None = None,
) -> Verdict:
    """
    Check the whole journal in ``path``; raise :class:`ChainError` at the first break.

    Older segments removed: the first record left is the anchor, its own chain
    unchecked. A partial last line is a break unless ``allow_partial_tail``.
    With ``seals``, every seal must be made by ``key`` or one of ``keys`` (a
    rotated key: the old one and the new), else by the key the first seal
    records; a seal by another is a :class:`KeyChangeError`. Segments are
    checked in ``workers`` processes (one per CPU, and only for a journal of
    :data:`PARALLEL_FROM_BYTES` or more, when not given), or on ``executor``.
    ``progress`` is called with each segment once it is checked (a progress bar's hook).
    """
    given = tuple(dict.fromkeys(bytes(each) for each in ([key] if key is not None else []) + list(keys)))
    segments = list_segments(path)
    if not segments:
        return Verdict(0, 0, given[0] if len(given) == 1 else None, None)
    tasks = _tasks(segments, allow_partial_tail, seals, given)
    if executor is not None:
        return _combine_on(executor, tasks, given, progress)
    if workers is None:
        size = sum(os.stat(segment.path).st_size for segment in segments)
        workers = (os.cpu_count() or 1) if size >= PARALLEL_FROM_BYTES else 1
    workers = min(workers, len(segments))
    if workers <= 1:
        return _combine(tasks, None, given, progress)
    try:
        pool = ProcessPoolExecutor(workers)
    except (OSError, NotImplementedError):  # no processes to be had here (no /dev/shm): one will do
        return _combine(tasks, None, given, progress)
    with pool:
        return _combine_on(pool, tasks, given, progress)


def _combine_on(
    executor: Executor,
    tasks: list[_Task],
    given: tuple[bytes, ...],
    progress: Callable[[Segment], None] | None = None,
) -> Verdict:
    """Check the segments on ``executor``, all submitted at once, in journal order."""
    futures = [executor.submit(_check_segment, task) for task in tasks]
    try:
        return _combine(tasks, futures, given, progress)
    finally:
        for future in futures:
            future.cancel()  # after a break, the segments not begun are not wanted


def _tasks(
    segments: list[Segment], allow_partial_tail: bool, seals: bool, keys: tuple[bytes, ...]
) -> list[_Task]:
    """A task per segment, each starting from the last line of the segment before (a guess until checked)."""
    first = segments[0].first_seq
    entry: tuple[int, bytes | None] = (0, GENESIS_CHAIN) if first == 1 else (first - 1, None)
    tasks = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if index > 0:
            entry = _last_line_state(segments[index - 1], entry)
        tasks.append(_Task(segment, entry, allow_partial_tail and index == last, seals, keys))
    return tasks


def _last_line_state(segment: Segment, before: tuple[int, bytes | None]) -> tuple[int, bytes | None]:
    """The (seq, chain) a segment's last line says; ``before`` for an empty segment."""
    line = read_last_line(segment.path)
    if line is None:
        return before
    seq = line_seq(line)
    if seq is None or len(line) < CHAIN_TAIL_LEN:
        return (segment.first_seq - 1, None)  # a broken line: that segment's own check stops there
    return (seq, line[_TAIL_CHAIN])


def _combine(
    tasks: list[_Task],
    futures: list[Future[_Result]] | None,
    given: tuple[bytes, ...],
    progress: Callable[[Segment], None] | None = None,
) -> Verdict:
    """
    The verdict of a sequential pass from the segments' results, taken in order.

    A segment whose check started from another place than where the one before
    ended (it changed in between) is checked again, here, from there.
    """
    records = seals = 0
    key: bytes | None = None  # without given keys, the journal's: the one its first seal records
    runs: list[KeyRun] = []
    recoveries: tuple[Recovery, ...] = ()
    last_seal: int | None = None
    state = tasks[0].entry
    for index, task in enumerate(tasks):
        if futures is not None and task.entry == state:
            result = futures[index].result()
        else:
            result = _check_segment(evolve(task, entry=state))
        if result.first_key is not None:
            seq, recorded, offset = result.first_key
            if key is None:
                key = recorded
            elif recorded != key:
                # the segment checked its seals with this key; a single pass stops at its first seal
                reason = _another_key(recorded, (key,))
                raise KeyChangeError(
                    seq, reason, task.segment.name, offset, recorded=recorded, checked=(key,)
                )
        if result.broken is not None:
            broken = result.broken
            if broken.key_change is not None:
                recorded, checked = broken.key_change
                where = (broken.seq, broken.reason, broken.segment, broken.offset)
                raise KeyChangeError(*where, recorded=recorded, checked=checked)
            raise ChainError(broken.seq, broken.reason, broken.segment, broken.offset)
        for recovery in result.recoveries:
            if not given:
                if key is None:
                    key = recovery.key
                elif recovery.key != key:
                    reason = _another_key(recovery.key, (key,), "recovery record signed")
                    raise KeyChangeError(
                        recovery.seq,
                        reason,
                        task.segment.name,
                        recovery.offset,
                        recorded=recovery.key,
                        checked=(key,),
                    )
        recoveries += result.recoveries
        records += result.records
        seals += result.seals
        last_seal = result.last_seal if result.last_seal is not None else last_seal
        for run in result.runs:
            if runs and runs[-1].key == run.key:  # a run of seals that goes on in the next segment
                runs[-1] = KeyRun(run.key, runs[-1].first, run.last, runs[-1].seals + run.seals)
            else:
                runs.append(run)
        state = result.end
        if progress is not None:
            progress(task.segment)
    if len(given) == 1:
        key = given[0]
    elif given:
        key = runs[0].key if runs else None
    return Verdict(records, seals, key, last_seal, tuple(runs), recoveries)


def _check_segment(task: _Task) -> _Result:
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
        return _Result(0, (seq, chain), _Break(seq + 1, reason, segment.name, 0), 0, None, None, ())
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
                            seq, chain = jump.seq, line[_TAIL_CHAIN]
                            continue
                        return _Result(
                            0, (seq, chain), _Break(expected, jump, segment.name, 0), 0, None, None, ()
                        )
                    vouched = _vouched(segment, offset, (seq, chain), given)
                    if isinstance(vouched, Recovery):
                        # Set aside under a signed recovery record: go on after it.
                        recoveries.append(vouched)
                        lost += vouched.lost_count
                        file.seek(offset + vouched.length)
                        seq, chain = vouched.resume
                        continue
                    return _Result(
                        seq - first_seq - lost,
                        (seq, chain),
                        _Break(expected, vouched or e.args[0], segment.name, offset),
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
                            raise _BadSeal(_another_key(recorded, given), (recorded, given))
                    elif key is None:  # the segment's first seal: _combine holds it against the journal's
                        key = recorded
                        first_key = (expected, recorded, offset)
                    elif recorded != key:
                        raise _BadSeal(_another_key(recorded, (key,)), (recorded, (key,)))
                    problem = check_seal(body, VerifyKey(recorded))
                    if problem is not None:
                        raise _BadSeal(problem)
                except (BadLine, _BadSeal) as e:
                    key_change = e.key_change if isinstance(e, _BadSeal) else None
                    return _Result(
                        seq - first_seq - lost,
                        (seq, chain),
                        _Break(expected, e.args[0], segment.name, offset, key_change),
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
    return _Result(
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
        return _another_key(jump.key, keys, f"restore record #{jump.seq}: signed")
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
        return _another_key(key, keys, f"{where}: signed")
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


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def _another_key(recorded: bytes, checked: tuple[bytes, ...], what: str = "sealed") -> str:
    if len(checked) == 1:
        return f"{what} with another key ({_b64(recorded)}) than the one checked against ({_b64(checked[0])})"
    keys = ", ".join(map(_b64, checked))
    return f"{what} with another key ({_b64(recorded)}) than the ones checked against ({keys})"


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
