"""
Start-up recovery: find the journal's head, cut a torn tail, set damaged records aside (blocking I/O).

Only the last segment can be torn: the writer syncs a segment before it starts
the next one (see ``writer.py``). So recovery trusts the last line of the
segment before the last, and checks the last segment from its first line.

A bad line (partial, malformed, out of seq or off the chain) is one of two things:

- **Damage** (:class:`SetAside`): whole lines, holding no NUL byte, followed
  by an intact record whose chain is proven from what the bad lines still
  say (:func:`locate_damage`). Only the bad lines are set aside: their bytes
  are copied to ``<segment>.damaged-<offset>``, a signed ``recovery`` record
  names them, then they are overwritten in place by a *hole* (``#`` bytes and
  a newline, the same length, so no offset moves) that every reader skips.
  The records after them stay live and the check goes on from there.
- **A torn tail**: anything else. Everything from the bad line on is cut, and
  kept in ``<segment>.cut-<offset>`` (not a segment name, so readers skip it),
  for whoever wants to know what was lost. A crash leaves this, not damage:
  a torn write is a partial line, or zeros running into the lines after it.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable, Mapping
from hashlib import blake2b

from attrs import frozen
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from gateway.journal.kinds import RECOVERY_RECORD, kind_member
from gateway.journal.record import (
    CHAIN_TAIL_LEN,
    GENESIS_CHAIN,
    BadLine,
    Record,
    chain_digest,
    check_line,
    decode_line,
    dumps_compact,
)
from gateway.journal.segments import Segment, iter_lines, list_segments, read_last_line

__all__ = [
    "DAMAGED",
    "Cut",
    "Quarantine",
    "RecoveredTail",
    "SetAside",
    "check_recovery",
    "fill_hole",
    "find_recovery",
    "holds_set_aside",
    "is_hole",
    "locate_damage",
    "recover",
    "recovery_message",
    "resume_point",
    "save_damaged",
]

_COPY_CHUNK = 1 << 20


DAMAGED = "damaged"
"""The ``reason`` of a signed ``recovery`` record for damaged lines set aside."""

HOLE = b"#"
"""The byte that overwrites damaged lines set aside (with a newline at the end): no record starts with it."""

_MAX_CANDIDATES = 8
# A recovery record found the way verify finds seals: its kind in the head.
_RECOVERY_KIND = kind_member(RECOVERY_RECORD)
_RECOVERY_HEAD = re.compile(rb'\{"seq":[1-9][0-9]*,"ts":"[^"\\]*",' + re.escape(_RECOVERY_KIND) + b",")
_RECOVERY_REACH = 128


def is_hole(line: bytes) -> bool:
    """Whether a line is a hole left where damaged lines were set aside."""
    return line[:1] == HOLE


@frozen
class SetAside:
    """
    Damaged lines set aside alone, and the intact record the chain resumes at.

    ``length`` bytes from ``offset`` of ``segment``, whole lines (``lines`` of
    them), their BLAKE2b-128 ``digest``. ``before`` is the (seq, chain) of the
    last intact record before them (chain None: an anchor, older segments
    removed); ``after`` is the first intact record after them: its seq, the
    chain its own chain is computed from (what the lost record's chain was),
    and its chain. The seqs from ``before`` + 1 to ``after`` - 1 are lost
    (none for a line that was inserted).
    """

    segment: str
    offset: int
    length: int
    lines: int
    digest: str
    detail: str
    before: tuple[int, str | None]
    after: tuple[int, str, str]
    saved_as: str = ""

    @property
    def lost(self) -> tuple[int, int] | None:
        """The first and last seq lost, or None when no seq was lost."""
        first, last = self.before[0] + 1, self.after[0] - 1
        return (first, last) if first <= last else None

    def unsigned_body(self, gateway: str, key: VerifyKey | None) -> dict[str, object]:
        """The body of its ``recovery`` record, all but the signature (which signs this)."""
        lost = self.lost
        body: dict[str, object] = {
            "reason": DAMAGED,
            "detail": self.detail,
            "segment": self.segment,
            "offset": self.offset,
            "bytes": self.length,
            "lines": self.lines,
            "digest": self.digest,
            "lost": {"first": lost[0], "last": lost[1]} if lost is not None else None,
            "before": {"seq": self.before[0], "chain": self.before[1]},
            "after": {"seq": self.after[0], "prev_chain": self.after[1], "chain": self.after[2]},
            "saved_as": self.saved_as,
            "gateway": gateway,
        }
        if key is not None:
            body["key"] = base64.b64encode(bytes(key)).decode("ascii")
        return body

    def body(self, gateway: str, key: SigningKey | None) -> dict[str, object]:
        """The body of its ``recovery`` record, signed with ``key`` (unsigned without one)."""
        if key is None:
            return self.unsigned_body(gateway, None)
        body = self.unsigned_body(gateway, key.verify_key)
        body["signature"] = base64.b64encode(key.sign(recovery_message(body)).signature).decode("ascii")
        return body


def recovery_message(body: Mapping[str, object]) -> bytes:
    """What a ``recovery`` record's signature signs: a label and its body but the signature, compact."""
    unsigned = {name: value for name, value in body.items() if name != "signature"}
    return b"cpmi-journal-recovery\n" + dumps_compact(unsigned)


def check_recovery(body: object) -> tuple[bytes, str | None]:
    """
    The key a signed ``recovery`` record's body records, and why its signature fails (None: it holds).

    Raises ``ValueError`` when the body records no usable key (or is no object).
    """
    if not isinstance(body, Mapping):
        raise ValueError("recovery body is not an object")
    key_text, signature = body.get("key"), body.get("signature")
    try:
        if not isinstance(key_text, str):
            raise ValueError
        key = base64.b64decode(key_text, validate=True)
        verify_key = VerifyKey(key)
    except (ValueError, binascii.Error, TypeError):
        raise ValueError("recovery record does not record a base64 Ed25519 public key") from None
    if not isinstance(signature, str):
        return key, "recovery record is not signed"
    try:
        verify_key.verify(recovery_message(body), base64.b64decode(signature, validate=True))
    except (binascii.Error, ValueError, BadSignatureError):
        return key, "recovery record signature does not verify with the key it records"
    return key, None


def _tail_chain(line: bytes) -> bytes | None:
    """The chain a line's tail records, if it has the tail's shape."""
    if len(line) < CHAIN_TAIL_LEN or not line.endswith(b'"}\n'):
        return None
    tail = line[-CHAIN_TAIL_LEN:]
    if not tail.startswith(b',"chain":"'):
        return None
    chain = tail[10:42]
    return chain if re.fullmatch(rb"[0-9a-f]{32}", chain) else None


def _chains_of(line: bytes, before: list[bytes]) -> list[bytes]:
    """
    What the chain of a damaged line may have been: the one its tail records, or its chain computed anew.

    Computed from each chain the line before it may have had (``before``): that
    is right when only its tail was altered. At most a few are kept.
    """
    found: list[bytes] = []
    recorded = _tail_chain(line)
    if recorded is not None:
        found.append(recorded)
    if len(line) > CHAIN_TAIL_LEN:
        head = line[:-CHAIN_TAIL_LEN]
        found += [chain_digest(chain, head) for chain in before]
    return list(dict.fromkeys(found))[:_MAX_CANDIDATES]


def _resumes(line: bytes, before_seq: int, candidates: list[bytes]) -> tuple[int, bytes, bytes] | None:
    """The (seq, prev chain, chain) of ``line`` if it is an intact record chained on one of ``candidates``."""
    try:
        seq, chain = check_line(line, None, None)
    except BadLine:
        return None
    if seq <= before_seq:
        return None
    head = line[:-CHAIN_TAIL_LEN]
    for candidate in candidates:
        if chain_digest(candidate, head) == chain:
            return seq, candidate, chain
    return None


def locate_damage(
    segments: list[Segment], index: int, offset: int, before: tuple[int, bytes | None], detail: str
) -> SetAside | None:
    """
    The damaged lines from ``offset`` of ``segments[index]`` on, if the chain resumes after them; else None.

    ``before`` is the (seq, chain) of the last intact record before the bad
    line. The damage is the bad line and the lines after it up to the first
    intact record whose chain is proven: computed from the chain the line
    before it records, or that line's chain computed anew from its own head
    (only its tail was altered), or ``before``'s chain (the bad lines were
    inserted). That record may begin the next segment. None when no such
    record follows, or the lines are not whole or hold a NUL byte: what a
    torn write leaves, not damage.
    """
    segment = segments[index]
    before_seq, before_chain = before
    # The chains the line before the next one may have had; before's, for inserted lines.
    inserted = [before_chain] if before_chain is not None else []
    possible = list(inserted)
    digest = blake2b(digest_size=16)
    length = lines = 0
    for _, line in iter_lines(segment.path, offset):
        if lines:
            found = _resumes(line, before_seq, list(dict.fromkeys(possible + inserted)))
            if found is not None:
                return _set_aside(segment, offset, length, lines, digest.hexdigest(), detail, before, found)
        if not line.endswith(b"\n") or b"\0" in line:
            return None
        digest.update(line)
        length += len(line)
        lines += 1
        possible = _chains_of(line, possible)
    if not lines or index + 1 >= len(segments):
        return None
    following = segments[index + 1]
    for _, line in iter_lines(following.path):
        found = _resumes(line, before_seq, list(dict.fromkeys(possible + inserted)))
        if found is not None and found[0] == following.first_seq:
            return _set_aside(segment, offset, length, lines, digest.hexdigest(), detail, before, found)
        break
    return None


def _set_aside(
    segment: Segment,
    offset: int,
    length: int,
    lines: int,
    digest: str,
    detail: str,
    before: tuple[int, bytes | None],
    after: tuple[int, bytes, bytes],
) -> SetAside:
    before_chain = before[1].decode("ascii") if before[1] is not None else None
    return SetAside(
        segment.name,
        offset,
        length,
        lines,
        digest,
        detail,
        (before[0], before_chain),
        (after[0], after[1].decode("ascii"), after[2].decode("ascii")),
    )


def find_recovery(directory: str, segment: str, offset: int) -> Record | None:
    """
    The (signed or not) ``recovery`` record that sets aside damage at ``offset`` of ``segment``.

    Looked for after the damage only (a recovery record always comes after
    what it names): the rest of that segment and the later ones. Read only
    where damage is, so its cost does not matter.
    """
    segments = [s for s in list_segments(directory) if s.name >= segment]
    for each in segments:
        start = offset if each.name == segment else 0
        for _, line in iter_lines(each.path, start):
            if line.find(_RECOVERY_KIND, 0, _RECOVERY_REACH) < 0 or _RECOVERY_HEAD.match(line) is None:
                continue
            try:
                record = decode_line(line)
            except BadLine:
                continue
            body = record.body
            if (
                isinstance(body, dict)
                and body.get("reason") == DAMAGED
                and body.get("segment") == segment
                and body.get("offset") == offset
                and isinstance(body.get("after"), dict)
            ):
                return record
    return None


def resume_point(body: Mapping[str, object]) -> tuple[int, int, bytes] | None:
    """From a damage ``recovery`` body: the bytes set aside, the seq the chain resumes at, its prev chain."""
    after, length = body.get("after"), body.get("bytes")
    if not isinstance(after, Mapping) or type(length) is not int or length <= 0:
        return None
    seq, prev = after.get("seq"), after.get("prev_chain")
    if type(seq) is not int or not isinstance(prev, str) or re.fullmatch(r"[0-9a-f]{32}", prev) is None:
        return None
    return length, seq, prev.encode("ascii")


def save_damaged(segment: Segment, damage: SetAside, fsync: Callable[[int], None], directory_fd: int) -> str:
    """Copy the damaged bytes to ``<segment>.damaged-<offset>`` (synced); return its name."""
    directory = os.path.dirname(segment.path)
    saved_as = f"{segment.name}.damaged-{damage.offset}"
    with open(segment.path, "rb") as src:
        src.seek(damage.offset)
        data = src.read(damage.length)
    with open(os.path.join(directory, saved_as), "wb") as dst:
        dst.write(data)
        dst.flush()
        fsync(dst.fileno())
    fsync(directory_fd)
    return saved_as


def holds_set_aside(path: str, offset: int, length: int, digest: object) -> bool:
    """Whether ``length`` bytes at ``offset`` are a hole, or still the damaged bytes of ``digest``."""
    with open(path, "rb") as file:
        file.seek(offset)
        data = file.read(length)
    if len(data) != length:
        return False
    if data == HOLE * (length - 1) + b"\n":
        return True
    return blake2b(data, digest_size=16).hexdigest() == digest


def fill_hole(path: str, offset: int, length: int, fsync: Callable[[int], None]) -> None:
    """Overwrite ``length`` bytes at ``offset`` with a hole: ``#`` bytes and a newline (synced)."""
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(HOLE * (length - 1) + b"\n")
        file.flush()
        fsync(file.fileno())


@frozen
class Cut:
    """What recovery cut off the end of the last segment."""

    segment: str
    offset: int
    dropped_bytes: int
    reason: str
    last_good_seq: int
    saved_as: str

    def as_body(self) -> dict[str, object]:
        """The body of the ``recovery`` record that reports this cut."""
        return {
            "segment": self.segment,
            "offset": self.offset,
            "dropped_bytes": self.dropped_bytes,
            "reason": self.reason,
            "last_good_seq": self.last_good_seq,
            "saved_as": self.saved_as,
        }


@frozen
class Quarantine:
    """
    Damage inside a segment (not a torn tail): a bad line with whole records after it.

    ``seq`` is the first seq that cannot be vouched for. For the last segment,
    everything from ``offset`` on was moved to ``saved_as`` and the journal goes
    on after ``last_seq``, the highest seq found there, so no seq is used twice.
    For an older segment (found while replaying) nothing is moved: readers skip
    the damaged line, and ``saved_as`` is empty.
    """

    segment: str
    offset: int
    seq: int | None
    reason: str
    last_seq: int | None
    saved_as: str

    def as_body(self) -> dict[str, object]:
        """The body of the ``quarantine`` record that reports it."""
        return {
            "segment": self.segment,
            "offset": self.offset,
            "seq": self.seq,
            "reason": self.reason,
            "last_seq": self.last_seq,
            "saved_as": self.saved_as,
        }

    @classmethod
    def from_body(cls, body: dict[str, object]) -> Quarantine:
        """The quarantine a ``quarantine`` record reports (missing fields read as unknown)."""

        def number(name: str) -> int | None:
            value = body.get(name)
            return value if type(value) is int else None

        return cls(
            str(body.get("segment", "")),
            number("offset") or 0,
            number("seq"),
            str(body.get("reason", "")),
            number("last_seq"),
            str(body.get("saved_as", "")),
        )


@frozen
class RecoveredTail:
    """
    The journal's head after recovery.

    ``segment`` is the last segment (None in an empty directory, or when the
    last one was quarantined: the next record starts a new one) and ``size``
    its length, which ends with a whole record.
    """

    last_seq: int
    last_chain: bytes
    segment: Segment | None
    size: int
    cut: Cut | None
    quarantine: Quarantine | None = None
    set_aside: tuple[SetAside, ...] = ()
    """Damage found in the last segment, to be set aside (its holes are not made yet)."""


def _previous_head(segments: list[Segment]) -> tuple[int | None, bytes | None]:
    """
    The seq and chain the last segment must continue from (None: unknown).

    When the segment before it does not end with a whole record, or the seqs
    do not meet (a quarantine went on after a higher seq, or a segment is
    missing), the last segment's first record is taken as an anchor: the
    damage is for ``verify`` and the operator to see, and no reason to stop
    the gateway from starting.
    """
    last = segments[-1]
    if len(segments) == 1:
        if last.first_seq == 1:
            return 0, GENESIS_CHAIN
        # Older segments were removed: the first record is an anchor.
        return last.first_seq - 1, None
    before = segments[-2]
    line = read_last_line(before.path)
    try:
        if line is None:
            raise BadLine("empty segment")
        seq, chain = check_line(line, None, None)
    except BadLine:
        return last.first_seq - 1, None
    if seq + 1 != last.first_seq:
        return last.first_seq - 1, None
    return seq, chain


def _save_and_cut(
    segment: Segment, offset: int, fsync: Callable[[int], None], directory_fd: int, label: str = "cut"
) -> tuple[int, str]:
    """Copy the bytes from ``offset`` to a ``.cut-`` (or other label) file, then truncate; both synced."""
    directory = os.path.dirname(segment.path)
    saved_as = f"{segment.name}.{label}-{offset}"
    n = 0
    while os.path.exists(os.path.join(directory, saved_as)):  # cut here before
        n += 1
        saved_as = f"{segment.name}.cut-{offset}.{n}"
    dropped = 0
    with open(segment.path, "r+b") as src:
        src.seek(offset)
        with open(os.path.join(directory, saved_as), "xb") as dst:
            while chunk := src.read(_COPY_CHUNK):
                dst.write(chunk)
                dropped += len(chunk)
            dst.flush()
            fsync(dst.fileno())
        src.truncate(offset)
        src.flush()
        fsync(src.fileno())
    fsync(directory_fd)
    return dropped, saved_as


def recover(directory: str, *, directory_fd: int, fsync: Callable[[int], None] = os.fsync) -> RecoveredTail:
    """
    Find the head of the journal in ``directory`` and cut a torn tail.

    Damage in the last segment (see :func:`locate_damage`) is stepped over and
    returned in :attr:`RecoveredTail.set_aside`, for the journal to set aside
    (:func:`save_damaged`, a signed record, :func:`fill_hole`). A bad line
    followed by whole records that do not chain on is no tear either: it is
    set aside with them as a :class:`Quarantine` instead of cut (see there).
    """
    segments = list_segments(directory)
    if not segments:
        return RecoveredTail(0, GENESIS_CHAIN, None, 0, None)
    last = segments[-1]
    prev_seq, prev_chain = _previous_head(segments)
    assert prev_seq is not None
    seq, chain = prev_seq, prev_chain
    good_end = 0
    reason: str | None = None
    damaged: list[SetAside] = []
    position: int | None = 0
    while position is not None:
        start, position = position, None
        for offset, line in iter_lines(last.path, start):
            try:
                seq, chain = check_line(line, seq, chain)
            except BadLine as e:
                if is_hole(line):
                    # Damage set aside before: the chain goes on where its recovery record says.
                    found = find_recovery(directory, last.name, offset)
                    point = (
                        resume_point(found.body)
                        if found is not None and isinstance(found.body, dict)
                        else None
                    )
                    if point is not None:
                        length, resume_seq, resume_prev = point
                        seq, chain = resume_seq - 1, resume_prev
                        position = good_end = offset + length
                        break
                damage = locate_damage(segments, len(segments) - 1, offset, (seq, chain), e.args[0])
                if damage is None:
                    reason = e.args[0]
                    break
                damaged.append(damage)
                seq, chain = damage.after[0] - 1, damage.after[1].encode("ascii")
                position = good_end = offset + damage.length
                break
            good_end = offset + len(line)
    cut: Cut | None = None
    if reason is not None:
        head = _whole_record_after(last, good_end, seq + 1)
        if head is not None:
            # Whole records follow the bad line: not a torn tail but damage inside
            # the segment. They are set aside with it, and the journal goes on
            # after the highest seq among them, in a new segment, so that no seq
            # (and no event id sent to the cloud) is ever used twice.
            last_seq, last_chain = head
            _, saved_as = _save_and_cut(last, good_end, fsync, directory_fd, label="quarantined")
            quarantine = Quarantine(last.name, good_end, seq + 1, reason, last_seq, saved_as)
            return RecoveredTail(last_seq, last_chain, None, 0, None, quarantine, tuple(damaged))
        dropped, saved_as = _save_and_cut(last, good_end, fsync, directory_fd)
        cut = Cut(last.name, good_end, dropped, reason, seq, saved_as)
    # With older segments removed and nothing whole left, the next record is an
    # anchor too; any prev will do.
    return RecoveredTail(seq, chain or GENESIS_CHAIN, last, good_end, cut, None, tuple(damaged))


def _whole_record_after(segment: Segment, offset: int, seq: int) -> tuple[int, bytes] | None:
    """
    If the bad line at ``offset`` is an altered record rather than a torn write: the last good head.

    An altered record is a whole line, where record ``seq`` should be, followed
    at once by a well-formed record ``seq + 1``: a crash cannot leave that (a
    torn write leaves a partial line, or zeros running into later lines, so
    the next whole line is not ``seq + 1``). Then the seq and chain of the last
    well-formed record of the segment are returned, else None.
    """
    lines = iter_lines(segment.path, offset)
    _, bad = next(lines)
    if not bad.endswith(b"\n"):
        return None
    head: tuple[int, bytes] | None = None
    for _, line in lines:
        try:
            found = check_line(line, None, None)
        except BadLine:
            if head is None:
                return None
            continue
        if head is None and found[0] != seq + 1:
            return None
        head = found
    return head
