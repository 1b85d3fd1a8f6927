"""The gateway's side of the dialect interface: DialectHost.submit and friends, and the LotRouter."""

from __future__ import annotations

import hashlib
from typing import Any, TypeVar

import attrs
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gateway.config import parse
from gateway.dialects.bolink import bolink
from gateway.dialects.bolink_messages import sign
from gateway.dialects.host import DialectHost, LotRouter
from gateway.dialects.interface import IDialectHost, IDialectServer, Message, Original, Unsupported
from gateway.dialects.standard import StandardServer, standard
from gateway.dialects.testing import DialectRig, LotPeer, MemoryJournal
from gateway.interfaces import LotReply, LotState, NotConnected
from gateway.journal.kinds import LEGACY_RECORD
from gateway.journal.record import Record, dumps_compact
from gateway.lots.answers import OK, Answer
from gateway.protocol.framing import encode_frame
from gateway.protocol.results import Result
from tests.lots.harness import signed_envelope
from tests.test_logs import captured

# Only its form is checked when the configuration is read.
HASH = "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$aGFzaA"
BOLINK_LOT: dict[str, Any] = {"park_code": "P1", "dialect": "bolink", "secret": "s"}
STANDARD_LOT: dict[str, Any] = {"park_code": "P2", "username": "u2", "password": HASH}
CAR_IN: dict[str, Any] = {"recordCode": "R1", "carNum": "京A12345", "inTime": "2023-11-15 06:13:20"}
SOURCES = {"recordCode": "order_id", "carNum": "car_number"}
E = TypeVar("E", bound=Exception)


def make_rig(*lots: dict[str, Any], **settings: dict[str, Any]) -> DialectRig:
    """A rig serving bolink for `lots` (the bolink lot P1 and the standard lot P2 by default)."""
    return DialectRig(bolink, lots=list(lots) or [BOLINK_LOT, STANDARD_LOT], settings=settings)


def original(opr: str = "op1", service: str = "in_park") -> Original:
    """A legacy message as a dialect hands it over."""
    return Original(service=service, opr=opr, message={"service_name": service, "data": {"order_id": "R1"}})


def result_of(deferred: Deferred[Any]) -> Any:
    """The result of a Deferred that must already have fired."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    assert not isinstance(results[0], Failure), results[0]
    return results[0]


def submit(rig: DialectRig, messages: list[Message], opr: str = "op1", park: str = "P1") -> Answer:
    """Submit `messages` made of one legacy message; the answer, which must be there at once."""
    answer = result_of(rig.host.submit(park, original(opr), messages))
    assert isinstance(answer, Answer)
    return answer


# --- submit: what is stored ----------------------------------------------------------------------


def test_host_provides_the_host_interface() -> None:
    """DialectHost is an IDialectHost named after its dialect, with the gateway's zone and [tcp] timers."""
    rig = make_rig()
    assert verifyObject(IDialectHost, rig.host)
    assert rig.host.name == "bolink"
    assert str(rig.host.zone) == "Asia/Shanghai"
    assert rig.host.tcp.bind_timeout == 10
    assert rig.host.clock is rig.clock


def test_submit_stores_the_translations_then_the_original() -> None:
    """submit journals each standard message as uplink {opr}-{n}, then the original as legacy; answers OK."""
    rig = make_rig()
    answer = submit(rig, [Message("carIn", CAR_IN, SOURCES), Message("freeSpace", {"emptyNum": 3})])
    assert answer == OK
    car_in, free_space, legacy = rig.records()
    assert (car_in.kind, car_in.park, car_in.code, car_in.opr, car_in.body) == (
        "uplink",
        "P1",
        "carIn",
        "op1-0",
        CAR_IN,
    )
    assert (free_space.kind, free_space.code, free_space.opr, free_space.body) == (
        "uplink",
        "freeSpace",
        "op1-1",
        {"emptyNum": 3},
    )
    assert (legacy.kind, legacy.park, legacy.code, legacy.opr) == (LEGACY_RECORD, "P1", "in_park", "op1")
    assert legacy.body == {
        "dialect": "bolink",
        "translated": ["carIn", "freeSpace"],
        "message": {"service_name": "in_park", "data": {"order_id": "R1"}},
    }
    rig.check_catalog()


