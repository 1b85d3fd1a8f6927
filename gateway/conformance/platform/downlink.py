"""The downlink checks of a platform run: each downlink triggered, its ACK and REPLY checked.

Triggered through the command API (CONTRACT §6) when one is given, otherwise by
a human operator told what to trigger; the kit's lot answers with the
simulator's ``LotModel``.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import treq
from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.http_headers import Headers

from gateway.conformance.checks import platform_checks
from gateway.conformance.platform.session import (
    PlatformSession,
    Verdict,
    describe,
    failed,
    passed,
    skipped,
)
from gateway.conformance.report import Outcome
from gateway.conformance.samples import Scene, downlink_sample
from gateway.lotclient.downlink import DownlinkClient, DownlinkReply
from gateway.protocol.catalog import DeliveryClass, Interface, lookup
from gateway.protocol.envelope import EnvelopeError, Request, parse_request
from gateway.protocol.signing import compact, signature_matches
from gateway.protocol.validation import FieldError, validate

ESCAPED_VALUE = "G$1#2*3"
"""A gate code holding the three characters the framing escapes."""


@define
class _Ack:
    """A downlink ACK as the kit's lot saw it: the payload as framed, the parsed request, the reply."""

    payload: bytes
    request: Request | None = None
    error: str = ""
    reply: DownlinkReply | None = None


def _escapes_missing(payload: bytes) -> list[str]:
    return [char for char in ("$", "#", "*") if char.encode() in payload]


