"""
The forwarding engine and what a sink deals in: journal reading, order, batching, retry, progress.

A sink (:class:`Sink`) only delivers a batch of :class:`Entry` and answers
with an :class:`Outcome` each, or a :class:`Split`; the engine
(:class:`ForwardingEngine`) does the rest. :class:`ForwardingService` runs
one engine in the service tree; several may follow one journal.
"""

from gateway.forwarding.engine import (
    Entry,
    Feed,
    ForwarderJournal,
    ForwardingEngine,
    Outcome,
    RunBlocking,
    Sink,
    Split,
    retry_delay,
    shortened,
)
from gateway.forwarding.progress import FORWARDED_RECORD, REJECTED_RECORD, Progress
from gateway.forwarding.service import ForwardingService

__all__ = [
    "FORWARDED_RECORD",
    "REJECTED_RECORD",
    "Entry",
    "Feed",
    "ForwarderJournal",
    "ForwardingEngine",
    "ForwardingService",
    "Outcome",
    "Progress",
    "RunBlocking",
    "Sink",
    "Split",
    "retry_delay",
    "shortened",
]