def test_submit_without_messages_keeps_the_original_for_the_cloud() -> None:
    """A legacy message with no translation is stored alone and becomes an org.cpmi.dialect event."""
    rig = make_rig()
    assert submit(rig, []) == OK
    [legacy] = rig.records()
    assert legacy.body == {"dialect": "bolink", "translated": [], "message": original().message}
    [event] = rig.events()
    assert event["type"] == "org.cpmi.dialect.bolink.in_park.v1"
    assert event["data"] == {"service_name": "in_park", "data": {"order_id": "R1"}}
    assert event["cpmioprnum"] == "op1"


def test_submit_redacts_secret_fields_of_the_original() -> None:
    """Secret fields of the original (secret, parkUserPwd) are redacted in the legacy record."""
    rig = make_rig()
    data = {"park_id": "P1", "secret": "s", "parkUserPwd": "pw"}
    message = {"service_name": "login", "data": data}
    result_of(rig.host.submit("P1", Original("login", "op1", message), []))
    [legacy] = rig.records()
    assert legacy.body == {
        "dialect": "bolink",
        "translated": [],
        "message": {
            "service_name": "login",
            "data": {"park_id": "P1", "secret": "***", "parkUserPwd": "***"},
        },
    }
    assert data["secret"] == "s"  # the dialect's value is left alone


def test_submit_answers_only_once_everything_is_durable() -> None:
    """submit's Deferred fires only when the journal has made every record durable."""
    rig = make_rig()
    rig.journal.hold = True
    stored = rig.host.submit("P1", original(), [Message("carIn", CAR_IN)])
    results: list[Any] = []
    stored.addBoth(results.append)
    assert results == []
    assert rig.records() == []
    rig.journal.release()
    assert results == [OK]
    assert [r.kind for r in rig.records()] == ["uplink", LEGACY_RECORD]


# --- submit: what is refused ---------------------------------------------------------------------


@pytest.mark.parametrize("code", ["gateOpen", "autoPay", "carIn2", ""])
def test_submit_refuses_a_message_that_is_not_a_report(code: str) -> None:
    """A Message whose code is no reported uplink (a downlink, a query, nothing) is 9999; nothing stored."""
    rig = make_rig()
    answer = submit(rig, [Message("carIn", CAR_IN), Message(code, {"barCode": "c1", "recordCode": "R1"})])
    assert answer.result is Result.FAILED
    assert "bolink" in answer.message
    assert rig.records() == []


@pytest.mark.parametrize("data", [None, {}, []])
def test_submit_refuses_empty_data(data: object) -> None:
    """A Message without data is refused with 9004 and nothing is stored."""
    rig = make_rig()
    answer = submit(rig, [Message("carIn", data)])
    assert answer.result is Result.EMPTY_BODY
    assert "carIn" in answer.message
    assert rig.records() == []


def test_submit_names_the_legacy_field_a_catalog_error_came_from() -> None:
    """A field the catalog refuses is named as the standard's field and, from sources, the legacy one."""
    rig = make_rig()
    answer = submit(rig, [Message("carIn", {**CAR_IN, "recordCode": "R" * 21}, SOURCES)])
    assert answer.result is Result.FIELD_INVALID
    assert answer.message.startswith(
        f"{Result.FIELD_INVALID.text}: carIn data.recordCode (from data.order_id): "
    )
    assert rig.records() == []


def test_submit_names_only_the_standard_field_without_sources() -> None:
    """A field error of a Message without sources names the standard's field alone."""
    rig = make_rig()
    answer = submit(rig, [Message("carIn", {"carNum": "京A12345"})])
    assert answer.result is Result.FIELD_INVALID
    assert "data.recordCode" in answer.message
    assert "(from" not in answer.message


def test_submit_names_the_item_of_a_list() -> None:
    """A field error in the second item of a list names the item and the legacy field."""
    rig = make_rig()
    answer = submit(rig, [Message("carIn", [CAR_IN, {**CAR_IN, "recordCode": "R" * 21}], SOURCES)])
    assert answer.result is Result.FIELD_INVALID
    assert "carIn data[1].recordCode (from data.order_id)" in answer.message


