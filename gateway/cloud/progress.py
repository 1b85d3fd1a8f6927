"""Where forwarding stands, read back from the journal's forwarded and rejected records.

Kept apart from the forwarder so that readers of the journal (start-up,
``cpmictl log stats``) need none of its HTTP machinery.
"""

from __future__ import annotations

from gateway.journal.record import Record

__all__ = ["Progress"]


class Progress:
    """Where forwarding stands after the start-up replay: the highest ``through`` journaled."""

    def __init__(self) -> None:
        self.through = 0

    def restore(self, record: Record) -> None:
        """Replay one ``forwarded`` or ``rejected`` record."""
        body = record.body
        through = body.get("through") if isinstance(body, dict) else None
        if type(through) is int and through > self.through:
            self.through = through
