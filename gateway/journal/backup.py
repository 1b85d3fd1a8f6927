"""
Backup and restore of a journal directory (blocking I/O, for ``cpmictl log backup`` and ``restore``).

Backup
------
:func:`backup` copies a journal into DEST, and into a DEST that already holds
a backup of it, only what is new: the lines appended to DEST's last segment
since, and the segments begun after it. It can run every minute, while the
gateway writes:

- Only whole lines are copied: a line being written (or torn by a crash) is
  left for the next run. DEST's segments so always end with a whole record,
  and DEST verifies on its own (``cpmictl log verify DEST``).
- Every line copied is checked on the chain before it is written, from
  DEST's last record on: the *seam*. The first new line must chain on DEST's
  last record, and DEST's last line must still be in DIR, byte for byte, where
  it was copied from. A DEST that is a backup of another journal (or of this
  one before it was rewritten) is refused with one line, and nothing is written.
- Segments retention removed from DIR stay in DEST (a backup keeps what the
  journal no longer does); a backup that fell behind retention (records
  removed from DIR before they were copied) is refused, naming the seqs.
- Damage set aside in DIR (a hole) or a restore's seq jump is checked by the
  rules of ``verify`` (the whole of DEST is then verified); a line that does
  not check stops the copy just before it: DEST holds every record up to it.
- Two backups into one DEST at once cannot interleave: DEST is locked
  (``flock``) while one runs (on a file system without locks, some remote
  ones, it goes on unlocked: the timer never starts two runs at once).

Restore
-------
:func:`restore` makes DIR a journal the gateway starts from: DEST's segments,
then a new segment holding a signed ``restore`` record at a seq floor no
record of the lost tail can have reached (see :mod:`gateway.journal.restore`).
It refuses a DIR a running gateway holds (the writer ``flock`` s the
directory; so does restore, so a gateway cannot start on a half-restored
journal), a DIR that already holds segments (unless ``replace``: they are
renamed ``<segment>.replaced-<time>``, never deleted), a backup that does not
verify, and a clock behind the backup's last record (the floor is the time).
The segments are copied under temporary names and renamed into place, the
restore segment first, so that a journal that holds any segment of the backup
holds the floor too.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

from attrs import frozen
from nacl.signing import SigningKey

from gateway.journal.integrity import verify_journal
from gateway.journal.kinds import RESTORE_RECORD, kind_member
from gateway.journal.reader import ChainError
from gateway.journal.record import BadLine, Record, check_line, decode_line, encode_line, format_ts
from gateway.journal.recovery import is_hole
from gateway.journal.restore import check_restore, restore_body, seq_floor
from gateway.journal.segments import Segment, line_seq, list_segments, segment_name

__all__ = [
    "BackupRefused",
    "BackupResult",
    "JournalBusy",
    "RestoreResult",
    "backup",
    "restore",
]

_CHUNK = 1 << 20
_RESTORING = ".restoring"

Progress = Callable[[int, int], None]
"""Told ``(bytes done, bytes in all)`` as a copy goes on."""


class BackupRefused(Exception):
    """A backup or restore that was not made, and why, in one line."""


class JournalBusy(BackupRefused):
    """The journal directory is locked by another process (a running gateway, or a restore)."""


@frozen
class BackupResult:
    """What one backup run did: new segments, bytes copied, where DEST now ends."""

    segments: int
    """Segments DEST holds."""
    new_segments: int
    bytes: int
    """Bytes copied by this run."""
    records: int
    """Records copied by this run."""
    first_new: int | None
    """The seq of the first record copied by this run; None if nothing was new."""
    last_seq: int | None
    """DEST's last record after the run; None for an empty journal."""
    left_out: int
    """Bytes of an incomplete last line in DIR, left for the next run."""
    verified: bool
    """Whether the whole of DEST was verified (after damage set aside or a restore)."""