def test_submit_stores_nothing_when_a_later_message_is_refused() -> None:
    """When the second message is refused, the first (valid) one is not stored either."""
    rig = make_rig()
    answer = submit(rig, [Message("carIn", CAR_IN), Message("freeSpace", {"emptyNum": "three"})])
    assert answer.result is Result.FIELD_INVALID
    assert "freeSpace" in answer.message
    assert rig.records() == []


@pytest.mark.parametrize("park", ["P2", "P9"])
def test_submit_for_a_park_that_is_no_lot_of_the_dialect_is_9104(park: str) -> None:
    """A park of another dialect, or of none, is answered 9104 and nothing is stored."""
    rig = make_rig()
    answer = submit(rig, [Message("carIn", CAR_IN)], park=park)
    assert answer.result is Result.NO_SUCH_PARK
    assert park in answer.message
    assert rig.records() == []


def test_submit_answers_9999_when_the_journal_fails_and_stores_the_retry() -> None:
    """When the journal fails, submit answers 9999 (retry) and keeps nothing: the retry is stored."""
    rig = make_rig()
    rig.journal.broken = OSError("disk full")
    answer = submit(rig, [Message("carIn", CAR_IN)])
    assert answer.result is Result.FAILED
    assert "disk full" in answer.message
    assert "retry" in answer.message
    rig.journal.broken = None
    assert submit(rig, [Message("carIn", CAR_IN)]) == OK
    assert [r.kind for r in rig.records()] == ["uplink", LEGACY_RECORD]


class SerializingJournal(MemoryJournal):
    """The memory journal refusing at once a body JSON cannot hold, as the journal writer's append does."""

    def append(self, kind: str, park: str, code: str, opr: str, body: object) -> Deferred[Record]:
        dumps_compact(body)  # raises TypeError, like JournalWriter.append
        return super().append(kind, park, code, opr, body)


def test_submit_stores_nothing_when_the_journal_refuses_a_record_outright() -> None:
    """When the journal refuses the original outright, submit answers 9999 and no translation stays."""
    rig = make_rig()
    journal = SerializingJournal(rig.clock)
    host = DialectHost("bolink", attrs.evolve(rig.parts, journal=journal), rig.resumed.append)
    unserializable = Original("in_park", "op1", {"raw": b"\x01\x02"})
    answer = result_of(host.submit("P1", unserializable, [Message("carIn", CAR_IN)]))
    assert answer.result is Result.FAILED
    assert journal.records == []


# --- submit: repeats -----------------------------------------------------------------------------


def test_a_repeat_is_answered_as_the_first_and_not_stored() -> None:
    """The same opr again is answered with the first answer and stores nothing, whatever it now says."""
    rig = make_rig()
    assert submit(rig, [Message("carIn", CAR_IN)]) == OK
    assert submit(rig, [Message("carIn", {**CAR_IN, "carNum": "other"})]) == OK
    assert submit(rig, [Message("gateOpen", {"barCode": "c1"})]) == OK
    assert len(rig.records()) == 2


def test_a_repeat_while_the_first_is_held_waits_for_the_same_answer() -> None:
    """A repeat arriving while the first is still being journaled fires with the first's answer."""
    rig = make_rig()
    rig.journal.hold = True
    first = rig.host.submit("P1", original(), [Message("carIn", CAR_IN)])
    second = rig.host.submit("P1", original(), [Message("carIn", CAR_IN)])
    results: list[Any] = []
    first.addBoth(results.append)
    second.addBoth(results.append)
    assert results == []
    rig.journal.release()
    assert results == [OK, OK]
    assert len(rig.records()) == 2


