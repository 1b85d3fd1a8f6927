"""What a lot answers to the upstream platform's ACKs when the gateway stands in for it (sink "t002").

The upstream platform speaks the standard and believes it talks to the lot: it
sends command and sync downlinks (`gateOpen`, `blackList`, ...) over the TCP
connection a `DownlinkClient` holds for the lot. Those must reach the lot
itself, whatever it speaks, so a `Relay` hands each one to the lot's dialect
(through `LotRouter`, as the command API does) and turns the lot's REPLY, or
why there is none, into the REPLY the upstream gets. Sync-class downlinks go to
the gateway's own sync queue, which delivers them durably once the lot is
connected; the upstream is told they were queued.

The journal keeps both sides, the ACK as it came (`upstream-ack`) before
anything is done with it and the REPLY sent back (`upstream-reply`), paired by
the upstream's oprNum, so `cpmictl log` shows what the upstream asked and what
it was told.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.dialects.interface import Unsupported
from gateway.interfaces import DeadlinePassed, JournalAppend, LotReply, NotConnected
from gateway.journal.kinds import UPSTREAM_ACK_RECORD, UPSTREAM_REPLY_RECORD
from gateway.lotclient.downlink import DownlinkReply
from gateway.protocol.catalog import DeliveryClass, Interface, deadline_of, lookup
from gateway.protocol.envelope import Request
from gateway.protocol.results import Result
from gateway.protocol.validation import FieldError, validate

__all__ = [
    "Relay",
    "RelayLots",
    "RelaySync",
]

log = Logger()


SYNC_CLIENT = "upstream"
"""The `client` the sync queue's entries from the upstream are journaled with."""


class RelayLots(Protocol):
    """The lots as the relay sends them downlinks (`gateway.dialects.host.LotRouter` fits)."""

    def supports(self, park: str, code: str) -> bool:
        """Whether the lot's dialect can carry the downlink `code`."""

    def command(self, park: str, code: str, data: object) -> Deferred[LotReply]:
        """Send a downlink to the lot now; fires with its REPLY, or fails (NotConnected, DeadlinePassed)."""


class RelaySync(Protocol):
    """The queue of sync downlinks (`gateway.lots.sync.SyncQueue` fits)."""

    def enqueue(self, park: str, code: str, data: object, client: str) -> Deferred[int]:
        """Journal a sync entry for `park`; fires with its seq once durable, then delivers it."""


