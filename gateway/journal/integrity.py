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

This module drives the check and combines the segments' results;
:mod:`gateway.journal.segcheck` checks one segment (the per-line loop, seals,
recovery and restore records) and :mod:`gateway.journal.verdict` holds what
the check says (:class:`Verdict`, :class:`KeyChangeError`, ...).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ProcessPoolExecutor

from attrs import evolve
from nacl.signing import VerifyKey

from gateway.journal.damage import ChainError
from gateway.journal.record import CHAIN_TAIL_LEN, GENESIS_CHAIN
from gateway.journal.segcheck import TAIL_CHAIN, SegmentResult, Task, check_segment
from gateway.journal.segments import Segment, line_seq, list_segments, read_last_line
from gateway.journal.verdict import KeyChangeError, KeyRun, Recovery, Verdict, another_key

__all__ = ["PARALLEL_FROM_BYTES", "KeyChangeError", "KeyRun", "Recovery", "Verdict", "verify_journal"]

PARALLEL_FROM_BYTES = 16 * 2**20
"""Journals smaller than this are checked in this process unless told otherwise: a pool costs more."""


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
    tasks: list[Task],
    given: tuple[bytes, ...],
    progress: Callable[[Segment], None] | None = None,
) -> Verdict:
    """Check the segments on ``executor``, all submitted at once, in journal order."""
    futures = [executor.submit(check_segment, task) for task in tasks]
    try:
        return _combine(tasks, futures, given, progress)
    finally:
        for future in futures:
            future.cancel()  # after a break, the segments not begun are not wanted


def _tasks(
    segments: list[Segment], allow_partial_tail: bool, seals: bool, keys: tuple[bytes, ...]
) -> list[Task]:
    """A task per segment, each starting from the last line of the segment before (a guess until checked)."""
    first = segments[0].first_seq
    entry: tuple[int, bytes | None] = (0, GENESIS_CHAIN) if first == 1 else (first - 1, None)
    tasks = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if index > 0:
            entry = _last_line_state(segments[index - 1], entry)
        tasks.append(Task(segment, entry, allow_partial_tail and index == last, seals, keys))
    return tasks


def _last_line_state(segment: Segment, before: tuple[int, bytes | None]) -> tuple[int, bytes | None]:
    """The (seq, chain) a segment's last line says; ``before`` for an empty segment."""
    line = read_last_line(segment.path)
    if line is None:
        return before
    seq = line_seq(line)
    if seq is None or len(line) < CHAIN_TAIL_LEN:
        return (segment.first_seq - 1, None)  # a broken line: that segment's own check stops there
    return (seq, line[TAIL_CHAIN])


def _combine(
    tasks: list[Task],
    futures: list[Future[SegmentResult]] | None,
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
            result = check_segment(evolve(task, entry=state))
        if result.first_key is not None:
            seq, recorded, offset = result.first_key
            if key is None:
                key = recorded
            elif recorded != key:
                # the segment checked its seals with this key; a single pass stops at its first seal
                reason = another_key(recorded, (key,))
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
                    reason = another_key(recovery.key, (key,), "recovery record signed")
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