def test_a_repeat_while_the_first_fails_gets_the_failure_and_the_next_is_stored() -> None:
    """A repeat waiting on a first sending the journal fails gets its 9999; a later retry is stored."""
    rig = make_rig()
    rig.journal.hold = True
    first = rig.host.submit("P1", original(), [Message("carIn", CAR_IN)])
    second = rig.host.submit("P1", original(), [Message("carIn", CAR_IN)])
    results: list[Any] = []
    first.addBoth(results.append)
    second.addBoth(results.append)
    pending, rig.journal.pending = rig.journal.pending, []
    rig.journal.hold = False
    for waiting, _ in pending:
        waiting.errback(OSError("disk gone"))
    assert [answer.result for answer in results] == [Result.FAILED, Result.FAILED]
    assert submit(rig, [Message("carIn", CAR_IN)]) == OK
    assert [r.kind for r in rig.records()] == ["uplink", LEGACY_RECORD]


def test_more_than_five_repeats_within_an_hour_are_9007() -> None:
    """The sixth repeat of one opr within an hour is answered 9007."""
    rig = make_rig()
    answers = [submit(rig, [Message("carIn", CAR_IN)]).result for _ in range(7)]
    assert answers == [Result.OK] * 6 + [Result.TOO_MANY_REPEATS]


def test_repeats_are_per_park() -> None:
    """The same opr from two lots of the dialect is two messages."""
    rig = make_rig(BOLINK_LOT, {**BOLINK_LOT, "park_code": "P3"})
    assert submit(rig, [Message("carIn", CAR_IN)], park="P1") == OK
    assert submit(rig, [Message("carIn", CAR_IN)], park="P3") == OK
    assert [r.park for r in rig.records(LEGACY_RECORD)] == ["P1", "P3"]


# --- submit: business rules ----------------------------------------------------------------------


def test_a_stored_park_env_sets_the_total_free_space_is_checked_against() -> None:
    """A parkEnv a dialect made sets the park's total; a freeSpace above it is then 9105."""
    rig = make_rig()
    assert submit(rig, [Message("parkEnv", {"totalNum": 10})], opr="env") == OK
    assert rig.parts.totals.total("P1") == 10
    assert submit(rig, [Message("freeSpace", {"emptyNum": 10})], opr="f1") == OK
    answer = submit(rig, [Message("carIn", CAR_IN), Message("freeSpace", {"emptyNum": 11})], opr="f2")
    assert answer.result is Result.TOO_MANY_FREE
    assert "11 > totalNum 10" in answer.message
    assert [r.code for r in rig.records("uplink")] == ["parkEnv", "freeSpace"]


def test_a_park_env_not_stored_does_not_set_the_total() -> None:
    """A parkEnv the journal failed to store leaves the park's total as it was."""
    rig = make_rig()
    rig.journal.broken = OSError("disk full")
    assert submit(rig, [Message("parkEnv", {"totalNum": 10})]).result is Result.FAILED
    assert rig.parts.totals.total("P1") is None


def test_a_park_env_without_spaces_is_9102() -> None:
    """A parkEnv whose totalNum is 0 is answered 9102 and nothing is stored."""
    rig = make_rig()
    assert submit(rig, [Message("parkEnv", {"totalNum": 0})]).result is Result.NO_SPACES
    assert rig.records() == []


def test_negative_free_space_is_9010() -> None:
    """A freeSpace with a negative emptyNum is answered 9010 and nothing is stored."""
    rig = make_rig()
    answer = submit(rig, [Message("freeSpace", {"emptyNum": -1})])
    assert answer.result is Result.FIELD_INVALID
    assert "negative" in answer.message
    assert rig.records() == []


# --- Original ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("service", "opr"), [("", "op1"), ("in_park", "")])
def test_original_refuses_an_empty_service_or_opr(service: str, opr: str) -> None:
    """An Original needs a service and an opr."""
    with pytest.raises(ValueError, match=r"Original\."):
        Original(service=service, opr=opr, message={})


def test_an_opr_longer_than_32_is_journaled_as_its_md5() -> None:
    """A long opr is kept as its MD5, so "{opr}-{n}" keeps to 36; repeats still find it."""
    rig = make_rig()
    long = "upload_order:" + "X" * 40
    digest = hashlib.md5(long.encode()).hexdigest()
    original = Original("upload_order", long, {})
    assert result_of(rig.host.submit("P1", original, [Message("carIn", CAR_IN)])) == OK
    assert [r.opr for r in rig.records()] == [f"{digest}-0", digest]
    assert result_of(rig.host.submit("P1", original, [Message("carIn", CAR_IN)])) == OK
    assert len(rig.records()) == 2


