"""
What a dialect is: the interfaces a dialect plugin provides and the gateway offers it.

A dialect adapts one kind of lot software to the gateway. It may listen on its
own `[listen]` endpoints with its own framing, authenticates its lots, turns
each legacy message into zero or more of the standard's messages, and turns the
standard's downlinks into legacy messages and the lot's answers back into the
standard's replies. Everything behind it (the journal, forwarding, the command
API) is the same for every dialect.

A dialect is a plugin: an object providing :class:`IDialect`, declared as an
entry point of the group ``cpmi_gateway.dialects`` by any installed
distribution (the built-in ones are in ``gateway/dialects/``). docs/dialects.md
is the guide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from attrs import field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory
from zope.interface import Attribute, Interface

from gateway.interfaces import DeadlinePassed, LotReply, LotState, NotConnected
from gateway.logs import describe
from gateway.lots.answers import Answer
from gateway.protocol.results import Result
from gateway.settings import LotConfig

# Re-exported, so that a dialect needs nothing else of the gateway but the test kit.
__all__ = [
    "Answer",
    "DeadlinePassed",
    "IDialect",
    "IDialectHost",
    "IDialectServer",
    "LotConfig",
    "LotReply",
    "LotState",
    "Message",
    "NotConnected",
    "Original",
    "Result",
    "Unsupported",
    "describe",
]


@frozen
class Message:
    """
    One message of the standard a legacy message stands for: an uplink ``code`` and its ``data``.

    ``sources`` maps the standard's field names to the legacy fields they were
    made from (``{"recordCode": "order_id"}``), so that a field the catalog
    refuses is named the way the lot's vendor knows it.
    """

    code: str
    data: object
    sources: Mapping[str, str] = field(factory=dict)


@frozen
class Original:
    """
    A legacy message as the journal keeps it, beside the standard messages made of it.

    ``service`` names the legacy message type (the record's ``code``);
    ``opr`` identifies it for the repeat rule (B.2.3.6): the same ``opr`` from the
    same lot within an hour is answered as the first time and stored once, so
    derive it from the message's own identity (an order number), or make a
    fresh one when it has none. One longer than 32 characters is journaled as
    its MD5, so that the standard messages made of it, stored with
    ``{opr}-{n}``, keep to the standard's 36. ``message`` is what the journal
    keeps (leave out tokens; the standard's secret fields are redacted anyway).
    When no standard message is made of it, ``message`` is forwarded to the
    cloud as it is, as ``org.cpmi.dialect.{dialect}.{service}.v1``.
    """

    service: str
    opr: str
    message: object

    def __attrs_post_init__(self) -> None:
        if not self.service:
            raise ValueError("Original.service must not be empty")
        if not self.opr:
            raise ValueError("Original.opr must not be empty")


class Unsupported(Exception):
    """A downlink the lot's dialect has no legacy counterpart for."""

    def __init__(self, dialect: str, code: str) -> None:
        super().__init__(f"the {dialect} dialect has no counterpart of {code}")
        self.dialect = dialect
        self.code = code


class IDialect(Interface):
    """A kind of lot software the gateway can speak to: a plugin."""

    name = Attribute(
        "str: what a [[lot]] entry gives as `dialect = ...`; lower case, unique among installed dialects."
    )
    listeners = Attribute(
        "tuple[str, ...]: the [listen] keys whose endpoints the dialect serves, e.g. ('bolink',). "
        "Each must be configured once a lot speaks the dialect."
    )
    summary = Attribute("str: one line saying which lot software the dialect is for.")

    def check_lot(lot: LotConfig) -> str | None:
        """What is wrong with a `[[lot]]` entry of this dialect, as "key: problem", or None.

        Called as the configuration is read: a secret the dialect signs with
        but that is empty, a password it needs but that is missing.
        """

    def serve(host: IDialectHost) -> IDialectServer:
        """Build the running dialect for this gateway; called once, before the reactor runs."""


class IDialectServer(Interface):
    """A dialect at work: its listeners' factories, and the lots' downlinks."""

    def factory(listener: str) -> IProtocolFactory:
        """The protocol factory (``IProtocolFactory``) to serve `listener`, one of the dialect's keys."""

    def supports(code: str) -> bool:
        """Whether the dialect can carry the downlink interface `code` to its lots."""

    def command(park: str, code: str, data: object) -> Deferred[LotReply]:
        """Send a downlink now; a ``Deferred`` firing with the lot's :class:`LotReply`.

        Fails with :class:`NotConnected` when the lot has no connection,
        :class:`DeadlinePassed` when it does not answer in time, and
        :class:`Unsupported` for a code the dialect cannot carry. Never queued.

        A dialect whose frames carry the standard's oprNum may also provide
        ``command_as(park, code, data, opr)``, which sends ``opr``, the oprNum
        the command was journaled under, so that the lot's reply names its
        record (CONTRACT §7); without it, commands go by ``command``.
        """

    def state(park: str) -> LotState:
        """The lot's connection, as the command API and the status page show it.

        A dialect that keeps its bound lots in a mapping may also provide
        ``bound_parks()``: the parks whose ``state`` is connected now. The
        metrics count connected lots with it at every scrape; without it they
        ask ``state`` of each of the dialect's lots.
        """

    def disconnect(park: str, reason: str) -> bool:
        """Close the lot's connection, reporting it offline through the host; whether it had one.

        Called when a reload removes the lot or changes its credentials. A
        dialect without this method keeps such a connection until it closes,
        though the host answers its messages as from an unknown park.
        """

    def start() -> None:
        """Start timers; the reactor is running."""

    def stop() -> Deferred[None] | None:
        """Close every connection (reporting bound lots offline through the host); the journal is
        still open. May return a ``Deferred``."""


class IDialectHost(Interface):
    """The gateway as a dialect sees it: its lots, the clock, the journal's door."""

    name = Attribute("str: the dialect's name.")
    clock = Attribute("IReactorTime: all time comes from here.")
    zone = Attribute("ZoneInfo: the gateway's zone; the standard's times are local times in it.")
    tcp = Attribute("gateway.config.TcpConfig: the [tcp] timers (bind_timeout, read_idle, ...).")

    def lots() -> Sequence[LotConfig]:
        """The configured lots that speak this dialect."""

    def lot(park: str) -> LotConfig | None:
        """The lot of this dialect whose park code is `park`, or None."""

    def deadline(code: str) -> float:
        """Seconds the lot has to answer the downlink `code` ([deadlines], else CONTRACT §3)."""

    def submit(park: str, original: Original, messages: Sequence[Message]) -> Deferred[Answer]:
        """Store a legacy message and the standard messages made of it.

        Returns a ``Deferred`` that never fails; it fires with the
        :class:`gateway.lots.answers.Answer` to give the lot: ``Result.OK``
        once everything is durable, the first answer again for a repeat of
        ``original.opr``, or an error naming the field (9010, from ``sources``),
        a business rule (9102, 9105) or the journal's trouble (9999, retry).
        Nothing is stored unless every message passes.

        Refusals fire at once and stored messages once durable, so answers to
        a lot's messages can come back in another order than the messages
        went: a protocol whose answers must keep order queues them itself.
        """

    def online(park: str, peer: str, how: str) -> None:
        """Journal that the lot connected (bound by `how`), and resume its sync deliveries."""

    def offline(park: str, peer: str, reason: str) -> None:
        """Journal that the lot's connection went away, and why."""
