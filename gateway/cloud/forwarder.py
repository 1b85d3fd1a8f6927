"""
The ``cloudevents`` sink: batches of signed CloudEvents POSTed to ``cloud.url`` (CONTRACT §6).

It only delivers: the forwarding engine (:mod:`gateway.forwarding`) reads the
journal, orders, batches, retries and journals the progress. One POST carries
a batch (:mod:`gateway.cloud.events`, signed by :mod:`gateway.cloud.httpsig`):
a 2xx delivers it all, a 4xx other than 408/429 refuses it (a batch of one)
or splits it (several), anything else is tried again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import treq
from nacl.signing import SigningKey
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.cloud.events import BATCH_CONTENT_TYPE, event_entries
from gateway.cloud.post import HTTPRequester, failure_reason, post_signed
from gateway.interfaces import Entry, Outcome, Split
from gateway.journal.record import Record
from gateway.settings import CloudConfig

__all__ = ["CloudEventsSink"]


class CloudEventsSink:
    """Batches of signed CloudEvents POSTed to ``cloud.url`` (CONTRACT §6): the cloudevents sink."""

    def __init__(
        self,
        *,
        http: HTTPRequester,
        clock: IReactorTime,
        settings: CloudConfig,
        gateway_id: str,
        zone: ZoneInfo,
        signing_key: SigningKey,
    ) -> None:
        self._http = http
        self._clock = clock
        self._settings = settings
        self._gateway_id = gateway_id
        self._zone = zone
        self._key = signing_key

    @property
    def target(self) -> str:
        return self._settings.url

    def entries(self, records: Iterable[Record], at: float) -> list[Entry]:
        return event_entries(records, self._gateway_id, self._zone, at)

    def deliver(self, batch: Sequence[Entry]) -> Deferred[Sequence[Outcome] | Split]:
        """One POST of the whole batch; 2xx delivers all, a 4xx refuses (or splits), others retry."""
        body = b"".join((b"[", b",".join(entry.body for entry in batch), b"]"))
        exchange = post_signed(
            self._http,
            self._settings.url,
            body,
            content_type=BATCH_CONTENT_TYPE,
            key=self._key,
            keyid=self._gateway_id,
            created=int(self._clock.seconds()),
        )
        exchange.addCallback(
            lambda response: treq.content(response).addCallback(lambda text: (response, text))
        )
        timed_out = []

        def time_out() -> None:
            timed_out.append(True)
            exchange.cancel()

        timeout = self._clock.callLater(self._settings.request_timeout, time_out)

        def finished(result: object) -> object:
            if timeout.active():
                timeout.cancel()
            return result

        def answered(answer: tuple[Any, bytes]) -> Sequence[Outcome] | Split:
            status, text = answer[0].code, answer[1]
            if 200 <= status < 300:
                return [Outcome.delivered(status)] * len(batch)
            if 400 <= status < 500 and status not in (408, 429):
                if len(batch) > 1:
                    return Split(status, text)
                return [Outcome.refusal(status, text)]
            # The answer goes along for whoever shows it (cpmictl log replay); the engine retries.
            return [Outcome(False, status, answer=text, reason=f"HTTP {status}")] * len(batch)

        def failed(failure: Failure) -> Sequence[Outcome]:
            reason = (
                f"no answer within {self._settings.request_timeout:g} s"
                if timed_out
                else failure_reason(failure)
            )
            return [Outcome.not_yet(reason)] * len(batch)

        exchange.addBoth(finished)
        return exchange.addCallbacks(answered, failed)