def test_original_takes_a_32_character_opr() -> None:
    """An opr of exactly 32 characters (an MD5 in hex) is allowed."""
    assert Original(service="in_park", opr="x" * 32, message={}).opr == "x" * 32


# --- the rest of the host ------------------------------------------------------------------------


def test_online_and_offline_are_journaled_and_online_resumes() -> None:
    """online journals lot-online and resumes the lot's deliveries; offline journals lot-offline."""
    rig = make_rig()
    rig.host.online("P1", "192.0.2.7:1", "login")
    rig.host.offline("P1", "192.0.2.7:1", "gone")
    assert [(r.kind, r.park, r.code, r.opr, r.body) for r in rig.records()] == [
        ("lot-online", "P1", "", "", {"peer": "192.0.2.7:1", "reason": "login"}),
        ("lot-offline", "P1", "", "", {"peer": "192.0.2.7:1", "reason": "gone"}),
    ]
    assert rig.resumed == ["P1"]


def test_online_and_offline_survive_a_failing_journal_and_resume() -> None:
    """online/offline raise nothing when the journal fails or the resume callback raises."""
    rig = make_rig()
    rig.journal.broken = OSError("disk full")

    def resume(park: str) -> None:
        raise RuntimeError(f"cannot resume {park}")

    host = DialectHost("bolink", rig.parts, resume)
    host.online("P1", "192.0.2.7:1", "login")
    host.offline("P1", "192.0.2.7:1", "gone")
    assert rig.records() == []


def test_lots_are_those_of_the_dialect() -> None:
    """lots() and lot() see only the dialect's own lots."""
    rig = make_rig(STANDARD_LOT, BOLINK_LOT, {**BOLINK_LOT, "park_code": "P3"})
    assert [lot.park_code for lot in rig.host.lots()] == ["P1", "P3"]
    lot = rig.host.lot("P1")
    assert lot is not None and lot.secret == "s"
    assert rig.host.lot("P2") is None
    assert rig.host.lot("P9") is None


def test_deadlines_come_from_the_configuration_else_the_contract() -> None:
    """deadline() is [deadlines]' value, else the catalog's, else 30 s."""
    rig = make_rig(deadlines={"feeQuery": 7})
    assert rig.host.deadline("gateOpen") == 2.0
    assert rig.host.deadline("feeQuery") == 7.0
    assert rig.host.deadline("nonsense") == 30.0


# --- LotRouter -----------------------------------------------------------------------------------


@implementer(IDialectServer)
class FakeServer:
    """A dialect server that carries only `codes`, and records the commands it is given."""

    def __init__(self, codes: tuple[str, ...] = ()) -> None:
        self.codes = codes
        self.sent: list[tuple[str, str, object]] = []

    def factory(self, listener: str) -> Any:
        raise KeyError(listener)

    def supports(self, code: str) -> bool:
        return code in self.codes

    def command(self, park: str, code: str, data: object) -> Deferred[LotReply]:
        self.sent.append((park, code, data))
        return fail(NotConnected(park))

    def state(self, park: str) -> LotState:
        return LotState(park, True, 1.0, 2.0, f"fake:{park}")

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def routed_rig() -> tuple[DialectRig, LotRouter]:
    """Lots of two dialects in the order P2 (standard), P1 (bolink), P3 (bolink), and a router over them."""
    rig = make_rig(STANDARD_LOT, BOLINK_LOT, {**BOLINK_LOT, "park_code": "P3"})
    router = LotRouter(rig.config)
    router.servers["bolink"] = rig.server
    router.servers["standard"] = StandardServer(DialectHost("standard", rig.parts, rig.resumed.append))
    return rig, router


