"""Big uplink bodies parsed in worker processes: the worker's loop, the pool's bounds, and the answers.

Most tests run the pool on a fake `IReactorProcess` whose "processes" run the
real worker loop (`gateway.lots.bodies.serve`) only when the test says so: a
worker that has not run yet is one still parsing, so a test can hold every
worker busy and see what the reactor does meanwhile. One test spawns the
real worker processes.
"""

from __future__ import annotations

import io
import json
import marshal
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest_twisted
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.cloud.metrics import register_bodies
from gateway.lots.bodies import parse_body, serve
from gateway.lots.bodypool import BodyPool
from gateway.lots.http import UplinkEndpoint
from gateway.lots.workerloop import READY, frame
from gateway.protocol.envelope import Request
from tests.lots.harness import Uplink, fired, result_of
from tests.lots.workerwire import job_of, outcomes
from tests.protocol.samples import SAMPLES

ROOT = Path(__file__).resolve().parents[2]
FORM = b"application/x-www-form-urlencoded"
CAR_IN = SAMPLES["carIn"]
HUGE = 200_000  # a "huge" member here: the bound is what is tested, not the size


class FakeProcess:
    """A spawned worker: what the pool wrote to its stdin, and the real worker loop run on demand."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.stdin = bytearray()
        self.stdin_closed = False
        self.signals: list[str] = []
        self.ended = False
        self._producer: Any = None

    # The process transport, as much as the pool uses of it.
    def write(self, data: bytes) -> None:
        self.stdin += data

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert not streaming  # FileSender pulls: ask for chunks until it unregisters
        self._producer = producer
        while self._producer is not None:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        self._producer = None

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def loseConnection(self) -> None:
        self.closeStdin()

    def signalProcess(self, signal: str) -> None:
        self.signals.append(signal)

    def run(self) -> None:
        """Parse every job written so far with the worker's own loop, and hand back the outcomes."""
        stdin, self.stdin = bytes(self.stdin), bytearray()
        out = io.BytesIO()
        serve(io.BytesIO(stdin), out)
        self.protocol.childDataReceived(1, out.getvalue())

    def end(self, reason: Failure) -> None:
        self.ended = True
        self.protocol.processEnded(reason)


