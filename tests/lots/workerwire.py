"""The worker processes' wire (gateway.lots.workerloop), as the tests write jobs and read outcomes."""

from __future__ import annotations

import marshal
from typing import Any

from gateway.lots.workerloop import JOB_HEAD, OUTCOME_HEAD

__all__ = ["job_of", "outcomes"]


def job_of(meta: tuple[Any, ...], body: bytes) -> bytes:
    """One job: its head, the marshalled `meta`, the body."""
    packed = marshal.dumps(meta)
    return JOB_HEAD.pack(len(packed), len(body)) + packed + body


def outcomes(data: bytes) -> list[tuple[Any, ...]]:
    """Every outcome framed in `data`, in order."""
    found = []
    while data:
        (size,) = OUTCOME_HEAD.unpack(data[: OUTCOME_HEAD.size])
        found.append(marshal.loads(data[OUTCOME_HEAD.size : OUTCOME_HEAD.size + size]))
        data = data[OUTCOME_HEAD.size + size :]
    return found