def error_of(deferred: Deferred[Any], error: type[E]) -> E:
    """The exception a Deferred that must already have failed failed with, which must be an `error`."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    [result] = results
    assert isinstance(result, Failure) and result.check(error), result
    exception = result.value
    assert isinstance(exception, error)
    return exception


def test_router_states_are_in_configuration_order_across_dialects() -> None:
    """states() gives every configured lot, in configuration order, each as its own dialect sees it."""
    rig, router = routed_rig()
    bind_bolink(rig, "P3")
    states = router.states()
    assert [state.park for state in states] == ["P2", "P1", "P3"]
    assert [state.connected for state in states] == [False, False, True]
    assert states[2].peer == "192.0.2.7:40001"
    assert router.state("P9") == LotState("P9", False, None, None, "")


def bind_bolink(rig: DialectRig, park: str) -> LotPeer:
    """A bolink lot of `park` logged in on a new connection of the rig."""
    lot = rig.connect()
    data = '{"park_id":"%s"}' % park
    lot.send(b'{"service_name":"login","sign":"%s","data":%s}\n' % (sign(data, "s").encode(), data.encode()))
    return lot


def bind_standard(rig: DialectRig, router: LotRouter, park: str = "P2", username: str = "u2") -> None:
    """The standard lot `park` bound on the router's standard downlink by a heartbeat with its token."""
    token, body = rig.parts.sessions.mint(username, park)
    rig.parts.sessions.install(body)
    downlink = router.servers["standard"].factory("downlink")
    protocol = downlink.buildProtocol(IPv4Address("TCP", "192.0.2.8", 40002))
    assert protocol is not None
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(encode_frame(signed_envelope("heartbeat", None, token, secret="")))


def counted(router: LotRouter) -> tuple[int, int]:
    """The router's counts, checked against what counting its states gives."""
    states = router.states()
    counts = (router.connected_count(), router.configured_count())
    assert counts == (sum(state.connected for state in states), len(states))
    return counts


def test_router_counts_connected_and_configured_lots_as_its_states_do() -> None:
    """connected_count() and configured_count() agree with states(): bound lots of either dialect,
    and a lot bound in a dialect the configuration no longer gives it, or no longer configured, is not."""
    rig, router = routed_rig()
    assert counted(router) == (0, 3)
    bind_bolink(rig, "P3")
    assert counted(router) == (1, 3)
    bind_standard(rig, router)
    assert router.state("P2").connected
    assert counted(router) == (2, 3)
    # P2 is now a bolink lot (still bound on the standard downlink), P3 is gone (still logged in).
    changed = parse(
        {"listen": {"bolink": "tcp:0"}, "lot": [{**BOLINK_LOT, "park_code": "P2"}, BOLINK_LOT]},
        dialects={"bolink": bolink, "standard": standard},
    )
    router.reconfigure(changed)
    assert counted(router) == (0, 2)


def test_router_counts_the_lots_of_a_dialect_without_bound_parks_by_their_states() -> None:
    """A dialect server without bound_parks() (optional) has its lots counted by asking state() of each."""
    rig, router = routed_rig()
    fake = FakeServer()
    router.servers["bolink"] = fake
    assert not hasattr(fake, "bound_parks")
    bind_standard(rig, router)
    assert counted(router) == (3, 3)  # the fake says every lot of its own is connected
    del router.servers["bolink"]
    assert counted(router) == (1, 3)


def test_router_sends_a_command_through_the_lots_dialect() -> None:
    """command() reaches the lot through its own dialect's server."""
    _, router = routed_rig()
    fake = FakeServer(("gateOpen",))
    router.servers["bolink"] = fake
    error_of(router.command("P1", "gateOpen", {"barCode": "c1"}), NotConnected)
    assert fake.sent == [("P1", "gateOpen", {"barCode": "c1"})]
    assert router.state("P1") == LotState("P1", True, 1.0, 2.0, "fake:P1")