@frozen
class RestoreResult:
    """A restore: the backup's last record, the floor the journal goes on from, what was set aside."""

    segments: int
    last_seq: int
    floor: int
    replaced: tuple[str, ...]
    record: Record


@contextmanager
def _locked(directory: str, what: str, *, required: bool = True) -> Iterator[int]:
    """
    Hold ``flock`` on ``directory`` (the writer's lock); :class:`JournalBusy` if another holds it.

    Not ``required``: on a file system that has no locks (some remote ones),
    go on without.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JournalBusy(what) from None
        except OSError as e:
            if required or e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        yield fd
    finally:
        os.close(fd)


def _whole_end(path: str, size: int) -> int:
    """The length of the first ``size`` bytes of a file up to its last newline."""
    with open(path, "rb") as f:
        pos = size
        while pos > 0:
            step = min(_CHUNK, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                return pos - step + newline + 1
            pos -= step
    return 0


def _last_line(path: str, end: int) -> tuple[int, bytes] | None:
    """The offset and bytes of the last line ending at ``end`` (a newline), or None if ``end`` is 0."""
    if end == 0:
        return None
    with open(path, "rb") as f:
        pos = end - 1
        while pos > 0:
            step = min(_CHUNK, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                start = pos - step + newline + 1
                break
            pos -= step
        else:
            start = 0
        f.seek(start)
        return start, f.read(end - start)


def _fsync_directory(fd_or_path: int | str) -> None:
    if isinstance(fd_or_path, int):
        os.fsync(fd_or_path)
        return
    fd = os.open(fd_or_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Checker:
    """Checks lines on the chain as they are copied; what it cannot check inline, it asks ``verify`` for."""

    def __init__(self, seq: int | None, chain: bytes | None) -> None:
        self.seq = seq
        self.chain = chain
        self.records = 0
        self.first: int | None = None
        self.irregular = False
        """A hole or a restore jump was stepped over: the whole of DEST is to be verified."""

    def check(self, line: bytes, segment: Segment, offset: int) -> None:
        """Take ``line`` (at ``offset`` of ``segment``), or raise :class:`BadLine`."""
        if is_hole(line):
            # Damage set aside: its recovery record (after it) says where the chain resumes.
            self.irregular = True
            self.seq, self.chain = None, None
            return
        try:
            seq, chain = check_line(line, self.seq, self.chain)
        except BadLine:
            if offset != 0 or self.seq is None or segment.first_seq <= self.seq + 1:
                raise
            jump = check_restore(line, (self.seq, self.chain))
            seq, chain = jump.seq, jump.chain
            self.irregular = True
        if self.seq is None and offset == 0 and seq != segment.first_seq:
            raise BadLine(f"segment {segment.name} starts with seq {seq}")
        self.seq, self.chain = seq, chain
        self.records += 1
        if self.first is None:
            self.first = seq


def _copy_lines(
    source: Segment,
    start: int,
    end: int,
    out: int,
    checker: _Checker,
    done: Callable[[int], None],
) -> tuple[int, BadLine | None]:
    """
    Copy the whole lines of ``source`` from ``start`` to ``end`` to ``out``, each checked first.

    Returns the bytes written, and the break where a line did not check
    (everything before it is written).
    """
    written = 0
    with open(source.path, "rb") as f:
        f.seek(start)
        offset = start
        carry = b""
        while offset + len(carry) < end:
            chunk = carry + f.read(min(_CHUNK, end - offset - len(carry)))
            if len(chunk) == len(carry):
                break  # the file shrank under us: what is left is checked next run
            last = chunk.rfind(b"\n")
            if last < 0:
                carry = chunk
                continue
            lines, carry = chunk[: last + 1], chunk[last + 1 :]
            good = 0
            problem: BadLine | None = None
            for line in lines.splitlines(keepends=True):
                try:
                    checker.check(line, source, offset + good)
                except BadLine as e:
                    problem = e
                    break
                good += len(line)
            if good:
                _write_all(out, lines[:good])
                written += good
                done(good)
            if problem is not None:
                return written, problem
            offset += good
    return written, None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _head(segments: list[Segment]) -> tuple[Segment, int, tuple[int, bytes] | None]:
    """
    DEST's last segment, its length after cutting a partial line, and its last line (offset, bytes).

    A partial line is what a backup interrupted while appending leaves: it is
    cut (and synced) so the next lines go after the last whole one.
    """
    last = segments[-1]
    size = os.stat(last.path).st_size
    end = _whole_end(last.path, size)
    if end < size:
        with open(last.path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return last, end, _last_line(last.path, end)


def _dest_state(segments: list[Segment], head_line: bytes | None) -> tuple[int | None, bytes | None]:
    """The (seq, chain) DEST's last record gives the next line to check against."""
    line = head_line
    if line is None:
        # An empty last segment (a backup interrupted as it began it): the one before ends DEST.
        for segment in reversed(segments[:-1]):
            found = _last_line(segment.path, os.stat(segment.path).st_size)
            if found is not None:
                line = found[1]
                break
        else:
            first = segments[0].first_seq
            return (0, b"0" * 32) if first == 1 else (None, None)
    if is_hole(line):
        return None, None
    try:
        return check_line(line, None, None)
    except BadLine as e:
        raise BackupRefused(f"DEST does not end with a whole record ({e.args[0]}): not a backup") from None


