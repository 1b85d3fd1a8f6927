"""
The forwarding engine: journal reading, order, batching, retry, progress records.

A sink (:class:`gateway.interfaces.Sink`) only delivers a batch of
:class:`~gateway.interfaces.Entry` and answers with an
:class:`~gateway.interfaces.Outcome` each, or a :class:`~gateway.interfaces.Split`;
the engine (:class:`ForwardingEngine`) does the rest. :class:`ForwardingService`
runs one engine in the service tree; several may follow one journal, each
with its own progress name.
"""

from gateway.forwarding.engine import (
    Feed,
    ForwarderJournal,
    ForwardingEngine,
    RunBlocking,
    retry_delay,
    shortened,
)
from gateway.forwarding.progress import Progress
from gateway.forwarding.service import ForwardingService

__all__ = [
    "Feed",
    "ForwarderJournal",
    "ForwardingEngine",
    "ForwardingService",
    "Progress",
    "RunBlocking",
    "retry_delay",
    "shortened",
]