def test_router_gives_the_journaled_opr_num_to_a_dialect_that_sends_one() -> None:
    """command() with an oprNum uses the dialect's command_as, and plain command for a dialect without it."""
    _, router = routed_rig()
    fake = FakeServer(("gateOpen",))
    given: list[str] = []

    def command_as(park: str, code: str, data: object, opr: str) -> Deferred[LotReply]:
        given.append(opr)
        return fail(NotConnected(park))

    router.servers["bolink"] = fake
    error_of(router.command("P1", "gateOpen", {"barCode": "c1"}, "opr-1"), NotConnected)
    assert fake.sent == [("P1", "gateOpen", {"barCode": "c1"})] and given == []
    fake.command_as = command_as  # type: ignore[attr-defined]
    error_of(router.command("P1", "gateOpen", {"barCode": "c1"}, "opr-2"), NotConnected)
    assert given == ["opr-2"] and len(fake.sent) == 1


def test_router_command_to_an_unknown_park_is_not_connected() -> None:
    """command() to a park that is not configured fails with NotConnected."""
    _, router = routed_rig()
    assert error_of(router.command("P9", "gateOpen", {"barCode": "c1"}), NotConnected).park == "P9"


def test_router_command_the_dialect_cannot_carry_is_unsupported() -> None:
    """command() with a code the lot's dialect cannot carry fails with Unsupported, sending nothing."""
    _, router = routed_rig()
    fake = FakeServer(("gateOpen",))
    router.servers["bolink"] = fake
    error = error_of(router.command("P1", "feeQuery", {"recordCode": "R1"}), Unsupported)
    assert (error.dialect, error.code) == ("bolink", "feeQuery")
    assert str(error) == "the bolink dialect has no counterpart of feeQuery"
    assert fake.sent == []


def test_router_command_to_a_lot_whose_dialect_is_not_served_is_not_connected() -> None:
    """A configured lot whose dialect has no running server is not connected."""
    rig = make_rig()
    router = LotRouter(rig.config)
    error_of(router.command("P1", "gateOpen", {"barCode": "c1"}), NotConnected)
    assert router.supports("P1", "gateOpen") is False
    assert router.state("P1") == LotState("P1", False, None, None, "")


def test_router_supports_asks_the_lots_dialect() -> None:
    """supports() is the lot's dialect's answer; an unknown park supports nothing."""
    _, router = routed_rig()
    assert router.supports("P1", "gateOpen") is True
    assert router.supports("P1", "feeQuery") is False
    assert router.supports("P2", "feeQuery") is True
    assert router.supports("P2", "carIn") is False
    assert router.supports("P9", "gateOpen") is False


def test_router_disconnect_closes_the_lot_through_its_dialect() -> None:
    """disconnect() closes the lot's connection in its own dialect, which journals it offline."""
    rig, router = routed_rig()
    lot = rig.connect()
    data = '{"park_id":"P3"}'
    lot.send(b'{"service_name":"login","sign":"%s","data":%s}\n' % (sign(data, "s").encode(), data.encode()))
    p3 = rig.config.lot_by_park("P3")
    assert p3 is not None
    assert router.disconnect(p3, "removed from the configuration") is True
    assert lot.closed
    [offline] = rig.records("lot-offline")
    assert offline.park == "P3"
    assert offline.body == {"peer": "192.0.2.7:40001", "reason": "removed from the configuration"}
    assert router.disconnect(p3, "again") is False


def test_router_disconnect_through_a_dialect_without_it_is_logged() -> None:
    """A dialect server without disconnect() leaves the connection; the router says so and answers False."""
    rig, router = routed_rig()
    router.servers["bolink"] = FakeServer()
    p1 = rig.config.lot_by_park("P1")
    assert p1 is not None
    with capturedLogs() as events:
        assert router.disconnect(p1, "removed from the configuration") is False
    assert any("cannot close lot P1's connection" in formatEvent(event) for event in events)


def test_after_a_reconfigure_the_router_and_hosts_see_the_new_lots() -> None:
    """reconfigure() on the router and the gateway's parts: removed lots are unknown, added ones known."""
    rig, router = routed_rig()
    changed = parse(
        {"listen": {"bolink": "tcp:0"}, "lot": [{**BOLINK_LOT, "park_code": "P4"}]},
        dialects={"bolink": bolink, "standard": standard},
    )
    router.reconfigure(changed)
    rig.parts.reconfigure(changed)
    assert [state.park for state in router.states()] == ["P4"]
    assert rig.host.lot("P1") is None and rig.host.lot("P4") is not None
    answer = result_of(rig.host.submit("P1", Original("in_park", "o1", {}), []))
    assert answer.result is Result.NO_SUCH_PARK


