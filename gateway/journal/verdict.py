"""What a check of the whole journal says: the records, the seals and who made them, the damage set aside.

:func:`gateway.journal.integrity.verify_journal` returns a :class:`Verdict` or
raises a :class:`~gateway.journal.damage.ChainError` (a :class:`KeyChangeError`
for a seal by another key); :mod:`gateway.journal.segcheck`, which checks one
segment, builds these values too.
"""

from __future__ import annotations

import base64

from attrs import frozen

from gateway.journal.damage import ChainError

__all__ = ["KeyChangeError", "KeyRun", "Recovery", "Verdict", "another_key"]


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


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def another_key(recorded: bytes, checked: tuple[bytes, ...], what: str = "sealed") -> str:
    if len(checked) == 1:
        return f"{what} with another key ({_b64(recorded)}) than the one checked against ({_b64(checked[0])})"
    keys = ", ".join(map(_b64, checked))
    return f"{what} with another key ({_b64(recorded)}) than the ones checked against ({keys})"
