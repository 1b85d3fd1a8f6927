"""The TCP checks of a platform run: binds, framing and escaping, the idle timers (B.3.4)."""

from __future__ import annotations

import itertools
import secrets

from twisted.internet.task import deferLater

from gateway.conformance.platform.session import (
    OK,
    TOKEN_INVALID,
    PlatformSession,
    Verdict,
    failed,
    passed,
    skipped,
)
from gateway.conformance.report import Outcome
from gateway.conformance.wire import Frame, FrameProbe, connect_probe
from gateway.protocol.catalog import lookup
from gateway.protocol.envelope import request_text
from gateway.protocol.framing import encode_json_frame
from gateway.protocol.signing import compact, signature_matches


class TcpChecks:
    """The checks made on the TCP downlink with raw frame probes."""

    def __init__(self, session: PlatformSession) -> None:
        self.session = session

    async def _probe(self) -> FrameProbe:
        assert self.session.downlink is not None
        return await connect_probe(self.session.downlink(), self.session.clock)

    def _frame_problems(self, frame: Frame | None, code: str, token: str) -> list[str]:
        """What is wrong with an answer frame: none, not 0000, not signed."""
        if frame is None:
            return ["no answer"]
        if frame.get("resultCode") != OK:
            return [f"answered {frame.get('resultCode')} {frame.get('resultMessage', '')}".rstrip()]
        problems = []
        if lookup(str(frame.get("code", ""))) is not lookup(code):
            problems.append(f"its code {frame.get('code')!r} is not {code!r}")
        data = frame.get("data")
        if not signature_matches(
            str(frame.get("signature", "")), compact(data), data, token, self.session.secret
        ):
            problems.append("its signature does not sign its data (B.3.7)")
        return problems

    async def _heartbeat_on(
        self, probe: FrameProbe, data: object | None = None
    ) -> tuple[Frame | None, list[str]]:
        opr = self.session.uplink.new_opr()
        probe.request("heartbeat", opr, self.session.token, self.session.secret, {} if data is None else data)
        answer = await probe.answer_to(opr, self.session.target.timeout)
        return answer, self._frame_problems(answer, "heartbeat", self.session.token)

    async def _bind_login(self) -> tuple[Verdict, FrameProbe]:
        probe = await self._probe()
        opr = self.session.uplink.new_opr()
        probe.request("login", opr, "", self.session.secret, self.session.credentials())
        answer = await probe.answer_to(opr, self.session.target.timeout)
        problems = self._frame_problems(answer, "login", "")
        if answer is not None and answer.get("resultCode") == OK:
            data = answer.get("data") if isinstance(answer.get("data"), dict) else {}
            token = str(data.get("token") or "") if isinstance(data, dict) else ""
            if len(token) != 32:
                problems.append(f"the token {token!r} is not 32 characters")
            else:
                self.session.token = token  # the HTTP token is replaced now (B.3.5)
        if problems:
            closed = " (the connection was closed)" if probe.lost else ""
            return failed("login frame: " + "; ".join(problems) + closed), probe
        return passed("bound; a token was issued"), probe

    async def binds_and_framing(self) -> None:
        started = self.session.now()
        verdict, first = await self._bind_login()
        self.session.add("tcp.bind-login", verdict, started)

        started = self.session.now()
        bound = await self._probe()
        _, problems = await self._heartbeat_on(bound)
        if problems:
            self.session.add("tcp.bind-heartbeat", failed("heartbeat frame: " + "; ".join(problems)), started)
        else:
            self.session.add("tcp.bind-heartbeat", passed("bound"), started)

        started = self.session.now()
        if verdict[0] is not Outcome.PASS:
            self.session.add("tcp.rebind", skipped("the login bind failed"), started)
        elif await first.closed_within(self.session.target.timeout):
            self.session.add("tcp.rebind", passed("the connection bound by login was closed"), started)
        else:
            reason = f"the older connection was still open {self.session.target.timeout:g} s after a new bind"
            self.session.add("tcp.rebind", failed(reason), started)
        first.close()

        await self.session.check("tcp.bind-required", self._bind_required)
        await self.session.check("tcp.bad-token", self._bad_token)
        if bound.lost:
            bound = await self._probe()
            await self._heartbeat_on(bound)
        await self.session.check("tcp.heartbeat", lambda: self._bound_heartbeat(bound))
        await self.session.check("tcp.escaped-in", lambda: self._escaped_in(bound))
        await self.session.check("tcp.split", lambda: self._split(bound))
        await self.session.check("tcp.batch", lambda: self._batch(bound))
        await self.session.check("tcp.garbage", lambda: self._garbage(bound))
        await self.session.check("tcp.oversize", lambda: self._oversize(bound))
        bound.close()

    async def _bind_required(self) -> Verdict:
        probe = await self._probe()
        opr = self.session.uplink.new_opr()
        probe.request("freeSpace", opr, self.session.token, self.session.secret, self.session.free_space())
        answer = await probe.answer_to(opr, self.session.target.timeout)
        closed = await probe.closed_within(self.session.target.timeout if answer is None else 1.0)
        probe.close()
        if answer is not None and answer.get("resultCode") == OK:
            return failed("a freeSpace frame on an unbound connection was accepted")
        said = f"answered {answer.get('resultCode')}" if answer is not None else "no answer"
        if answer is None and not closed:
            return failed(f"neither answered nor closed within {self.session.target.timeout:g} s")
        return passed(f"{said}; {'closed' if closed else 'kept open, unbound'}")

    async def _bad_token(self) -> Verdict:
        probe = await self._probe()
        opr = self.session.uplink.new_opr()
        probe.request("heartbeat", opr, secrets.token_hex(16), self.session.secret, {})
        answer = await probe.answer_to(opr, self.session.target.timeout)
        probe.close()
        if answer is None:
            return failed(f"no answer within {self.session.target.timeout:g} s")
        if answer.get("resultCode") != TOKEN_INVALID:
            return failed(f"answered {answer.get('resultCode')}, not 9000")
        return passed("answered 9000")

    async def _bound_heartbeat(self, probe: FrameProbe) -> Verdict:
        answer, problems = await self._heartbeat_on(probe)
        if problems:
            return failed("; ".join(problems))
        data = answer.get("data") if answer is not None else None
        time = f", platform time {data['time']}" if isinstance(data, dict) and data.get("time") else ""
        return passed(f"0000{time}")

    async def _escaped_in(self, probe: FrameProbe) -> Verdict:
        _, problems = await self._heartbeat_on(probe, {"remark": "$ # * $$ ## **"})
        if problems:
            return failed("a heartbeat with escaped $ # * in its data: " + "; ".join(problems))
        return passed("answered 0000: unescaped, signature checked over the JSON")

    async def _split(self, probe: FrameProbe) -> Verdict:
        opr = self.session.uplink.new_opr()
        frame = encode_json_frame(request_text("heartbeat", opr, self.session.token, self.session.secret, {}))
        cuts = (0, 1, len(frame) // 2, len(frame) - 1, len(frame))
        for start, end in itertools.pairwise(cuts):
            probe.write(frame[start:end])
            await deferLater(self.session.clock, 0.05, lambda: None)
        answer = await probe.answer_to(opr, self.session.target.timeout)
        problems = self._frame_problems(answer, "heartbeat", self.session.token)
        return failed("; ".join(problems)) if problems else passed("a frame in 4 pieces was answered")

    async def _answered_all(self, probe: FrameProbe, oprs: list[str]) -> list[str]:
        missing = []
        for opr in oprs:
            if self._frame_problems(
                await probe.answer_to(opr, self.session.target.timeout), "heartbeat", self.session.token
            ):
                missing.append(opr)
        return missing

    async def _batch(self, probe: FrameProbe) -> Verdict:
        oprs = [self.session.uplink.new_opr() for _ in range(3)]
        probe.write(
            b"".join(
                encode_json_frame(request_text("heartbeat", opr, self.session.token, self.session.secret, {}))
                for opr in oprs
            )
        )
        missing = await self._answered_all(probe, oprs)
        if missing:
            return failed(f"{len(missing)} of 3 frames sent in one write were not answered 0000")
        return passed("3 frames in one write, 3 answers")

    async def _garbage(self, probe: FrameProbe) -> Verdict:
        oprs = [self.session.uplink.new_opr() for _ in range(2)]
        frames = [
            encode_json_frame(request_text("heartbeat", opr, self.session.token, self.session.secret, {}))
            for opr in oprs
        ]
        probe.write(b"\r\nnoise #" + frames[0] + b'{"not":"a frame"}\n' + frames[1])
        missing = await self._answered_all(probe, oprs)
        if missing:
            return failed(f"{len(missing)} of 2 frames among garbage bytes were not answered 0000")
        return passed("garbage skipped, both frames answered")

    async def _oversize(self, probe: FrameProbe) -> Verdict:
        limit = self.session.target.max_frame_bytes
        size = limit + 1024
        probe.write(b'$${"code":"heartbeat","data":{"x":"' + b"a" * size + b'"}}##*')
        if await probe.closed_within(self.session.target.timeout):
            return passed(f"closed after a frame of more than {size} bytes (limit {limit})")
        return failed(f"a frame of more than {size} bytes (max_frame_bytes {limit}) left the connection open")

    async def idle_timers(self) -> None:
        started = self.session.now()
        write_idle, read_idle = self.session.target.write_idle, self.session.target.read_idle
        wanted: dict[str, float] = {}
        for name, value, option in (
            ("idle.write", write_idle, "--write-idle"),
            ("idle.read", read_idle, "--read-idle"),
        ):
            if value is None or value <= 0:
                reason = (
                    f"give {option} with the platform's {name[5:]}_idle to check it (it may take minutes)"
                )
                self.session.add(name, skipped(reason), started)
            elif value > self.session.target.idle_wait:
                self.session.add(
                    name, skipped(f"{name[5:]}_idle {value:g} s is longer than --idle-wait"), started
                )
            else:
                wanted[name] = value
        if not wanted:
            return
        probe = await self._probe()
        _, problems = await self._heartbeat_on(probe)
        if problems:
            for name in wanted:
                self.session.add(name, failed("could not bind: " + "; ".join(problems)), started)
            probe.close()
            return
        quiet_since = self.session.now()
        longest = max(wanted.values())
        request = probe.expect(
            lambda frame: frame.get("code") == "heartbeat" and "resultCode" not in frame,
            _slack(wanted.get("idle.write", 0.0)),
            seen=False,
        )
        closed = probe.closed_within(_slack(longest))
        asked = await request
        asked_after = self.session.now() - quiet_since
        if "idle.write" in wanted:
            value = wanted["idle.write"]
            if asked is not None:
                verdict = passed(
                    f"a heartbeat request came after {asked_after:.1f} s (write_idle {value:g} s)"
                )
            elif probe.lost:
                verdict = failed(f"closed after {asked_after:.1f} s without a heartbeat request")
            else:
                verdict = failed(
                    f"no heartbeat request within {_slack(value):.1f} s (write_idle {value:g} s)"
                )
            self.session.add("idle.write", verdict, quiet_since)
        if "idle.read" in wanted:
            value = wanted["idle.read"]
            lost = await closed
            after = self.session.now() - quiet_since
            if not lost:
                verdict = failed(
                    f"still open {after:.1f} s after the lot fell silent (read_idle {value:g} s)"
                )
            elif after < value - 1.0:
                verdict = failed(f"closed after {after:.1f} s, before read_idle ({value:g} s)")
            else:
                verdict = passed(f"closed after {after:.1f} s of silence (read_idle {value:g} s)")
            self.session.add("idle.read", verdict, quiet_since)
        probe.close()


def _slack(seconds: float) -> float:
    """How long past a timer's value the kit waits for it: its sweep may run a little later."""
    return seconds + 2.0 + seconds / 4