# --- the log: lot.online, lot.offline, lot.rejected ----------------------------------------------


def test_online_and_offline_log_one_event_each_with_their_keys() -> None:
    """online logs one lot.online (park, peer, how, dialect); offline one lot.offline (with the reason)."""
    rig = make_rig()
    with captured() as events:
        rig.host.online("P1", "192.0.2.7:1", "login")
        rig.host.offline("P1", "192.0.2.7:1", "gone")
    named = [e for e in events if "event" in e]
    assert [(e["event"], e["park"], e["peer"], e["dialect"]) for e in named] == [
        ("lot.online", "P1", "192.0.2.7:1", "bolink"),
        ("lot.offline", "P1", "192.0.2.7:1", "bolink"),
    ]
    assert named[0]["how"] == "login" and named[1]["reason"] == "gone"
    assert formatEvent(named[0]) == "lot P1 bound from 192.0.2.7:1 by login"


def rejected(events: list[Any]) -> list[tuple[str, str, str]]:
    """(park, code, result) of the lot.rejected events, after checking the keys every one has."""
    for event in events:
        assert event["dialect"] == "bolink" and event["via"] == "bolink" and event["reason"]
    return [(e["park"], e["code"], e["result"]) for e in events]


def test_each_refused_submit_logs_one_lot_rejected() -> None:
    """An unknown park, a refused message and a journal failure each log one lot.rejected; OK nothing."""
    rig = make_rig()
    with captured("lot.rejected") as events:
        submit(rig, [Message("carIn", CAR_IN)], park="P2")
        submit(rig, [Message("carIn", {})], opr="op2")
        rig.journal.broken = OSError("disk full")
        submit(rig, [Message("carIn", CAR_IN)], opr="op3")
        rig.journal.broken = None
        submit(rig, [Message("carIn", CAR_IN)], opr="op4")
    assert rejected(events) == [
        ("P2", "in_park", "9104"),
        ("P1", "in_park", "9004"),
        ("P1", "in_park", "9999"),
    ]
    assert "disk full" in events[-1]["reason"]


def test_a_repeat_given_the_first_answer_is_not_logged_again_but_9007_is() -> None:
    """A repeat waiting on a refused first gets its answer unlogged; past five repeats, 9007 is logged."""
    rig = make_rig()
    rig.journal.hold = True
    with captured("lot.rejected") as events:
        first = rig.host.submit("P1", original(), [Message("carIn", CAR_IN)])
        second = rig.host.submit("P1", original(), [Message("carIn", CAR_IN)])
        pending, rig.journal.pending = rig.journal.pending, []
        rig.journal.hold = False
        for waiting, _ in pending:
            waiting.errback(OSError("disk gone"))
        assert result_of(first).result is result_of(second).result is Result.FAILED
        # Attempts not stored do not count (CONTRACT §4): the retry is stored, and is the
        # first of the repeat rule; its five repeats are answered from it, the sixth 9007.
        answers = [submit(rig, [Message("carIn", CAR_IN)]).result for _ in range(7)]
    assert answers == [Result.OK] * 6 + [Result.TOO_MANY_REPEATS]
    assert rejected(events) == [("P1", "in_park", "9999"), ("P1", "in_park", "9007")]


def test_a_fault_while_submitting_answers_9999_and_frees_the_opr_num(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message the gateway chokes on (a fault, not a refusal) is answered 9999 and not stored; the
    next attempt of the same id is processed, never left waiting on the one that faulted."""
    rig = make_rig()

    def broken(*args: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(rig.host, "_checked", broken)
    assert submit(rig, [Message("carIn", CAR_IN)]).result is Result.FAILED
    monkeypatch.undo()
    assert submit(rig, [Message("carIn", CAR_IN)]).result is Result.OK
    assert len(rig.records("uplink")) == 1