class Relay:
    """One lot's answers to the upstream's ACKs: journal, check, relay to the lot, journal the REPLY.

    Pass `answer` as a `DownlinkClient`'s `answer`. `counters` counts the ACKs
    and, once each is answered, exactly one outcome: `replied` (the lot's REPLY
    or a queued sync), `not_connected` (9008), `deadline` (9009), `refused`
    (9001/9010: not a downlink, an invalid field, or none the lot's dialect
    has) or `failed` (9999).
    """

    def __init__(
        self,
        *,
        park: str,
        lots: RelayLots,
        sync: RelaySync | None,
        journal: JournalAppend,
        clock: IReactorTime,
        deadlines: Mapping[str, float],
    ) -> None:
        self.park = park
        self.counters: dict[str, int] = dict.fromkeys(
            ("acks", "replied", "not_connected", "deadline", "refused", "failed"), 0
        )
        self._lots = lots
        self._sync = sync
        self._journal = journal
        self._clock = clock
        self._deadlines = deadlines

    def answer(self, request: Request) -> Deferred[DownlinkReply]:
        """The REPLY to the upstream's ACK `request`; never fails (an error is a 9999 REPLY).

        The ACK is journaled before anything else (not stored: 9999, and the lot
        never sees it); the REPLY is journaled before it is returned, but if that
        fails it is logged and the REPLY returned all the same: the upstream is
        owed an answer for a command the lot may already have carried out.
        """
        self.counters["acks"] += 1
        return Deferred.fromCoroutine(self._answer(request))

    async def _answer(self, request: Request) -> DownlinkReply:
        interface = lookup(request.code)
        # The journal writes the mnemonic (CONTRACT §3), even for an ACK naming a Table-1 number.
        code = interface.code if interface is not None else request.code
        park, opr = self.park, request.opr
        try:
            await maybeDeferred(
                self._journal.append, UPSTREAM_ACK_RECORD, park, code, opr, {"data": request.data}
            )
        except Exception:
            log.failure(
                "upstream ACK {code} for {park} (opr {opr}) not journaled; not relayed",
                park=park,
                code=code,
                opr=opr,
            )
            reply, outcome = DownlinkReply.of(Result.FAILED, "not stored"), "failed"
        else:
            try:
                reply, outcome = await self._relay(request, interface)
            except Exception:
                log.failure(
                    "upstream ACK {code} for {park} (opr {opr}) failed", park=park, code=code, opr=opr
                )
                reply, outcome = DownlinkReply.of(Result.FAILED, "the gateway failed to relay it"), "failed"
        self.counters[outcome] += 1
        log.debug(
            "upstream {code} for {park} (opr {opr}): {result} {outcome}",
            park=park,
            code=code,
            opr=opr,
            result=reply.result_code,
            outcome=outcome,
        )
        body = {"resultCode": reply.result_code, "resultMessage": reply.result_message, "data": reply.data}
        try:
            await maybeDeferred(self._journal.append, UPSTREAM_REPLY_RECORD, park, code, opr, body)
        except Exception:
            log.failure(
                "upstream REPLY {result} to {code} for {park} (opr {opr}) not journaled; sent anyway",
                park=park,
                code=code,
                opr=opr,
                result=reply.result_code,
            )
        return reply

    async def _relay(self, request: Request, interface: Interface | None) -> tuple[DownlinkReply, str]:
        """The REPLY to a journaled ACK of `interface` (None: unknown) and its outcome (a `counters` key)."""
        park = self.park
        if interface is None:
            return DownlinkReply.of(Result.NO_SUCH_INTERFACE, f"unknown code {request.code!r}"), "refused"
        code = interface.code
        if interface.downlink is None:
            return DownlinkReply.of(Result.NO_SUCH_INTERFACE, f"{code} is not sent down to lots"), "refused"
        try:
            data = validate(interface.request, request.data)
        except FieldError as error:
            return DownlinkReply.of(Result.FIELD_INVALID, error.message()), "refused"
        if not self._lots.supports(park, code):
            return self._unsupported(code), "refused"
        if interface.downlink is DeliveryClass.SYNC:
            return await self._enqueue(code, data)
        return await self._command(code, data)

    def _unsupported(self, code: str) -> DownlinkReply:
        return DownlinkReply.of(Result.NO_SUCH_INTERFACE, f"park {self.park}'s dialect has no {code}")

    async def _command(self, code: str, data: object) -> tuple[DownlinkReply, str]:
        park = self.park
        asked: Deferred[LotReply] = maybeDeferred(self._lots.command, park, code, data)
        asked.addTimeout(deadline_of(code, self._deadlines), self._clock)
        try:
            answered = await asked
        except NotConnected:
            detail = f"park {park} has no downlink connection"
            return DownlinkReply.of(Result.NOT_CONNECTED, detail), "not_connected"
        except (DeadlinePassed, TimeoutError, CancelledError):
            detail = f"no reply from park {park} to {code} in time"
            return DownlinkReply.of(Result.DEADLINE, detail), "deadline"
        except Unsupported:
            return self._unsupported(code), "refused"
        data = answered.data if answered.data is not None else {}
        return DownlinkReply(answered.result_code, answered.result_message, data), "replied"

    async def _enqueue(self, code: str, data: object) -> tuple[DownlinkReply, str]:
        park = self.park
        if self._sync is None:
            return DownlinkReply.of(Result.FAILED, "sync delivery not available"), "failed"
        try:
            seq = await maybeDeferred(self._sync.enqueue, park, code, data, SYNC_CLIENT)
        except Exception:
            log.failure("upstream sync {code} for {park} not queued", park=park, code=code)
            return DownlinkReply.of(Result.FAILED, "not queued"), "failed"
        detail = f"queued for delivery to park {park} (journal seq {seq})"
        return DownlinkReply.of(Result.OK, detail), "replied"