def backup(source: str, dest: str, *, progress: Progress | None = None) -> BackupResult:
    """
    Copy what is new in the journal ``source`` into the backup ``dest`` (created if missing).

    Raises :class:`BackupRefused` (nothing more copied) for a ``dest`` that is
    not a backup of this journal, or that fell behind retention; after a line
    that does not check, DEST holds everything before it and the refusal says
    where. See the module docstring.
    """
    if not os.path.isdir(source):
        raise BackupRefused(f"{source}: not a journal directory")
    if os.path.exists(dest):
        if not os.path.isdir(dest):
            raise BackupRefused(f"{dest}: not a directory")
        if os.path.samefile(dest, source):
            raise BackupRefused("DEST is the journal itself")
    else:
        os.makedirs(dest)
        _fsync_directory(os.path.dirname(os.path.abspath(dest)))
    with _locked(dest, f"{dest}: another backup into it is running", required=False):
        return _backup(source, dest, progress)


def _backup(source: str, dest: str, progress: Progress | None) -> BackupResult:
    theirs = list_segments(source)
    ours = list_segments(dest)
    # (segment of DIR, offset to copy from, DEST file to append to or None: a new segment)
    plan: list[tuple[Segment, int, str | None]] = []
    if not ours:
        if not theirs:
            return BackupResult(0, 0, 0, 0, None, None, 0, False)
        first = theirs[0].first_seq
        checker = _Checker(0, b"0" * 32) if first == 1 else _Checker(None, None)
        plan = [(segment, 0, None) for segment in theirs]
    else:
        last, size, head = _head(ours)
        seq, chain = _dest_state(ours, head[1] if head is not None else None)
        checker = _Checker(seq, chain)
        by_name = {segment.name: segment for segment in theirs}
        same = by_name.get(last.name)
        later = [segment for segment in theirs if segment.first_seq > last.first_seq]
        if same is not None:
            if head is not None:
                offset, line = head
                with open(same.path, "rb") as f:
                    f.seek(offset)
                    theirs_line = f.read(len(line))
                if theirs_line != line:
                    what = f"record #{seq}" if seq is not None else f"offset {offset} of {last.name}"
                    raise BackupRefused(
                        f"{dest} is not a backup of {source}: its {what} is not in the journal "
                        "(another journal, or one rewritten since); back up into an empty DEST"
                    )
            plan = [(same, size, last.path)]
        elif not later:
            raise BackupRefused(
                f"{dest} is not a backup of {source}: the journal holds nothing at or after "
                f"DEST's last segment {last.name}; back up into an empty DEST"
            )
        elif seq is not None and later[0].first_seq > seq + 1 and not _starts_with_restore(later[0]):
            raise BackupRefused(
                f"records #{seq + 1} to #{later[0].first_seq - 1} were removed from {source} (by retention, "
                f"or quarantined) before {dest} got them; back up into an empty DEST, and more often"
            )
        plan += [(segment, 0, None) for segment in later]
    sizes = []
    for segment, start, _ in plan:
        try:
            sizes.append(max(0, os.stat(segment.path).st_size - start))
        except FileNotFoundError:
            sizes.append(0)
    total, done_bytes = sum(sizes), 0

    def done(n: int) -> None:
        nonlocal done_bytes
        done_bytes += n
        if progress is not None:
            progress(done_bytes, total)

    copied = left_out = new_segments = 0
    problem: tuple[Segment, BadLine] | None = None
    dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for segment, start, target in plan:
            try:
                src = open(segment.path, "rb")
            except FileNotFoundError:
                if ours or checker.first is not None:
                    raise BackupRefused(
                        f"{segment.path}: removed while it was being copied; run again"
                    ) from None
                # A first backup: retention removed the oldest since they were listed; start after them.
                checker.seq, checker.chain = None, None
                continue
            with src:
                snapshot = os.fstat(src.fileno()).st_size
            end = _whole_end(segment.path, snapshot)
            left_out = snapshot - end  # only the last segment can end mid-line
            if end <= start and target is not None:
                continue
            if target is None:
                fd = os.open(
                    os.path.join(dest, segment.name),
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                    0o600,
                )
                new_segments += 1
            else:
                fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            try:
                written, broken = _copy_lines(segment, start, end, fd, checker, done)
                os.fsync(fd)
            finally:
                os.close(fd)
            if target is None:
                if broken is not None and not written:
                    os.unlink(os.path.join(dest, segment.name))  # nothing of it checked: no empty segment
                    new_segments -= 1
                os.fsync(dest_fd)
            copied += written
            if broken is not None:
                problem = (segment, broken)
                break
    finally:
        os.close(dest_fd)
    if problem is not None:
        segment, broken = problem
        after = f"#{checker.seq}" if checker.seq is not None else "the records before it"
        if checker.first is None and not copied and ours:
            raise BackupRefused(
                f"{dest} is not a backup of {source}: {segment.name} does not go on from DEST's last "
                f"record #{checker.seq} ({broken.args[0]}); back up into an empty DEST"
            )
        raise BackupRefused(
            f"the journal does not check in {segment.name} ({broken.args[0]}): {dest} holds "
            f"everything up to {after}; run cpmictl log verify on the journal"
        )
    verified = False
    if checker.irregular:
        try:
            verify_journal(dest)
        except ChainError as e:
            raise BackupRefused(f"the backup does not verify: {e}") from None
        verified = True
    return BackupResult(
        len(list_segments(dest)),
        new_segments,
        copied,
        checker.records,
        checker.first,
        checker.seq,
        left_out,
        verified,
    )


