"""The HTTP checks of a platform run: login and tokens, signatures, every uplink, repeats."""

from __future__ import annotations

import json
import secrets

from gateway.conformance.checks import FIELD_ERRORS, invalid_field
from gateway.conformance.platform.session import (
    BAD_CREDENTIALS,
    BAD_SIGNATURE,
    QUERY_REFUSALS,
    REPEATS_ALLOWED,
    TOKEN_INVALID,
    TOO_MANY_REPEATS,
    PlatformSession,
    Verdict,
    failed,
    passed,
    skipped,
)
from gateway.conformance.report import Outcome
from gateway.conformance.samples import invalid_variant, uplink_sample
from gateway.protocol.catalog import DeliveryClass, lookup
from gateway.protocol.envelope import Reply as Response
from gateway.protocol.signing import compact, sign


class UplinkChecks:
    """The checks made over HTTP, as the kit's lot posts uplinks."""

    def __init__(self, session: PlatformSession) -> None:
        self.session = session

    async def _login(self) -> tuple[Response, str]:
        return await self.session.send("login", self.session.credentials(), token="")

    async def login_accepted(self) -> Verdict:
        response, opr = await self._login()
        if not response.ok:
            return failed(f"login answered {self.session.said(response)}")
        data = response.data if isinstance(response.data, dict) else {}
        token = str(data.get("token") or "")
        problems = self.session.problems(response, "login", opr, "")
        if len(token) != 32:
            problems.append(f"the token {token!r} is not 32 characters (B.2.3.2)")
        if data.get("parkCode"):
            self.session.park = str(data["parkCode"])
        elif not self.session.park:
            problems.append("no parkCode in the answer, and no --park given")
        if token:
            self.session.token = token
        if problems:
            return failed("; ".join(problems))
        return passed(f"token issued for park {self.session.park}")

    async def login_refused(self) -> Verdict:
        response, _ = await self.session.send(
            "login", self.session.credentials(f"{secrets.token_hex(6)}-wrong"), token=""
        )
        if response.result_code == BAD_CREDENTIALS:
            return passed(f"refused: {self.session.said(response)}")
        if response.ok:
            return failed("a wrong password was accepted")
        return failed(f"refused with {self.session.said(response)}, not 9003 (B.4)")

    async def _expect_token_refused(self, token: str, what: str) -> Verdict:
        response, _ = await self.session.send("heartbeat", {}, token=token)
        if response.result_code == TOKEN_INVALID:
            return passed(f"{what}: {self.session.said(response)}")
        if response.ok:
            return failed(f"{what} was accepted")
        return failed(f"{what} was refused with {self.session.said(response)}, not 9000 (B.3.6)")

    async def token_unknown(self) -> Verdict:
        return await self._expect_token_refused(secrets.token_hex(16), "an unknown token")

    async def token_revoked(self) -> Verdict:
        first = self.session.token
        response, _ = await self._login()
        if not response.ok or not isinstance(response.data, dict):
            return failed(f"the second login answered {self.session.said(response)}")
        self.session.token = str(response.data.get("token") or "")
        if self.session.token == first:
            return failed("the second login returned the same token")
        verdict = await self._expect_token_refused(first, "the first token after a second login")
        if verdict[0] is not Outcome.PASS:
            return verdict
        fresh, _ = await self.session.send("heartbeat", {})
        if not fresh.ok:
            return failed(f"the new token was refused: {self.session.said(fresh)}")
        return verdict

    async def token_expired(self) -> Verdict:
        if not self.session.target.expired_token:
            return skipped(
                "tokens live until the end of the month; give --expired-token with a token the "
                "platform issued that has expired since"
            )
        return await self._expect_token_refused(self.session.target.expired_token, "the expired token")

    async def _post_signed(self, data_text: str, signature: str) -> Response:
        opr = self.session.uplink.new_opr()
        text = '{"token":%s,"code":"freeSpace","oprNum":%s,"signature":%s,"data":%s}' % (
            compact(self.session.token),
            compact(opr),
            compact(signature),
            data_text,
        )
        return await self.session.uplink.post_text(text)

    async def _expect_bad_signature(self, signature: str, what: str) -> Verdict:
        response = await self._post_signed(compact(self.session.free_space()), signature)
        if response.result_code == BAD_SIGNATURE:
            return passed(f"refused: {self.session.said(response)}")
        if response.ok:
            return failed(f"a request {what} was accepted (is the lot's signature mode 'required'?)")
        return failed(f"a request {what} was refused with {self.session.said(response)}, not 9006")

    async def signature_missing(self) -> Verdict:
        return await self._expect_bad_signature("", "without a signature")

    async def signature_wrong(self) -> Verdict:
        data_text = compact(self.session.free_space())
        return await self._expect_bad_signature(
            sign(data_text + " ", self.session.token, self.session.secret), "wrongly signed"
        )

    async def signature_as_written(self) -> Verdict:
        data_text = json.dumps(self.session.free_space(), ensure_ascii=False, separators=(", ", ": "))
        response = await self._post_signed(
            data_text, sign(data_text, self.session.token, self.session.secret)
        )
        if response.ok:
            return passed("accepted")
        return failed(f"refused with {self.session.said(response)}")

    async def valid(self, code: str) -> Verdict:
        interface = lookup(code)
        assert interface is not None
        started = self.session.now()
        response, opr = await self.session.send(code, uplink_sample(self.session.traffic, code, started))
        took = self.session.now() - started
        problems = self.session.problems(response, code, opr, self.session.token)
        if response.ok:
            problem = self.session.data_problem(interface, response.data)
            if problem:
                problems.append(problem)
        elif interface.uplink is DeliveryClass.QUERY and response.result_code in QUERY_REFUSALS:
            pass
        else:
            problems.insert(0, f"a valid message was answered {self.session.said(response)}")
        if problems:
            return failed("; ".join(problems))
        if interface.uplink is DeliveryClass.QUERY:
            return passed(
                f"answered {self.session.said(response)} in {took:.2f} s (deadline {interface.deadline:g} s)"
            )
        if code == "heartbeat" and isinstance(response.data, dict) and response.data.get("time"):
            return passed(f"0000, platform time {response.data['time']}")
        return passed("0000, signed")

    async def invalid(self, code: str) -> Verdict:
        interface = lookup(code)
        assert interface is not None
        change = invalid_field(interface)
        assert change is not None
        data = invalid_variant(uplink_sample(self.session.traffic, code, self.session.now()), change)
        response, _ = await self.session.send(code, data)
        name = change.field.name
        if response.ok:
            return failed(f"a message with {change.describe()} was accepted")
        if response.result_code not in FIELD_ERRORS:
            return failed(
                f"{change.describe()}: refused with {self.session.said(response)}, not 9010 (or 9002)"
            )
        if name not in response.result_message:
            return failed(f"{change.describe()}: refused {response.result_code} without naming {name}")
        return passed(f"{change.describe()}: {self.session.said(response)}")

    async def repeats(self) -> None:
        started = self.session.now()
        opr = self.session.uplink.new_opr()
        data = self.session.free_space()
        first = await self.session.uplink.post("freeSpace", data, token=self.session.token, opr=opr)
        if not first.ok:
            verdict = failed(f"the first message was answered {self.session.said(first)}")
            self.session.add("repeat.first-answer", verdict, started)
            self.session.add("repeat.limit", skipped("the first message was not accepted"), started)
            return
        # The first repeat carries a message the platform would refuse: answered 0000
        # only when the platform gives the first answer instead of processing it again.
        spoiled = (
            {key: value for key, value in data.items() if key != "emptyNum"} if isinstance(data, dict) else {}
        )
        verdict = passed(f"{REPEATS_ALLOWED} repeats of oprNum {opr} got the first answer, unprocessed")
        for repeat in range(1, REPEATS_ALLOWED + 1):
            answer = await self.session.uplink.post(
                "freeSpace", spoiled if repeat == 1 else data, token=self.session.token, opr=opr
            )
            if answer.result_code != first.result_code or answer.result_message != first.result_message:
                what = "was processed again" if repeat == 1 else "did not get the first answer"
                verdict = failed(
                    f"repeat {repeat} of oprNum {opr} {what}: answered {self.session.said(answer)}, "
                    f"the first answer was {self.session.said(first)}"
                )
                break
        self.session.add("repeat.first-answer", verdict, started)
        started = self.session.now()
        answer = await self.session.uplink.post("freeSpace", data, token=self.session.token, opr=opr)
        if answer.result_code == TOO_MANY_REPEATS:
            self.session.add(
                "repeat.limit", passed(f"repeat {REPEATS_ALLOWED + 1}: {self.session.said(answer)}"), started
            )
        else:
            said = self.session.said(answer)
            reason = f"repeat {REPEATS_ALLOWED + 1} within the hour was answered {said}, not 9007"
            self.session.add("repeat.limit", failed(reason), started)
