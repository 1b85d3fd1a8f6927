"""The shared words: interfaces and value types that cross rooms.

Every side imports these from here, and no module declares them again (as
tahoe-lafs keeps ``allmydata/interfaces.py``). This module imports nothing of
the gateway, so any room may import it.

- The lots: `LotReply`, `LotState`, the command errors `NotConnected` and
  `DeadlinePassed`, and `LotCommands` (`gateway.dialects.host.LotRouter` and
  `gateway.lots.downlink.Downlinks` provide it).
- The journal: `Record` (one record, as appended and read back; the journal's
  `gateway.journal.record` gives it too), `JournalAppend` (its append) and
  `JournalPosition` (how far it is); `gateway.journal.writer.Journal` provides both.
- The sinks: `Sink` and the values it trades with the forwarder (`Entry`,
  `Outcome`, `Split`).
- The cluster: `NatsState`, the NATS connection as /readyz, the metrics and
  the status page show it (`gateway.cluster.connection.NatsConnection`).

Record kinds live in `gateway.journal.kinds`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol

from attrs import frozen
from twisted.internet.defer import Deferred

__all__ = [
    "DeadlinePassed",
    "Entry",
    "JournalAppend",
    "JournalPosition",
    "LotCommands",
    "LotReply",
    "LotState",
    "NatsState",
    "NotConnected",
    "Outcome",
    "Record",
    "Sink",
    "Split",
]


@frozen
class Record:
    """One journal record, as appended and as read back."""

    seq: int
    ts: str
    kind: str
    park: str
    code: str
    opr: str
    body: object
    chain: str


# The lots


class NotConnected(Exception):
    """The lot has no bound downlink connection (or lost it before replying)."""

    def __init__(self, park: str) -> None:
        super().__init__(f"lot {park} is not connected")
        self.park = park


class DeadlinePassed(Exception):
    """The lot did not reply to a command within its deadline."""

    def __init__(self, park: str, code: str, deadline: float) -> None:
        super().__init__(f"lot {park} did not reply to {code} within {deadline:g} s")
        self.park = park
        self.code = code
        self.deadline = deadline


@frozen
class LotReply:
    """A lot's REPLY to a command: the business answer the cloud gets."""

    result_code: str
    result_message: str
    data: object


@frozen
class LotState:
    """A lot's downlink connection as the command API shows it."""

    park: str
    connected: bool
    since: float | None
    last_seen: float | None
    peer: str


class LotCommands(Protocol):
    """The lots' side as the cloud sees it: commands down, connection states.

    `gateway.dialects.host.LotRouter` provides it for every dialect;
    `gateway.lots.downlink.Downlinks` for the standard's lots alone.
    """

    def supports(self, park: str, code: str) -> bool:
        """Whether the lot's dialect can carry the downlink `code`."""

    def command(self, park: str, code: str, data: object, opr: str = "") -> Deferred[LotReply]:
        """Send a command as oprNum `opr`; fires with its REPLY, or fails NotConnected/DeadlinePassed."""

    def state(self, park: str) -> LotState:
        """The connection state of one lot."""

    def states(self) -> list[LotState]:
        """The connection state of the configured lots."""


# The journal


class JournalAppend(Protocol):
    """The journal's append: fires with the record (its `seq`) once it is durable."""

    def append(self, kind: str, park: str, code: str, opr: str, body: object) -> Deferred[Record]:
        """Append one record of `kind` (`gateway.journal.kinds`)."""


class JournalPosition(Protocol):
    """How far the journal is, and whether it is well (the status page, /readyz, the metrics)."""

    @property
    def last_seq(self) -> int:
        """The seq of the last record appended."""

    @property
    def committed_seq(self) -> int:
        """The seq of the last record durable."""

    @property
    def problem(self) -> str | None:
        """Why appends fail now (a full disk, say); None while they succeed."""

    @property
    def quarantined(self) -> Sequence[object]:
        """Damage set aside at start, until the next start."""


# The sinks


class Entry(NamedTuple):
    """One event waiting to go: its record's identity and what the sink sends of it (``body``).

    A typed named tuple rather than a frozen attrs class: one is made per event on the
    reactor thread (`Sink.entries`), in a third of the time (docs/benchmarks.md, NATS).
    """

    seq: int
    park: str
    code: str
    opr: str
    id: str
    type: str
    body: bytes
    at: float  # when it was taken from the journal (for the batch delay)
    ts: str  # the record's journal time (for the lag)


@frozen
class Outcome:
    """
    What became of one event of a batch.

    ``done``: delivered, or (``refused``) refused for good with the ``answer``;
    either way it is not sent again. Not done: it is sent again after the
    backoff, and ``reason`` says why not this time.
    """

    done: bool
    status: int | None = None
    refused: bool = False
    answer: bytes = b""
    reason: str = ""
    # Not done, and paced by the sink: the lot's events wait until then, other lots' go on.
    retry_at: float | None = None

    @classmethod
    def delivered(cls, status: int) -> Outcome:
        return cls(True, status)

    @classmethod
    def refusal(cls, status: int, answer: bytes) -> Outcome:
        return cls(True, status, refused=True, answer=answer)

    @classmethod
    def not_yet(cls, reason: str, status: int | None = None, retry_at: float | None = None) -> Outcome:
        return cls(False, status, reason=reason, retry_at=retry_at)


@frozen
class Split:
    """The sink refused a batch of several events as a whole: find the refused ones by halving it."""

    status: int
    answer: bytes


class Sink(Protocol):
    """Where the forwarder's events go, and how: CloudEvents batches, or a T/CPMI 002 upstream."""

    @property
    def target(self) -> str:
        """Where events go, for the log (a URL)."""

    def entries(self, records: Iterable[Record], at: float) -> list[Entry]:
        """The events among `records` (may run in a thread: no state, no I/O)."""

    def deliver(self, batch: Sequence[Entry]) -> Deferred[Sequence[Outcome] | Split]:
        """Send `batch`; fires with an Outcome per entry, in order, or a Split; never fails."""


# The cluster


class NatsState(Protocol):
    """The gateway's NATS connection, as /readyz, the metrics and the status page show it."""

    @property
    def state(self) -> str:
        """connecting | connected | reconnecting | closed."""

    @property
    def reconnects(self) -> int:
        """Reconnections since start."""

    @property
    def last_error(self) -> str:
        """The last connection error ("" once connected again)."""