_RESTORE_KIND = kind_member(RESTORE_RECORD) + b","


def _starts_with_restore(segment: Segment) -> bool:
    with open(segment.path, "rb") as f:
        line = f.readline()
    return line.endswith(b"\n") and _RESTORE_KIND in line[:128]


# -- restore


def restore(
    backup_dir: str,
    directory: str,
    *,
    signing_key: SigningKey | None,
    gateway_id: str,
    now: Callable[[], float] = time.time,
    replace: bool = False,
) -> RestoreResult:
    """
    Make ``directory`` a journal restored from the backup ``backup_dir``; see the module docstring.

    Raises :class:`JournalBusy` if a gateway holds ``directory``, and
    :class:`BackupRefused` for anything else that stops it (one line each).
    """
    if signing_key is None:
        raise BackupRefused("a restore record must be signed: give the gateway's signing key")
    if not os.path.isdir(backup_dir):
        raise BackupRefused(f"{backup_dir}: not a backup directory")
    segments = list_segments(backup_dir)
    if not segments:
        raise BackupRefused(f"{backup_dir} holds no journal segments")
    try:
        verify_journal(backup_dir, allow_partial_tail=True)
    except ChainError as e:
        raise BackupRefused(f"the backup does not verify ({e}); restore from another") from None
    last = _last_record(segments)
    if not os.path.isdir(directory):
        os.makedirs(directory)
        _fsync_directory(os.path.dirname(os.path.abspath(directory)))
    if os.path.samefile(directory, backup_dir):
        raise BackupRefused("DIR is the backup itself")
    held = f"the journal {directory} is held by a running gateway; stop it first"
    with _locked(directory, held) as directory_fd:
        existing = list_segments(directory)
        if existing and not replace:
            raise BackupRefused(
                f"{directory} already holds a journal ({len(existing)} segments); move it away, or "
                "give --replace to keep it beside as <segment>.replaced-<time>"
            )
        moment = now()
        if moment * 1_000_000 < _micros(last.ts):
            raise BackupRefused(
                f"the clock ({format_ts(moment)}) is behind the backup's last record ({last.ts}); "
                "set the clock before restoring (the seqs go on from the time)"
            )
        floor = seq_floor(last.seq, moment)
        for name in os.listdir(directory):
            if name.endswith(_RESTORING):
                os.unlink(os.path.join(directory, name))  # an interrupted restore's
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(moment))
        replaced = []
        for segment in existing:
            aside = f"{segment.name}.replaced-{stamp}"
            os.rename(segment.path, os.path.join(directory, aside))
            replaced.append(aside)
        if replaced:
            _fsync_directory(directory_fd)
        for segment in segments:
            _copy_whole(segment.path, os.path.join(directory, segment.name + _RESTORING))
        body = restore_body(last, floor, gateway=gateway_id, key=signing_key)
        line, chain = encode_line(
            floor, format_ts(moment), RESTORE_RECORD, "", "", "", body, last.chain.encode("ascii")
        )
        name = segment_name(floor)
        path = os.path.join(directory, name + _RESTORING)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_directory(directory_fd)
        # The floor first: a journal holding any of the backup then goes on above it.
        os.rename(path, os.path.join(directory, name))
        _fsync_directory(directory_fd)
        for segment in segments:
            os.rename(
                os.path.join(directory, segment.name + _RESTORING), os.path.join(directory, segment.name)
            )
        _fsync_directory(directory_fd)
    record = Record(floor, format_ts(moment), RESTORE_RECORD, "", "", "", body, chain.decode("ascii"))
    return RestoreResult(len(segments), last.seq, floor, tuple(replaced), record)


def _micros(ts: str) -> int:
    moment = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")
    return int((moment - datetime(1970, 1, 1)).total_seconds()) * 1_000_000 + moment.microsecond


def _last_record(segments: list[Segment]) -> Record:
    """The backup's last record (whole lines only; a hole cannot end a journal that verifies)."""
    for segment in reversed(segments):
        found = _last_line(segment.path, _whole_end(segment.path, os.stat(segment.path).st_size))
        if found is None:
            continue
        line = found[1]
        if line_seq(line) is None:
            raise BackupRefused(f"the backup's last line, in {segment.name}, is not a record")
        return decode_line(line)
    raise BackupRefused("the backup holds no records")


def _copy_whole(source: str, target: str) -> None:
    """Copy a segment's whole lines to ``target`` (created), synced."""
    end = _whole_end(source, os.stat(source).st_size)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with open(source, "rb") as f:
            remaining = end
            while remaining > 0:
                chunk = f.read(min(_CHUNK, remaining))
                if not chunk:
                    raise BackupRefused(f"{source}: shorter than it was a moment ago")
                _write_all(fd, chunk)
                remaining -= len(chunk)
        os.fsync(fd)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise BackupRefused(f"{target}: no space left on the device") from None
        raise
    finally:
        os.close(fd)