class DownlinkChecks:
    """The kit's lot bound on the downlink, and the checks of what the platform sends it."""

    def __init__(self, session: PlatformSession) -> None:
        self.session = session
        self._acks: dict[str, _Ack] = {}
        self._ack_waiters: dict[str, Deferred[_Ack | None]] = {}

    def _observe(self, payload: bytes) -> None:
        """Every frame the kit's lot receives: ACKs are kept (as framed) for their checks."""
        try:
            message = json.loads(payload.decode("utf-8"))
        except ValueError:
            return
        if not isinstance(message, dict) or "resultCode" in message or message.get("code") == "heartbeat":
            return
        interface = lookup(str(message.get("code", "")))
        code = interface.code if interface is not None else str(message.get("code", ""))
        ack = _Ack(payload)
        try:
            ack.request = parse_request(payload.decode("utf-8"))
        except EnvelopeError as error:
            ack.error = error.detail
        if ack.request is not None:
            self._acks[ack.request.opr] = ack
        waiter = self._ack_waiters.pop(code, None)
        if waiter is not None:
            waiter.callback(ack)

    def _answer(self, request: Request) -> DownlinkReply:
        """The lot's REPLY: the simulator's lot model decides it."""
        assert self.session.model is not None
        interface = lookup(request.code)
        code = interface.code if interface is not None else request.code
        reply = self.session.model.answer(code, request.data, self.session.now()).reply
        ack = self._acks.get(request.opr)
        if ack is not None:
            ack.reply = reply
        return reply

    def _await_ack(self, code: str, timeout: float) -> Deferred[_Ack | None]:
        waiter: Deferred[_Ack | None] = Deferred()
        self._ack_waiters[code] = waiter

        def expired() -> None:
            if self._ack_waiters.get(code) is waiter:
                del self._ack_waiters[code]
                waiter.callback(None)

        call = self.session.clock.callLater(timeout, expired)

        def arrived(result: _Ack | None) -> _Ack | None:
            if call.active():
                call.cancel()
            return result

        waiter.addCallback(arrived)
        return waiter

    def _ack_problems(self, interface: Interface, ack: _Ack, sent: object | None) -> list[str]:
        raw = _escapes_missing(ack.payload)
        problems = (
            [f"raw {', '.join(repr(c) for c in raw)} inside the frame (must be escaped \\u00xx)"]
            if raw
            else []
        )
        request = ack.request
        if request is None:
            return [*problems, f"not a request envelope: {ack.error}"]
        if lookup(request.code) is not interface:
            problems.append(f"its code {request.code!r} is not {interface.code!r}")
        if not request.opr:
            problems.append("it has no oprNum")
        lot_token = self.session.lot.token if self.session.lot is not None else self.session.token
        if request.token != lot_token:
            problems.append("its token is not the one the connection was bound with")
        if not signature_matches(
            request.signature, request.data_text, request.data, request.token, self.session.secret
        ):
            problems.append("its signature does not sign its data (B.3.7)")
        try:
            received = validate(interface.request, request.data)
        except FieldError as error:
            problems.append(f"its data is not valid: {error.message()}")
            return problems
        expected = validate(interface.request, sent) if sent is not None else None
        if isinstance(received, dict) and isinstance(expected, dict):
            changed = [key for key, value in expected.items() if received.get(key) != value]
            if changed:
                problems.append(f"its data differs from what the API was given in {', '.join(changed)}")
        return problems

    async def _api(self, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
        headers = Headers({"Authorization": [f"Bearer {self.session.target.api_token}"]})
        if body is not None:
            headers.setRawHeaders("Content-Type", ["application/json"])
        data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else b""
        sent: Deferred[Any] = self.session.http.request(
            method, self.session.target.api_url.rstrip("/") + path, headers=headers, data=data
        )
        sent.addTimeout(self.session.target.timeout + 35.0, self.session.clock)
        response = await sent
        content = await treq.content(response)
        try:
            return int(response.code), json.loads(content)
        except ValueError:
            return int(response.code), content.decode("utf-8", "replace")[:200]

    async def downlinks(self) -> None:
        assert self.session.downlink is not None and self.session.model is not None
        started = self.session.now()
        lot = DownlinkClient(
            endpoint=self.session.downlink(),
            clock=self.session.clock,
            credentials=self.session.target.credentials,
            answer=self._answer,
            token=lambda: self.session.token,
            heartbeat_interval=max(0.5, min(30.0, (self.session.target.read_idle or 180.0) / 3)),
            bind_timeout=self.session.target.timeout,
            on_frame=self._observe,
        )
        self.session.lot = lot
        lot.start()
        bound = lot.when_bound()
        bound.addTimeout(self.session.target.timeout, self.session.clock)
        try:
            await bound
        except Exception:
            reason = f"the kit's lot could not bind its downlink in {self.session.target.timeout:g} s"
            for check in self.session.report.planned:
                if check.group == "downlink" or check.name == "tcp.escaped-out":
                    self.session.add(check.name, failed(reason), started)
            return
        if not self.session.target.api_url and self.session.target.wait <= 0:
            # Nobody is there to trigger them: say so at once rather than wait for each.
            reason = "needs --api, or --wait S to trigger each downlink by hand on the platform"
            for check in self.session.report.planned:
                if check.group == "downlink":
                    self.session.add(check.name, skipped(reason), started)
            await self.session.check("tcp.escaped-out", self._escaped_out)
            return
        if not self.session.target.api_url:
            self.session.operator(
                f"No --api given: trigger each downlink for park {self.session.park} from the platform "
                f"when asked (waiting up to {self.session.target.wait:g} s for each)."
            )
        record = self.session.model.random_record() or ""
        parked = self.session.model.parked(record)
        scene = Scene(record_code=record, plate=parked.car.car_num if parked else "")
        for check in platform_checks():
            if check.group == "downlink":
                await self.session.check(
                    check.name, functools.partial(self._downlink_check, check.code, scene)
                )
        await self.session.check("tcp.escaped-out", self._escaped_out)

    async def _downlink_check(
        self, code: str, scene: Scene, data: object | None = None, hint: str = ""
    ) -> Verdict:
        interface = lookup(code)
        assert interface is not None
        if data is None:
            data = downlink_sample(self.session.traffic, code, self.session.now(), scene)
        if not self.session.target.api_url:
            waiter = self._await_ack(code, self.session.target.wait)
            self.session.operator(f"→ trigger {code} ({interface.title}) for park {self.session.park} now")
            ack = await waiter
            if ack is None:
                return skipped(
                    f"no {code} ACK within --wait {self.session.target.wait:g} s (nobody triggered it)"
                )
            problems = self._ack_problems(interface, ack, None)
            if problems:
                return failed("the ACK: " + "; ".join(problems))
            return passed("ACK valid (without --api the platform's handling of the REPLY is not observable)")
        deadline = interface.deadline or 30.0
        waiter = self._await_ack(code, self.session.target.timeout + deadline)
        called = Deferred.fromCoroutine(
            self._api("POST", f"/v1/parks/{self.session.park}/commands/{code}", data)
        )
        ack = await waiter
        if ack is None:
            try:
                status, body = await called
            except Exception as error:
                return failed(f"no {code} ACK arrived; the API call failed: {describe(error)}")
            return failed(f"no {code} ACK arrived{hint}; the API answered {status} {_short(body)}")
        problems = self._ack_problems(interface, ack, data)
        status, body = await called
        if interface.downlink is DeliveryClass.COMMAND:
            problems += self._command_answer_problems(status, body, ack)
            return (
                failed("; ".join(problems))
                if problems
                else passed("ACK valid; the API returned the lot's REPLY")
            )
        if status != 202 or not isinstance(body, dict) or not isinstance(body.get("seq"), int):
            problems.append(f'the API answered {status} {_short(body)}, not 202 {{"seq": N}}')
        if problems:
            return failed("; ".join(problems))
        return await self._sync_delivered()

    def _command_answer_problems(self, status: int, body: Any, ack: _Ack) -> list[str]:
        if status != 200 or not isinstance(body, dict):
            return [f"the API answered {status} {_short(body)}, not 200 with the lot's REPLY"]
        reply = ack.reply
        if reply is None:
            return []  # the kit's lot refused the ACK (a bad signature): already a problem above
        problems = []
        if body.get("resultCode") != reply.result_code:
            problems.append(
                f"the API's resultCode {body.get('resultCode')!r} is not the REPLY's {reply.result_code!r}"
            )
        if body.get("data") != json.loads(compact(reply.data)):
            problems.append("the API's data is not the REPLY's")
        return problems

    async def _sync_delivered(self) -> Verdict:
        """After a 0000 REPLY the platform's backlog for the lot empties (when the API lets us read it)."""
        deadline = self.session.now() + self.session.target.timeout
        while True:
            status, body = await self._api("GET", f"/v1/parks/{self.session.park}")
            if status != 200 or not isinstance(body, dict) or "backlog" not in body:
                return passed("ACK valid, REPLY 0000 sent (the backlog is not readable: no 'read' role)")
            if body["backlog"] == 0:
                return passed("ACK valid; after the lot's 0000 the backlog is empty")
            if self.session.now() >= deadline:
                return failed(f"the backlog still holds {body['backlog']} entries after the lot's 0000 REPLY")
            await deferLater(self.session.clock, 0.1, lambda: None)

    async def _escaped_out(self) -> Verdict:
        if not self.session.target.api_url:
            return skipped("needs --api to send a gateState holding $, # and *")
        data = {"parkCode": self.session.park, "barCode": ESCAPED_VALUE}
        hint = " (a raw # breaks a frame: was it escaped?)"
        verdict = await self._downlink_check("gateState", Scene(), data, hint)
        if verdict[0] is Outcome.PASS:
            return passed(f"barCode {ESCAPED_VALUE!r} went down escaped and came back in the REPLY")
        return verdict


def _short(body: object) -> str:
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return text if len(text) <= 120 else text[:117] + "..."
