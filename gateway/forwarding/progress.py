"""Where forwarding stands, read back from the journal's forwarded and rejected records.

Kept apart from the forwarding engine so that readers of the journal (start-up,
``cpmictl log stats``) need none of its HTTP machinery.
"""

from __future__ import annotations

from gateway.journal.record import Record

__all__ = ["Progress"]


class Progress:
    """Where one engine's forwarding stands after the start-up replay: the highest ``through`` journaled.

    ``sink`` is the engine's progress name: ``""`` (the main sink) reads the
    records that name no sink, as every journal written before had them.
    """

    def __init__(self, sink: str = "") -> None:
        self.sink = sink
        self.through = 0

    def restore(self, record: Record) -> None:
        """Replay one ``forwarded`` or ``rejected`` record (another engine's is left alone)."""
        body = record.body
        if not isinstance(body, dict) or body.get("sink", "") != self.sink:
            return
        through = body.get("through")
        if type(through) is int and through > self.through:
            self.through = through