@implementer(IReactorProcess)
class FakeProcesses(Clock):
    """A clock that also spawns `FakeProcess`es."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[FakeProcess] = []

    def spawnProcess(self, protocol: Any, executable: Any, args: Any = (), **kwargs: Any) -> FakeProcess:
        process = FakeProcess(protocol)
        self.spawned.append(process)
        protocol.makeConnection(process)
        protocol.childDataReceived(1, frame(READY))  # a worker's first words: it is ready
        return process

    @property
    def live(self) -> list[FakeProcess]:
        return [process for process in self.spawned if not process.ended]

    def busy(self) -> list[FakeProcess]:
        """The workers holding a job they have not parsed yet."""
        return [process for process in self.live if process.stdin]


def junk(member: str, opr: str) -> bytes:
    """A form body whose envelope carries a huge `member` and no token (bench.hostile's junk)."""
    envelope = {"token": "", "code": "carIn", "oprNum": opr, "signature": "", "data": {}}
    envelope[member] = "A" * HUGE
    return b"param=" + quote(json.dumps(envelope), safe="").encode()


def job(body: bytes, raw_type: bytes | None = FORM, query: bytes | None = None) -> bytes:
    return job_of((raw_type, query), body)


# The worker's loop --------------------------------------------------------------------------


def test_the_worker_answers_each_job_in_turn_as_the_reactor_would() -> None:
    """Jobs in, outcomes out, in order: a huge member is refused naming it, a request comes back parsed."""
    data = {"a": [1, 2.5, None]}
    envelope = {"token": "T", "code": "carIn", "oprNum": "o1", "signature": "s", "data": data}
    request = b"param=" + quote(json.dumps(envelope)).encode()
    out = io.BytesIO()
    serve(io.BytesIO(job(junk("code", "o9")) + job(request) + job(b"%%", b"text/plain; charset=nope")), out)
    refused, parsed, broken = outcomes(out.getvalue())
    assert refused[:2] == ("envelope", "9002") and refused[2].startswith("code: longer than 10 characters")
    assert refused[4] == "o9"  # the oprNum is echoed, the 200,000-character code is not
    assert parsed[:5] == ("request", "T", "carIn", "o1", "s")
    assert json.loads(parsed[5]) == envelope["data"] and marshal.loads(parsed[6]) == envelope["data"]
    assert broken == ("body", "9002", "charset 'nope' is unknown")


def test_the_worker_stops_at_the_end_of_its_input_even_mid_job() -> None:
    """A stdin that ends (the gateway stopping) ends the loop, a job cut short included."""
    out = io.BytesIO()
    serve(io.BytesIO(job(b"{}")[:-1]), out)
    assert out.getvalue() == b""


def test_parse_body_matches_the_reactor_s_own_parse() -> None:
    """A worker finds the members and data of a form, and `param` in the URL when the body has none."""
    envelope = {"token": "T", "code": "carIn", "oprNum": "o1", "signature": "s", "data": CAR_IN}
    body = urlencode({"param": json.dumps(envelope, ensure_ascii=False)}).encode()
    outcome = parse_body(body, FORM, None)
    assert outcome[0] == "request" and marshal.loads(outcome[6]) == CAR_IN
    assert parse_body(b"", FORM, b'{"code":"heartbeat"}')[:3] == ("request", "", "heartbeat")


# The pool in front of the uplink ------------------------------------------------------------


class PooledUplink(Uplink):
    """The in-memory uplink with big bodies going to a pool of fake worker processes."""

    def __init__(self, workers: int = 2, max_pending: int = 4, inline_bytes: int = 4096, **kw: Any) -> None:
        self.processes = FakeProcesses()
        bounds = {"workers": workers, "max_pending": max_pending, "inline_bytes": inline_bytes}
        self.pool = BodyPool(self.processes, **bounds)
        self.pool.start()
        super().__init__(**kw)

    def restart(self) -> None:
        super().restart()
        self.treq = self.serve(UplinkEndpoint(self.handler, 1_000_000, self.pool))

    def post_later(self, body: bytes) -> Deferred[Any]:
        """Post `body`; the Deferred of the answer's body, which may come later."""
        answered = self.treq.request("POST", "http://gw/uplink", data=body, headers={"Content-Type": [FORM]})
        self.treq.flush()
        return answered.addCallback(self.treq.content)

    def finish_workers(self) -> None:
        """Let every worker parse what it holds, until none holds anything."""
        while self.processes.busy():
            for process in self.processes.busy():
                process.run()
            self.treq.flush()


def test_big_junk_bodies_in_the_workers_do_not_hold_up_a_small_uplink() -> None:
    """With every worker parsing a big body and the queue full, a lot's small carIn is answered at once.

    One more big body is answered 9999 "busy, retry" at once; the big ones are
    answered as the workers finish, each naming its oversized member.
    """
    gw = PooledUplink(workers=2, max_pending=4)
    token = gw.login()
    members = ("code", "oprNum", "token", "signature")
    big = [gw.post_later(junk(member, f"j{n}")) for n, member in enumerate(members)]
    assert len(gw.processes.busy()) == 2 and gw.pool.pending == 4
    assert not any(fired(answer) for answer in big)

    answer = gw.send("carIn", CAR_IN, token=token)
    assert answer["resultCode"] == "0000"  # answered with both workers busy and two bodies waiting
    assert [record.code for record in gw.journal.records] == ["login", "carIn"]

    over = json.loads(result_of(gw.post_later(junk("code", "j9"))))
    assert over["resultCode"] == "9999"
    assert over["resultMessage"].endswith("busy, retry: too many large bodies are waiting to be parsed")
    assert gw.pool.counters["busy"] == 1

    gw.finish_workers()
    answers = [json.loads(result_of(each)) for each in big]
    assert [each["resultCode"] for each in answers] == ["9002"] * 4
    for member, each in zip(members, answers, strict=True):
        assert f": {member}: longer than" in each["resultMessage"]
    assert gw.pool.pending == 0 and len(gw.journal.records) == 2


def test_a_request_parsed_by_a_worker_is_answered_and_stored_as_one_parsed_here() -> None:
    """Every body goes to a worker (inline_bytes 0): login, a signed carIn and its repeat behave as ever."""
    gw = PooledUplink(inline_bytes=0)
    login = gw.envelope("login", {"parkUserName": "lot001", "parkUserPwd": "lot-password"})
    answer = json.loads(result_of(_parsed(gw, login)))
    assert answer["resultCode"] == "0000"
    envelope = gw.envelope("carIn", CAR_IN, token=answer["data"]["token"], opr="o-1")
    assert json.loads(result_of(_parsed(gw, envelope)))["resultCode"] == "0000"
    assert json.loads(result_of(_parsed(gw, envelope)))["resultCode"] == "0000"  # the repeat
    stored = [record for record in gw.journal.records if record.code == "carIn"]
    assert len(stored) == 1 and stored[0].body == CAR_IN and stored[0].opr == "o-1"


def _parsed(gw: PooledUplink, envelope: dict[str, Any]) -> Deferred[Any]:
    answered = gw.post_later(urlencode({"param": json.dumps(envelope)}).encode())
    gw.finish_workers()
    return answered


def test_a_refused_request_s_data_is_never_rebuilt() -> None:
    """A worker's data is loaded only once the token shows it is needed: never for an unknown token."""
    gw = Uplink()
    loads: list[int] = []

    def data() -> object:
        loads.append(1)
        return CAR_IN

    request = Request(token="stolen?", code="carIn", opr="o1", signature="", data=None, data_text="{}")
    answer = json.loads(result_of(gw.handler.handle_request(request, data=data)))
    assert answer["resultCode"] == "9000" and loads == []  # the token is unknown

    token = gw.login()
    text = json.dumps(CAR_IN, separators=(",", ":"), ensure_ascii=False)
    signed = gw.envelope("carIn", CAR_IN, token=token, opr="o2")
    signature = signed["signature"]
    request = Request(token=token, code="carIn", opr="o2", signature=signature, data=None, data_text=text)
    answer = json.loads(result_of(gw.handler.handle_request(request, data=data)))
    assert answer["resultCode"] == "0000" and loads == [1]


def test_a_waiting_body_whose_client_left_is_dropped_before_its_turn() -> None:
    """A big body still waiting when its client goes is never sent to a worker."""
    processes = FakeProcesses()
    pool = BodyPool(processes, workers=1, max_pending=4, inline_bytes=0)
    pool.start()
    first = pool.parse(io.BytesIO(b"{}"), 2, None, None, lambda: False)
    left = pool.parse(io.BytesIO(b"{}"), 2, None, None, lambda: True)
    assert first is not None and left is not None and not fired(left)
    processes.spawned[0].run()
    assert result_of(first)[0] == "request"
    assert result_of(left) == ("gone",) and pool.counters["dropped"] == 1
    assert not processes.busy()  # the left one's body was never written


def test_a_worker_that_dies_answers_its_body_as_a_fault_and_is_replaced() -> None:
    """A worker ending mid-body: that request is answered 9999 (a gateway fault), and a new worker starts."""
    gw = PooledUplink(workers=1)
    answered = gw.post_later(junk("code", "j1"))
    (worker,) = gw.processes.busy()
    worker.end(Failure(ProcessTerminated(signal=9)))
    gw.treq.flush()
    answer = json.loads(result_of(answered))
    assert answer["resultCode"] == "9999"
    assert answer["resultMessage"].endswith("internal error in the gateway; retry")
    assert len(gw.processes.live) == 0
    gw.processes.advance(1.0)
    assert len(gw.processes.live) == 1
    again = gw.post_later(junk("token", "j2"))
    gw.finish_workers()
    assert ": token: longer than 32" in json.loads(result_of(again))["resultMessage"]


def test_stop_ends_the_workers_and_answers_what_waits() -> None:
    """Stop closes each worker's stdin, kills one still there after 5 s, and fires once all have ended."""
    processes = FakeProcesses()
    pool = BodyPool(processes, workers=2, max_pending=4, inline_bytes=0)
    pool.start()
    running = [pool.parse(io.BytesIO(b"{}"), 2, None, None, lambda: False) for _ in range(3)]
    stopped = pool.stop()
    assert result_of(running[2]) == ("fault", "the gateway is stopping")  # it was waiting
    assert all(process.stdin_closed for process in processes.spawned) and not fired(stopped)
    processes.spawned[0].end(Failure(ProcessDone(0)))
    processes.advance(5.0)
    assert processes.spawned[1].signals == ["KILL"]
    processes.spawned[1].end(Failure(ProcessTerminated(signal=9)))
    assert fired(stopped) and result_of(running[0])[0] == "fault"
    assert pool.parse(io.BytesIO(b"{}"), 2, None, None, lambda: False) is None  # stopped: refused
    processes.advance(10.0)
    assert len(processes.spawned) == 2  # none started again


# Real worker processes ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_real_workers_parse_big_bodies_and_stop() -> None:
    """The pool on the running reactor: real worker processes refuse a 1 MiB member and parse a request."""
    from twisted.internet import reactor

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    pool = BodyPool(reactor, workers=2, max_pending=4, inline_bytes=0, env=env)
    pool.start()
    try:
        big = junk("signature", "r1").replace(b"A" * HUGE, b"A" * 2**20)
        refused = pool.parse(io.BytesIO(big), len(big), FORM, None, lambda: False)
        good = b'{"token":"T","code":"heartbeat","oprNum":"1","signature":"","data":{}}'
        parsed = pool.parse(io.BytesIO(good), len(good), b"application/json", None, lambda: False)
        assert refused is not None and parsed is not None
        outcome = await refused
        assert outcome[:2] == ("envelope", "9002") and outcome[2].startswith("signature: longer than 100")
        assert (await parsed)[:3] == ("request", "T", "heartbeat")
    finally:
        await pool.stop()
    assert pool.pending == 0


def test_the_pool_is_counted_in_the_metrics() -> None:
    """/metrics shows the bodies waiting, those parsed, and those refused busy."""
    registry = CollectorRegistry()
    processes = FakeProcesses()
    pool = BodyPool(processes, workers=1, max_pending=1, inline_bytes=0)
    pool.start()
    register_bodies(registry, pool)
    assert pool.parse(io.BytesIO(b"{}"), 2, None, None, lambda: False) is not None
    assert pool.parse(io.BytesIO(b"{}"), 2, None, None, lambda: False) is None
    assert registry.get_sample_value("cpmi_uplink_bodies_pending") == 1
    assert registry.get_sample_value("cpmi_uplink_bodies_busy_total") == 1
    processes.spawned[0].run()
    assert registry.get_sample_value("cpmi_uplink_bodies_pending") == 0
    assert registry.get_sample_value("cpmi_uplink_bodies_parsed_total") == 1
