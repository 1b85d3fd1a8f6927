"""The bolink dialect at work: logins, uplinks, answers, gateOpen, binds and the sweep, over a DialectRig."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, TypeVar

import pytest
from twisted.internet.defer import Deferred
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from gateway.config import ConfigError, parse
from gateway.dialects.bolink import BolinkDialect, BolinkServer, bolink, legacy_opr
from gateway.dialects.interface import IDialect, IDialectServer, Unsupported
from gateway.dialects.standard import standard
from gateway.dialects.testing import START, DialectRig, LotPeer
from gateway.interfaces import DeadlinePassed, LotReply, LotState, NotConnected
from gateway.journal.record import Record
from gateway.protocol.results import Result
from tests.test_logs import captured

SECRET = "bolink-secret"
# Only its form is checked when the configuration is read.
HASH = "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$aGFzaA"
IN_TIME = 1_700_000_000  # 2023-11-15 06:13:20 in Asia/Shanghai
OUT_TIME = IN_TIME + 2 * 3600 + 125  # 2 h 2 min 5 s later: 08:15:25
ENTRY: dict[str, Any] = {
    "order_id": "A20231115001",
    "car_number": "京A12345",
    "in_channel_id": "E1",
    "in_time": IN_TIME,
    "car_type": "月租车",
    "empty_plot": 5,
}
EXIT: dict[str, Any] = {
    "order_id": "A20231115001",
    "car_number": "京A12345",
    "in_channel_id": "E1",
    "out_channel_id": "X1",
    "in_time": IN_TIME,
    "out_time": OUT_TIME,
    "car_type": "月租车",
    "amount_receivable": "12.50",
    "total": 10,
    "reduce_amount": 2.5,
    "pay_type": "cash",
    "empty_plot": 6,
}
E = TypeVar("E", bound=Exception)


def lot_table(park: str = "P1", **keys: Any) -> dict[str, Any]:
    """A [[lot]] table of a bolink lot."""
    return {"park_code": park, "dialect": "bolink", "secret": SECRET, **keys}


def make_rig(*lots: dict[str, Any], **settings: dict[str, Any]) -> DialectRig:
    """A rig serving bolink for `lots` (one lot P1 by default), with [tcp]/[deadlines] `settings`."""
    return DialectRig(bolink, lots=list(lots) or [lot_table()], settings=settings)


def signed(data_text: str, secret: str = SECRET) -> str:
    """bolink's signature, worked out here from its definition: MD5(data + "key=" + secret), upper case."""
    return hashlib.md5((data_text + "key=" + secret).encode("utf-8")).hexdigest().upper()


def json_text(data: dict[str, Any]) -> str:
    """`data` as `line` writes (and signs) it."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def line(
    service: str,
    data: dict[str, Any] | None = None,
    *,
    token: str = "",
    secret: str = SECRET,
    sign: str | None = None,
) -> bytes:
    """One bolink message as a lot writes it: `data` compact, in its own key order, signed."""
    text = json_text(data) if data is not None else ""
    members = [
        f'"service_name":{json.dumps(service)}',
        f'"token":{json.dumps(token)}',
        f'"sign":{json.dumps(signed(text, secret) if sign is None else sign)}',
    ]
    if data is not None:
        members.append(f'"data":{text}')
    return ("{" + ",".join(members) + "}\n").encode("utf-8")


def frames(data: bytes) -> list[bytes]:
    """The frames in `data`, each of which must be as the ParkingOS server writes it: "\\n" + text + "\\r"."""
    found = re.findall(rb"\n([^\r\n]*)\r", data)
    assert b"".join(b"\n" + text + b"\r" for text in found) == data, data
    return found


def opr_of(service: str, data: dict[str, Any]) -> str:
    """The journal's opr of a legacy message: service, order_id and 8 hex digits of its data's MD5.

    One longer than 32 characters is journaled as its MD5 (the host's rule).
    """
    fingerprint = hashlib.md5(json_text(data).encode()).hexdigest()[:8]
    opr = f"{service}:{data['order_id']}:{fingerprint}"
    return opr if len(opr) <= 32 else hashlib.md5(opr.encode()).hexdigest()


def liftrod_answer(token: str, command: dict[str, Any], state: int = 1, **data: Any) -> bytes:
    """The lot's answer to the operate_liftrod `command` as the SDK sends it: signed, members in data."""
    members = {
        "data_target": "cloud",
        "state": state,
        "channel_id": command["channel_id"],
        "operate": command["operate"],
        "liftrod_id": command["liftrod_id"],
        **data,
    }
    return line("operate_liftrod", {k: v for k, v in members.items() if v is not None}, token=token)


def answers(peer: LotPeer) -> list[dict[str, Any]]:
    """The frames the gateway wrote to `peer` since the last call, parsed."""
    return [json.loads(text) for text in frames(peer.received())]


def body(record: Record) -> dict[str, Any]:
    """A record's body, which must be a JSON object."""
    assert isinstance(record.body, dict)
    return record.body


def server(rig: DialectRig) -> BolinkServer:
    """The rig's bolink server, with its own methods (the sweep)."""
    assert isinstance(rig.server, BolinkServer)
    return rig.server


def only_answer(peer: LotPeer) -> dict[str, Any]:
    """The one line the gateway wrote to `peer` since the last call, parsed."""
    [answer] = answers(peer)
    return answer


def log_in(rig: DialectRig, park: str = "P1", secret: str = SECRET) -> tuple[LotPeer, str]:
    """Connect a lot, log it in as `park`; its connection and token."""
    peer = rig.connect()
    peer.send(line("login", {"park_id": park, "local_id": "L1"}, secret=secret))
    answer = only_answer(peer)
    assert answer["state"] == 1, answer
    return peer, answer["token"]


def outcome(deferred: Deferred[Any]) -> list[Any]:
    """A list that gets the Deferred's result (or Failure) once it fires."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    return results


def failed_with(results: list[Any], error: type[E]) -> E:
    """The exception of the one Failure in `results`, which must be an `error`."""
    [result] = results
    assert isinstance(result, Failure), result
    assert result.check(error), result
    exception = result.value
    assert isinstance(exception, error)
    return exception


# --- the plugin ----------------------------------------------------------------------------------


def test_bolink_provides_the_dialect_interfaces() -> None:
    """The bolink plugin object is an IPlugin and IDialect named bolink, listening on [listen] bolink."""
    assert verifyObject(IPlugin, bolink)
    assert verifyObject(IDialect, bolink)
    assert bolink.name == "bolink"
    assert bolink.listeners == ("bolink",)
    assert isinstance(bolink, BolinkDialect)


def test_server_provides_the_server_interface() -> None:
    """The server bolink builds is an IDialectServer; it serves only the bolink listener."""
    rig = make_rig()
    assert isinstance(rig.server, BolinkServer)
    assert verifyObject(IDialectServer, rig.server)
    with pytest.raises(KeyError):
        rig.server.factory("uplink")


# --- heartbeats ----------------------------------------------------------------------------------


def test_heartbeat_line_is_answered() -> None:
    """The line 0x11 is answered 0x12 framed as the server frames it ("\\n0x12\\r"), journaling nothing."""
    rig = make_rig()
    peer = rig.connect()
    peer.send(b"0x11\n")
    assert peer.received() == b"\n0x12\r"
    peer, _ = log_in(rig)
    peer.send(b"0x11\r\n")
    assert peer.received() == b"\n0x12\r"
    peer.send(b"\n0x11\r")
    assert peer.received() == b"\n0x12\r"
    assert [r.kind for r in rig.records()] == ["lot-online"]


def test_heartbeat_byte_with_line_end_is_answered() -> None:
    """The byte 0x11 on a line of its own is answered with the byte 0x12, framed."""
    rig = make_rig()
    peer, _ = log_in(rig)
    peer.send(b"\x11\n")
    assert peer.received() == b"\n\x12\r"
    assert peer.closed is False


def test_heartbeat_bare_byte_is_answered() -> None:
    """The single byte 0x11, with no line end, is answered with 0x12 and does not spoil the next line."""
    rig = make_rig()
    peer = rig.connect()
    peer.send(b"\x11")
    assert peer.received() == b"\n\x12\r"
    peer.send(line("login", {"park_id": "P1", "local_id": "L1"}))
    assert only_answer(peer)["state"] == 1


# --- framing -------------------------------------------------------------------------------------


def test_frames_of_either_framing_are_read() -> None:
    """A lot's frames may be "\\n" + JSON + "\\r" (as the cloud writes) or JSON + "\\n" / "\\r\\n", mixed."""
    rig = make_rig()
    peer = rig.connect()
    login = line("login", {"park_id": "P1", "local_id": "L1"})
    peer.send(b"\n" + login.rstrip(b"\n") + b"\r")
    token = only_answer(peer)["token"]
    entry = line("in_park", ENTRY, token=token).rstrip(b"\n")
    exit_ = line("out_park", EXIT, token=token).rstrip(b"\n")
    stream = b"\n" + entry + b"\r" + exit_ + b"\r\n" + b"\n0x11\r"
    for index in range(0, len(stream), 7):  # in pieces, as TCP may deliver it
        peer.send(stream[index : index + 7])
    *stored, heartbeat = frames(peer.received())
    assert [json.loads(text)["service_name"] for text in stored] == ["in_park", "out_park"]
    assert heartbeat == b"0x12"
    assert rig.codes() == ["carIn", "freeSpace", "carOut", "freeSpace"]


def test_a_lot_configured_for_lines_gets_lines() -> None:
    """A lot with framing = "lines" gets JSON + "\\n" from its login on: answers, heartbeats, commands."""
    rig = make_rig(lot_table(framing="lines"))
    peer = rig.connect()
    peer.send(b"0x11\n")
    assert peer.received() == b"\n0x12\r"  # not logged in: not known yet
    peer.send(line("login", {"park_id": "P1", "local_id": "L1"}))
    login = peer.received()
    assert login.endswith(b"\n") and login.count(b"\n") == 1 and b"\r" not in login
    token = json.loads(login)["token"]
    peer.send(b"0x11\n")
    assert peer.received() == b"0x12\n"
    peer.send(line("in_park", ENTRY, token=token))
    assert json.loads(peer.received())["state"] == 1
    results = outcome(rig.command("P1", "gateOpen", {"barCode": "c1", "isOpen": 1}))
    sent = peer.received()
    assert sent.endswith(b"\n") and not sent.startswith(b"\n")
    peer.send(liftrod_answer(token, json.loads(sent)))
    assert [r.result_code for r in results] == ["0000"]


def test_bytes_before_logging_in_are_bounded() -> None:
    """A peer that has not logged in is closed once it has sent more than [tcp] max_unbound_bytes."""
    rig = make_rig(tcp={"max_unbound_bytes": 1000})
    peer = rig.connect()
    peer.send(b"0x11\n" * 190)
    assert peer.closed is False
    peer.send(b"x" * 100)
    assert peer.closed is True
    # A lot that logged in may send what it likes.
    peer, token = log_in(rig)
    for _ in range(20):
        peer.send(line("park_status", {"free": 3}, token=token))
    assert peer.closed is False


def test_a_line_longer_than_max_frame_bytes_is_dropped() -> None:
    """[tcp] max_frame_bytes below 64 KiB bounds a bolink line too: a longer one is answered and dropped."""
    rig = make_rig(tcp={"max_frame_bytes": 1024})
    peer, token = log_in(rig)
    peer.send(line("park_log", {"text": "x" * 1100}, token=token))
    answer = only_answer(peer)
    assert (answer["state"], answer["errmsg"]) == (0, "line longer than 1024 bytes; dropped")
    peer.send(line("in_park", ENTRY, token=token))
    assert only_answer(peer)["state"] == 1


# --- logging in ----------------------------------------------------------------------------------


def test_login_answers_a_token_and_binds_the_lot() -> None:
    """A login signed with the lot's secret is answered state 1 with a fresh token; the lot is online."""
    rig = make_rig()
    peer = rig.connect()
    peer.send(line("login", {"park_id": "P1", "local_id": "L1"}))
    answer = only_answer(peer)
    # The members, in the order, of the ParkingOS server's answer (SensorServerHandler.doLogin).
    assert list(answer) == ["state", "token", "service_name"]
    assert answer["service_name"] == "login"
    assert answer["state"] == 1
    assert re.fullmatch(r"[0-9a-f]{32}", answer["token"])
    [online] = rig.records()
    assert (online.kind, online.park, online.code, online.opr) == ("lot-online", "P1", "", "")
    assert online.body == {"peer": "192.0.2.7:40001", "reason": "login (local_id L1)"}
    assert rig.resumed == ["P1"]
    assert rig.server.state("P1") == LotState("P1", True, START, START, "192.0.2.7:40001")


def test_an_sdk_2_1_login_with_union_id_and_version() -> None:
    """A login as SDK 2.1.0.0 writes it (union_id, park_id, local_id, version) binds, naming its local_id."""
    rig = make_rig(lot_table("30001"))
    peer = rig.connect()
    local = "0a1b2c3d4e5f_2.1.0.0_channels_1_2_3"
    data = {"union_id": "200300", "park_id": "30001", "local_id": local, "version": "2.1.0.0"}
    peer.send(line("login", data))
    assert only_answer(peer)["state"] == 1
    [online] = rig.records()
    assert online.body == {"peer": "192.0.2.7:40001", "reason": f"login (local_id {local})"}


def test_a_sign_over_the_data_as_the_server_reserializes_it_is_accepted() -> None:
    """Data written with blanks, signed as the server signs it (compact, numbers as written), is accepted."""
    rig = make_rig()
    peer, token = log_in(rig)
    spaced = '{ "order_id" : "A7", "car_number" : "京A12345", "total" : 12.50, "in_time" : 1700000000 }'
    compact = '{"order_id":"A7","car_number":"京A12345","total":12.50,"in_time":1700000000}'
    message = '{"service_name":"in_park","token":"%s","sign":"%s","data":%s}\n' % (
        token,
        signed(compact),
        spaced,
    )
    peer.send(message.encode())
    assert only_answer(peer)["state"] == 1
    message = '{"service_name":"in_park","token":"%s","sign":"%s","data":%s}\n' % (
        token,
        signed(compact).lower(),
        compact.replace("A7", "A8"),
    )
    peer.send(message.encode())
    assert only_answer(peer)["errmsg"] == "sign: does not match data"


def test_each_login_gets_its_own_token() -> None:
    """Two lots logging in get different tokens."""
    rig = make_rig(lot_table("P1"), lot_table("P2"))
    _, first = log_in(rig, "P1")
    _, second = log_in(rig, "P2")
    assert first != second


def test_login_with_a_wrong_sign_is_refused_and_the_connection_kept() -> None:
    """A login not signed with the lot's secret is answered state 0 naming sign; a right one then works."""
    rig = make_rig()
    peer = rig.connect()
    peer.send(line("login", {"park_id": "P1", "local_id": "L1"}, secret="not-the-secret"))
    answer = only_answer(peer)
    assert answer == {"state": 0, "errmsg": answer["errmsg"], "service_name": "login"}
    assert "sign" in answer["errmsg"]
    assert peer.closed is False
    assert rig.records() == []
    assert rig.server.state("P1").connected is False
    peer.send(line("login", {"park_id": "P1", "local_id": "L1"}))
    assert only_answer(peer)["state"] == 1


@pytest.mark.parametrize(
    "data",
    [
        {"park_id": "P9", "local_id": "L1"},  # not configured
        {"park_id": "P2", "local_id": "L1"},  # a lot of the standard dialect
        {"park_id": "", "local_id": "L1"},
        {"local_id": "L1"},
    ],
)
def test_login_of_a_park_that_is_no_bolink_lot_is_refused(data: dict[str, Any]) -> None:
    """A login naming no bolink lot of this gateway is answered state 0 naming park_id; nothing binds."""
    rig = make_rig(lot_table("P1"), {"park_code": "P2", "username": "u2", "password": HASH})
    peer = rig.connect()
    peer.send(line("login", data))
    answer = only_answer(peer)
    assert (answer["state"], "token" in answer) == (0, False)
    assert "park_id" in answer["errmsg"]
    assert peer.closed is False
    assert rig.records() == []
    assert rig.resumed == []


def test_login_takes_a_numeric_park_id() -> None:
    """A login whose park_id is a number finds the lot whose park code is that number written out."""
    rig = make_rig(lot_table("1001"))
    peer = rig.connect()
    peer.send(line("login", {"park_id": 1001, "local_id": "L1"}))
    assert only_answer(peer)["state"] == 1
    assert rig.server.state("1001").connected is True


# --- who may send --------------------------------------------------------------------------------


def test_uplink_before_login_is_refused() -> None:
    """Any message before login is answered state 0 "log in first", stored nowhere, connection kept."""
    rig = make_rig()
    peer = rig.connect()
    peer.send(line("in_park", ENTRY))
    assert only_answer(peer) == {
        "service_name": "in_park",
        "state": 0,
        "errmsg": "log in first (service_name login)",
        "order_id": "A20231115001",
    }
    assert rig.records() == []
    assert peer.closed is False


def test_uplink_with_a_wrong_token_is_refused() -> None:
    """A message whose token is not the one this connection's login gave is answered state 0 naming token."""
    rig = make_rig(lot_table("P1"), lot_table("P2"))
    peer, _ = log_in(rig, "P1")
    _, other = log_in(rig, "P2")
    for token in ("", "0" * 32, other):
        peer.send(line("in_park", ENTRY, token=token))
        answer = only_answer(peer)
        assert answer["state"] == 0
        assert "token" in answer["errmsg"]
    assert rig.codes() == []
    assert rig.originals() == []


def test_uplink_with_a_wrong_sign_is_refused() -> None:
    """A message not signed with the lot's secret is answered state 0 naming sign and stored nowhere."""
    rig = make_rig()
    peer, token = log_in(rig)
    peer.send(line("in_park", ENTRY, token=token, secret="not-the-secret"))
    answer = only_answer(peer)
    assert answer["state"] == 0
    assert answer["errmsg"] == "sign: does not match data"
    peer.send(line("in_park", ENTRY, token=token, sign=""))
    assert only_answer(peer)["state"] == 0
    assert rig.codes() == []


def test_signature_off_takes_unsigned_messages_from_a_lot_without_secret() -> None:
    """A lot with signature "off" (and no secret) logs in and sends with any sign or none."""
    rig = make_rig(lot_table(secret="", signature="off"))
    peer = rig.connect()
    peer.send(line("login", {"park_id": "P1"}, sign=""))
    token = only_answer(peer)["token"]
    peer.send(line("in_park", ENTRY, token=token, sign="whatever"))
    assert only_answer(peer)["state"] == 1
    assert rig.codes() == ["carIn", "freeSpace"]


def test_signature_optional_takes_unsigned_but_checks_signed_messages() -> None:
    """A lot with signature "optional" may leave sign empty, but a sign it gives must match."""
    rig = make_rig(lot_table(signature="optional"))
    peer = rig.connect()
    peer.send(line("login", {"park_id": "P1"}, sign=""))
    token = only_answer(peer)["token"]
    peer.send(line("in_park", ENTRY, token=token, sign=""))
    assert only_answer(peer)["state"] == 1
    peer.send(line("out_park", EXIT, token=token, sign="0" * 32))
    assert only_answer(peer)["errmsg"] == "sign: does not match data"
    assert rig.codes() == ["carIn", "freeSpace"]


def test_signature_required_refuses_an_unsigned_login() -> None:
    """A lot with the default signature mode ("required") cannot log in without a sign."""
    rig = make_rig()
    peer = rig.connect()
    peer.send(line("login", {"park_id": "P1"}, sign=""))
    assert only_answer(peer)["state"] == 0


# --- uplinks: translated and stored --------------------------------------------------------------


def test_in_park_is_stored_as_car_in_and_free_space() -> None:
    """in_park with empty_plot is journaled as carIn and freeSpace, then itself; answered state 1."""
    rig = make_rig()
    peer, token = log_in(rig)
    peer.send(line("in_park", ENTRY, token=token))
    assert only_answer(peer) == {
        "service_name": "in_park",
        "state": 1,
        "errmsg": "",
        "order_id": "A20231115001",
    }
    online, car_in, free_space, original = rig.records()
    assert online.kind == "lot-online"
    assert (car_in.kind, car_in.park, car_in.code, car_in.opr) == (
        "uplink",
        "P1",
        "carIn",
        opr_of("in_park", ENTRY) + "-0",
    )
    assert car_in.body == {
        "recordCode": "A20231115001",
        "carNum": "京A12345",
        "inCross": "E1",
        "inTime": "2023-11-15 06:13:20",
        "inIdentity": 1,
    }
    assert (free_space.kind, free_space.code, free_space.opr) == (
        "uplink",
        "freeSpace",
        opr_of("in_park", ENTRY) + "-1",
    )
    assert free_space.body == {"emptyNum": 5}
    assert (original.kind, original.park, original.code, original.opr) == (
        "legacy",
        "P1",
        "in_park",
        opr_of("in_park", ENTRY),
    )
    # The token is the connection's: not kept.
    assert original.body == {
        "dialect": "bolink",
        "translated": ["carIn", "freeSpace"],
        "message": {"service_name": "in_park", "sign": signed(json_text(ENTRY)), "data": ENTRY},
    }
    rig.check_catalog()


def test_in_park_events_carry_rfc3339_times() -> None:
    """The events of an in_park are carIn and freeSpace (not the legacy record), times in +08:00."""
    rig = make_rig()
    peer, token = log_in(rig)
    peer.send(line("in_park", ENTRY, token=token))
    online, car_in, free_space = rig.events()
    assert online["type"] == "org.cpmi.gateway.lot-online.v1"
    assert car_in == {
        "specversion": "1.0",
        "id": "gw-test-2",
        "source": "urn:cpmi:park:P1",
        "type": "org.cpmi.t002.carIn.v1",
        "time": "2023-11-14T22:13:20.000000Z",
        "datacontenttype": "application/json",
        "cpmioprnum": opr_of("in_park", ENTRY) + "-0",
        "cpmiseq": 2,
        "data": {
            "recordCode": "A20231115001",
            "carNum": "京A12345",
            "inCross": "E1",
            "inTime": "2023-11-15T06:13:20+08:00",
            "inIdentity": 1,
        },
    }
    assert free_space == {
        "specversion": "1.0",
        "id": "gw-test-3",
        "source": "urn:cpmi:park:P1",
        "type": "org.cpmi.t002.freeSpace.v1",
        "time": "2023-11-14T22:13:20.000000Z",
        "datacontenttype": "application/json",
        "cpmioprnum": opr_of("in_park", ENTRY) + "-1",
        "cpmiseq": 3,
        "data": {"emptyNum": 5},
    }


def test_in_park_without_empty_plot_makes_no_free_space() -> None:
    """in_park without empty_plot is journaled as a carIn alone."""
    rig = make_rig()
    peer, token = log_in(rig)
    entry = {key: value for key, value in ENTRY.items() if key != "empty_plot"}
    peer.send(line("in_park", entry, token=token))
    assert only_answer(peer)["state"] == 1
    assert rig.codes() == ["carIn"]
    assert body(rig.originals()[0])["translated"] == ["carIn"]


@pytest.mark.parametrize("service", ["out_park", "upload_order"])
def test_exit_is_stored_as_car_out_and_free_space(service: str) -> None:
    """out_park and upload_order are journaled as carOut and freeSpace; their events carry +08:00 times."""
    rig = make_rig()
    peer, token = log_in(rig)
    rig.clock.advance(OUT_TIME - START)
    peer.send(line(service, EXIT, token=token))
    assert only_answer(peer) == {
        "service_name": service,
        "state": 1,
        "errmsg": "",
        "order_id": "A20231115001",
    }
    car_out, free_space = rig.records("uplink")
    opr = opr_of(service, EXIT)
    assert (car_out.code, car_out.opr, free_space.code, free_space.opr) == (
        "carOut",
        f"{opr}-0",
        "freeSpace",
        f"{opr}-1",
    )
    assert car_out.body == {
        "recordCode": "A20231115001",
        "carNum": "京A12345",
        "inCross": "E1",
        "outCross": "X1",
        "inTime": "2023-11-15 06:13:20",
        "outTime": "2023-11-15 08:15:25",
        "inIdentity": 1,
        "parkMinutes": 122,
        "payMoney": 12.5,
        "incomeMoney": 10.0,
        "discountMoney": 2.5,
        "paymentMode": 1,
    }
    assert free_space.body == {"emptyNum": 6}
    [original] = rig.originals()
    assert (original.code, original.opr, body(original)["translated"]) == (
        service,
        opr,
        ["carOut", "freeSpace"],
    )
    rig.check_catalog()
    _, car_out_event, free_space_event = rig.events()
    assert car_out_event == {
        "specversion": "1.0",
        "id": "gw-test-2",
        "source": "urn:cpmi:park:P1",
        "type": "org.cpmi.t002.carOut.v1",
        "time": "2023-11-15T00:15:25.000000Z",
        "datacontenttype": "application/json",
        "cpmioprnum": f"{opr}-0",
        "cpmiseq": 2,
        "data": {
            **car_out.body,
            "inTime": "2023-11-15T06:13:20+08:00",
            "outTime": "2023-11-15T08:15:25+08:00",
        },
    }
    assert free_space_event["type"] == "org.cpmi.t002.freeSpace.v1"
    assert free_space_event["data"] == {"emptyNum": 6}


def test_other_services_are_kept_and_forwarded_as_they_came() -> None:
    """A service with no standard counterpart is journaled as legacy and forwarded as a bolink event."""
    rig = make_rig()
    peer, token = log_in(rig)
    data = {"order_id": "M1", "month_user": "张三", "fee": 300}
    peer.send(line("month_member_sync", data, token=token))
    assert only_answer(peer) == {
        "service_name": "month_member_sync",
        "state": 1,
        "errmsg": "",
        "order_id": "M1",
    }
    assert rig.codes() == []
    [original] = rig.originals()
    assert (original.code, original.opr) == ("month_member_sync", opr_of("month_member_sync", data))
    message = {"service_name": "month_member_sync", "sign": signed(json_text(data)), "data": data}
    assert original.body == {"dialect": "bolink", "translated": [], "message": message}
    _, event = rig.events()
    assert event == {
        "specversion": "1.0",
        "id": "gw-test-2",
        "source": "urn:cpmi:park:P1",
        "type": "org.cpmi.dialect.bolink.month_member_sync.v1",
        "time": "2023-11-14T22:13:20.000000Z",
        "datacontenttype": "application/json",
        "cpmioprnum": opr_of("month_member_sync", data),
        "cpmiseq": 2,
        "data": message,
    }
    assert token not in json.dumps(event)


def test_other_service_without_order_gets_a_fresh_id_each_time() -> None:
    """A kept message without an order_id is stored again each time it comes: it has no identity."""
    rig = make_rig()
    peer, token = log_in(rig)
    peer.send(line("park_status", {"free": 3}, token=token))
    peer.send(line("park_status", {"free": 3}, token=token))
    assert [a["state"] for a in answers(peer)] == [1, 1]
    first, second = rig.originals()
    assert first.opr != second.opr
    assert re.fullmatch(r"[0-9a-f]{32}", first.opr)


@pytest.mark.parametrize("service", ["in_park", "month_member_sync"])
def test_uplink_is_answered_only_once_journaled(service: str) -> None:
    """A message is answered only once the journal holds it durably: nothing is said while it is held."""
    rig = make_rig()
    peer, token = log_in(rig)
    rig.journal.hold = True
    peer.send(line(service, ENTRY, token=token))
    assert peer.received() == b""
    assert rig.originals() == []
    rig.journal.release()
    assert only_answer(peer)["state"] == 1
    assert [r.code for r in rig.originals()] == [service]


def test_journal_failure_is_answered_state_0_and_the_retry_stored() -> None:
    """A message the journal cannot store is answered state 0 with 9999's text; sent again, it is stored."""
    rig = make_rig()
    peer, token = log_in(rig)
    rig.journal.broken = OSError("disk full")
    peer.send(line("in_park", ENTRY, token=token))
    answer = only_answer(peer)
    assert answer["state"] == 0
    assert answer["errmsg"].startswith(Result.FAILED.text)
    assert "disk full" in answer["errmsg"]
    rig.journal.broken = None
    peer.send(line("in_park", ENTRY, token=token))
    assert only_answer(peer)["state"] == 1
    assert rig.codes() == ["carIn", "freeSpace"]


# --- repeats -------------------------------------------------------------------------------------


def test_a_repeated_in_park_is_answered_as_processed_already_and_stored_once() -> None:
    """The same in_park sent again is answered state 0 "数据已处理过..." with order and plate; stored once."""
    rig = make_rig()
    peer, token = log_in(rig)
    peer.send(line("in_park", ENTRY, token=token))
    assert only_answer(peer)["state"] == 1
    for _ in range(7):
        peer.send(line("in_park", ENTRY, token=token))
        # The later ParkingOS server's answer to a repeat (TempUtil.isReSend), member for member.
        assert only_answer(peer) == {
            "state": 0,
            "errmsg": "数据已处理过...",
            "service_name": "in_park",
            "order_id": "A20231115001",
            "car_number": "京A12345",
        }
    assert rig.codes() == ["carIn", "freeSpace"]
    assert len(rig.originals()) == 1


@pytest.mark.parametrize("service", ["out_park", "upload_order"])
def test_an_exit_settled_again_with_other_data_is_stored_again(service: str) -> None:
    """An exit of the same order sent again with other data (paid another way) is a new message, stored."""
    rig = make_rig()
    peer, token = log_in(rig)
    peer.send(line(service, {**EXIT, "pay_type": "sweepcode"}, token=token))
    peer.send(line(service, EXIT, token=token))
    peer.send(line(service, EXIT, token=token))
    assert [(a["state"], a["errmsg"]) for a in answers(peer)] == [(1, ""), (1, ""), (0, "数据已处理过...")]
    assert rig.codes() == ["carOut", "freeSpace", "carOut", "freeSpace"]
    assert [r.body["paymentMode"] for r in rig.records("uplink") if r.code == "carOut"] == [0, 1]


def test_a_repeat_with_other_blanks_is_a_repeat() -> None:
    """The same data written with blanks between its members is the same message: a repeat."""
    rig = make_rig()
    peer, token = log_in(rig)
    peer.send(line("in_park", ENTRY, token=token))
    spaced = json.dumps(ENTRY, ensure_ascii=False, separators=(", ", ": "))
    sign = signed(json_text(ENTRY))
    peer.send(f'{{"service_name":"in_park","token":"{token}","sign":"{sign}","data": {spaced}}}\n'.encode())
    assert [a["state"] for a in answers(peer)] == [1, 0]
    assert rig.codes() == ["carIn", "freeSpace"]


def test_a_repeat_while_the_first_is_held_waits_for_its_answer() -> None:
    """A repeat arriving while the first is still being journaled gets its answer when it is durable."""
    rig = make_rig()
    peer, token = log_in(rig)
    rig.journal.hold = True
    peer.send(line("in_park", ENTRY, token=token))
    peer.send(line("in_park", ENTRY, token=token))
    assert peer.received() == b""
    rig.journal.hold = False
    rig.journal.release()
    assert [a["state"] for a in answers(peer)] == [1, 1]
    assert rig.codes() == ["carIn", "freeSpace"]


def test_a_kept_message_sent_again_is_answered_as_the_first_time() -> None:
    """A repeat of a service the server does not check (no entry or exit) is answered as the first time."""
    rig = make_rig()
    peer, token = log_in(rig)
    data = {"order_id": "M1", "fee": 300}
    peer.send(line("month_pay_record", data, token=token))
    peer.send(line("month_pay_record", data, token=token))
    assert [a["state"] for a in answers(peer)] == [1, 1]
    assert len(rig.originals()) == 1


def test_a_repeat_after_reconnecting_is_answered_and_not_stored_again() -> None:
    """The same in_park sent again over a new connection (the lot retrying) is answered and stored once."""
    rig = make_rig()
    peer, token = log_in(rig)
    peer.send(line("in_park", ENTRY, token=token))
    assert only_answer(peer)["state"] == 1
    peer.lose()
    peer, token = log_in(rig)
    peer.send(line("in_park", ENTRY, token=token))
    assert only_answer(peer)["errmsg"] == "数据已处理过..."
    assert rig.codes() == ["carIn", "freeSpace"]


def test_the_same_in_park_an_hour_later_is_stored_again() -> None:
    """The repeat rule covers an hour: the same in_park an hour after the first is a new message."""
    rig = make_rig()
    peer, token = log_in(rig)
    peer.send(line("in_park", ENTRY, token=token))
    rig.clock.advance(3599)
    peer.send(line("in_park", ENTRY, token=token))
    assert rig.codes() == ["carIn", "freeSpace"]
    rig.clock.advance(1)
    peer.send(line("in_park", ENTRY, token=token))
    assert [a["state"] for a in answers(peer)] == [1, 0, 1]
    assert rig.codes() == ["carIn", "freeSpace", "carIn", "freeSpace"]


def test_the_memory_of_stored_messages_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past REPEAT_MEMORY stored entries and exits the oldest is forgotten (the host still stores it once)."""
    monkeypatch.setattr("gateway.dialects.bolink.REPEAT_MEMORY", 3)
    rig = make_rig()
    peer, token = log_in(rig)
    for order in range(5):
        peer.send(line("in_park", {**ENTRY, "order_id": f"A{order}"}, token=token))
    assert len(server(rig)._processed) == 3
    peer.send(line("in_park", {**ENTRY, "order_id": "A0"}, token=token))
    peer.send(line("in_park", {**ENTRY, "order_id": "A4"}, token=token))
    assert [a["state"] for a in answers(peer)] == [1] * 5 + [1, 0]
    assert len(rig.originals()) == 5


def test_entry_and_exit_of_one_order_are_not_repeats() -> None:
    """in_park and out_park of the same order_id are different messages: both are stored."""
    rig = make_rig()
    peer, token = log_in(rig)
    peer.send(line("in_park", ENTRY, token=token))
    peer.send(line("out_park", EXIT, token=token))
    assert [a["state"] for a in answers(peer)] == [1, 1]
    assert rig.codes() == ["carIn", "freeSpace", "carOut", "freeSpace"]


# --- what is not a message -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b'{"service_name":"in_park",', "not a JSON object"),
        (b"[1, 2]", "not a JSON object"),
        (b'"in_park"', "not a JSON object"),
        (b'{"token":"x","data":{}}', "service_name: required"),
        (b'{"service_name":"","data":{}}', "service_name: required"),
        (b'{"service_name":"in_park","data":[1]}', "data: must be a JSON object"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_a_line_that_is_no_message_is_answered_state_0_and_the_connection_kept(
    text: bytes, problem: str
) -> None:
    """A line that is not a bolink message is answered state 0 naming the problem; the next one works."""
    rig = make_rig()
    peer, token = log_in(rig)
    peer.send(text + b"\n")
    answer = only_answer(peer)
    assert answer["state"] == 0
    assert problem in answer["errmsg"]
    assert peer.closed is False
    peer.send(line("in_park", ENTRY, token=token))
    assert only_answer(peer)["state"] == 1


def test_an_oversize_line_is_answered_once_and_the_next_line_handled() -> None:
    """A line of more than 64 KiB gets one state-0 answer naming the limit; the line after it is handled."""
    rig = make_rig()
    peer, token = log_in(rig)
    peer.send(b'{"service_name":"in_park","data":"' + b"x" * 40_000)
    peer.send(b"x" * 40_000)
    peer.send(b"x" * 40_000)
    [answer] = answers(peer)
    assert answer["state"] == 0
    assert "65536" in answer["errmsg"]
    peer.send(b'"}\n' + line("in_park", ENTRY, token=token))
    assert only_answer(peer)["state"] == 1
    assert peer.closed is False
    assert rig.codes() == ["carIn", "freeSpace"]


# --- refusals naming the legacy field ------------------------------------------------------------


def test_an_order_id_too_long_for_record_code_is_refused_naming_both() -> None:
    """An order_id longer than recordCode's 20 characters is refused 9010 naming recordCode and order_id."""
    rig = make_rig()
    peer, token = log_in(rig)
    peer.send(line("in_park", {**ENTRY, "order_id": "X" * 21}, token=token))
    answer = only_answer(peer)
    assert answer["state"] == 0
    assert answer["errmsg"].startswith(Result.FIELD_INVALID.text)
    assert "recordCode" in answer["errmsg"]
    assert "order_id" in answer["errmsg"]
    assert answer["order_id"] == "X" * 21
    assert rig.codes() == []
    assert rig.originals() == []


@pytest.mark.parametrize(
    ("service", "member", "value"),
    [
        ("in_park", "in_time", "abc"),
        ("in_park", "car_number", ""),
        ("out_park", "out_time", IN_TIME - 60),
        ("out_park", "total", "12,50"),
        ("out_park", "empty_plot", "many"),
    ],
)
def test_a_member_without_counterpart_is_refused_naming_it(service: str, member: str, value: object) -> None:
    """A legacy member that cannot be carried over is refused state 0 naming it; nothing is stored."""
    rig = make_rig()
    peer, token = log_in(rig)
    data = ENTRY if service == "in_park" else EXIT
    peer.send(line(service, {**data, member: value}, token=token))
    answer = only_answer(peer)
    assert answer["state"] == 0
    assert member in answer["errmsg"]
    assert rig.codes() == []
    assert rig.originals() == []


def test_free_space_above_the_total_is_refused_and_nothing_stored() -> None:
    """empty_plot above the park's totalNum is refused with 9105's text, and not even the carIn is stored."""
    rig = make_rig()
    rig.parts.totals.set("P1", 10)
    peer, token = log_in(rig)
    peer.send(line("in_park", {**ENTRY, "empty_plot": 11}, token=token))
    answer = only_answer(peer)
    assert answer["state"] == 0
    assert answer["errmsg"].startswith(Result.TOO_MANY_FREE.text)
    assert rig.codes() == []
    assert rig.originals() == []
    # At the total it is accepted; and the refusal left nothing behind for the repeat rule.
    peer.send(line("in_park", {**ENTRY, "empty_plot": 10}, token=token))
    assert only_answer(peer)["state"] == 1
    assert rig.codes() == ["carIn", "freeSpace"]


def test_negative_free_space_is_refused() -> None:
    """A negative empty_plot is refused with 9010's text and nothing is stored."""
    rig = make_rig()
    peer, token = log_in(rig)
    peer.send(line("in_park", {**ENTRY, "empty_plot": -1}, token=token))
    answer = only_answer(peer)
    assert answer["state"] == 0
    assert answer["errmsg"].startswith(Result.FIELD_INVALID.text)
    assert rig.codes() == []


def test_negative_free_space_refusal_names_the_legacy_member() -> None:
    """The 9010 for a negative empty_plot names empty_plot, the member the lot's vendor knows."""
    rig = make_rig()
    peer, token = log_in(rig)
    peer.send(line("in_park", {**ENTRY, "empty_plot": -1}, token=token))
    assert "empty_plot" in only_answer(peer)["errmsg"]


# --- gateOpen ------------------------------------------------------------------------------------


def test_gate_open_goes_down_as_operate_liftrod_raising_the_barrier() -> None:
    """gateOpen with isOpen 1 reaches the lot as one operate_liftrod frame with operate 0 (抬杆, raise)."""
    rig = make_rig()
    peer, token = log_in(rig)
    results = outcome(rig.command("P1", "gateOpen", {"barCode": "c1", "isOpen": 1}))
    [sent] = frames(peer.received())
    command = json.loads(sent)
    assert re.fullmatch(r"[0-9a-f]{32}", command["liftrod_id"])
    assert command == {
        "service_name": "operate_liftrod",
        "channel_id": "c1",
        "channel_name": "",
        "operate": 0,
        "park_id": "P1",
        "liftrod_id": command["liftrod_id"],
    }
    assert results == []
    peer.send(liftrod_answer(token, command))
    assert results == [LotReply("0000", Result.OK.text, {"barCode": "c1", "status": 1})]
    # The answer to a command is not answered in turn.
    assert peer.received() == b""
    assert rig.clock.getDelayedCalls() == []
    # Commands and their answers are not lot messages: nothing is journaled for them here.
    assert [r.kind for r in rig.records()] == ["lot-online"]


@pytest.mark.parametrize(
    ("data", "operate"),
    [
        ({"barCode": "c1", "isOpen": 1}, 0),
        ({"barCode": "c1", "isOpen": True}, 0),
        ({"barCode": "c1", "isOpen": "1"}, 0),
        ({"barCode": "c1", "isOpen": 0}, 1),
        ({"barCode": "c1"}, 1),  # isOpen's default is 0 (B.2.3.5): close
    ],
)
def test_is_open_1_raises_and_0_lowers_the_barrier(data: dict[str, Any], operate: int) -> None:
    """isOpen 1 (开闸) goes down as operate 0 (抬杆); isOpen 0 or absent (关闸) as operate 1 (落杆)."""
    rig = make_rig()
    peer, token = log_in(rig)
    results = outcome(rig.command("P1", "gateOpen", data))
    command = json.loads(frames(peer.received())[0])
    assert command["operate"] == operate
    peer.send(liftrod_answer(token, command))
    assert [r.result_code for r in results] == ["0000"]


def test_the_answer_is_read_inside_data_not_beside_it() -> None:
    """state outside data (unsigned) is not read: a lot answering state 1 only there gets no 0000."""
    rig = make_rig()
    peer, token = log_in(rig)
    results = outcome(rig.command("P1", "gateOpen", {"barCode": "c1", "isOpen": 1}))
    command = json.loads(frames(peer.received())[0])
    text = json_text({"channel_id": "c1", "liftrod_id": command["liftrod_id"]})
    peer.send(
        b'{"service_name":"operate_liftrod","state":1,"token":"%s","sign":"%s","data":%s}\n'
        % (token.encode(), signed(text).encode(), text.encode())
    )
    [reply] = results
    assert reply.result_code == "9999"
    assert "no data.state" in reply.result_message


def test_an_unsigned_or_wrongly_signed_answer_is_refused_and_the_command_waits() -> None:
    """An operate_liftrod answer with a wrong sign or token is refused state 0; the command is still open."""
    rig = make_rig()
    peer, token = log_in(rig)
    results = outcome(rig.command("P1", "gateOpen", {"barCode": "c1", "isOpen": 1}))
    command = json.loads(frames(peer.received())[0])
    answer = liftrod_answer(token, command)
    peer.send(answer.replace(signed(json_text(json.loads(answer)["data"])).encode(), b"0" * 32))
    assert only_answer(peer)["errmsg"] == "sign: does not match data"
    peer.send(liftrod_answer("f" * 32, command))
    assert "token" in only_answer(peer)["errmsg"]
    assert results == []
    peer.send(liftrod_answer(token, command))
    assert [r.result_code for r in results] == ["0000"]


def test_a_refused_operate_liftrod_is_a_9999_reply() -> None:
    """The lot's operate_liftrod answer with state 0 is a LotReply 9999 carrying its errmsg."""
    rig = make_rig()
    peer, token = log_in(rig)
    results = outcome(rig.command("P1", "gateOpen", {"barCode": "c1", "isOpen": 1}))
    command = json.loads(frames(peer.received())[0])
    peer.send(liftrod_answer(token, command, state=0, errmsg="barrier jammed"))
    [reply] = results
    assert isinstance(reply, LotReply)
    assert reply.result_code == "9999"
    assert "barrier jammed" in reply.result_message
    assert reply.data == {"barCode": "c1", "status": 0}


def test_gate_open_unanswered_within_the_deadline_fails() -> None:
    """gateOpen the lot does not answer within 2 s fails with DeadlinePassed; a late answer is ignored."""
    rig = make_rig()
    peer, token = log_in(rig)
    results = outcome(rig.command("P1", "gateOpen", {"barCode": "c1"}))
    command = json.loads(frames(peer.received())[0])
    rig.clock.advance(1.9)
    assert results == []
    rig.clock.advance(0.1)
    error = failed_with(results, DeadlinePassed)
    assert (error.park, error.code, error.deadline) == ("P1", "gateOpen", 2.0)
    peer.send(liftrod_answer(token, command))
    assert len(results) == 1
    assert peer.closed is False


def test_gate_open_deadline_follows_the_configuration() -> None:
    """[deadlines] gateOpen sets how long the lot has to answer."""
    rig = make_rig(deadlines={"gateOpen": 5})
    log_in(rig)
    results = outcome(rig.command("P1", "gateOpen", {"barCode": "c1"}))
    rig.clock.advance(4.9)
    assert results == []
    rig.clock.advance(0.1)
    failed_with(results, DeadlinePassed)


def test_gate_open_to_a_lot_not_connected_fails() -> None:
    """gateOpen to a lot without a connection (or to no lot at all) fails at once with NotConnected."""
    rig = make_rig()
    rig.connect()  # connected but not logged in
    failed_with(outcome(rig.command("P1", "gateOpen", {"barCode": "c1"})), NotConnected)
    failed_with(outcome(rig.command("P9", "gateOpen", {"barCode": "c1"})), NotConnected)


def test_gate_open_fails_when_the_connection_is_lost_while_waiting() -> None:
    """gateOpen fails with NotConnected when the lot's connection goes away before it answers."""
    rig = make_rig()
    peer, _ = log_in(rig)
    results = outcome(rig.command("P1", "gateOpen", {"barCode": "c1"}))
    peer.lose()
    failed_with(results, NotConnected)
    assert rig.clock.getDelayedCalls() == []


def test_gate_open_answers_are_matched_by_liftrod_id() -> None:
    """Two gateOpens to one channel answered out of order each get the answer carrying their liftrod_id."""
    rig = make_rig()
    peer, token = log_in(rig)
    first = outcome(rig.command("P1", "gateOpen", {"barCode": "c1", "isOpen": 1}))
    second = outcome(rig.command("P1", "gateOpen", {"barCode": "c1", "isOpen": 0}))
    one, two = (json.loads(text) for text in frames(peer.received()))
    peer.send(liftrod_answer(token, two, state=0))
    assert first == []
    assert [r.result_code for r in second] == ["9999"]
    peer.send(liftrod_answer(token, {**two, "liftrod_id": "stale"}))
    assert first == []
    peer.send(liftrod_answer(token, one))
    assert first == [LotReply("0000", Result.OK.text, {"barCode": "c1", "status": 1})]


def test_gate_open_answers_without_liftrod_id_are_matched_by_channel_and_operate() -> None:
    """Answers without liftrod_id (the 2017 server sends none) are matched by channel_id and operate."""
    rig = make_rig()
    peer, token = log_in(rig)
    first = outcome(rig.command("P1", "gateOpen", {"barCode": "c1", "isOpen": 1}))
    second = outcome(rig.command("P1", "gateOpen", {"barCode": "c2", "isOpen": 1}))
    third = outcome(rig.command("P1", "gateOpen", {"barCode": "c2", "isOpen": 0}))
    _, two, three = (json.loads(text) for text in frames(peer.received()))
    peer.send(liftrod_answer(token, three, liftrod_id=None))
    peer.send(liftrod_answer(token, two, state=0, liftrod_id=None))
    assert (first, [r.result_code for r in second], [r.result_code for r in third]) == (
        [],
        ["9999"],
        ["0000"],
    )
    # Nothing but the state: the oldest command.
    peer.send(line("operate_liftrod", {"state": 1}, token=token))
    assert first == [LotReply("0000", Result.OK.text, {"barCode": "c1", "status": 1})]


def test_gate_open_to_a_closing_connection_fails() -> None:
    """gateOpen to a lot whose connection the gateway is closing fails with NotConnected."""
    rig = make_rig()
    peer, _ = log_in(rig)
    rig.clock.advance(180)
    server(rig).sweep()
    assert peer.closed is True
    failed_with(outcome(rig.command("P1", "gateOpen", {"barCode": "c1"})), NotConnected)


def test_only_gate_open_is_supported() -> None:
    """The bolink dialect carries gateOpen and nothing else; another downlink fails with Unsupported."""
    rig = make_rig()
    peer, _ = log_in(rig)
    assert rig.server.supports("gateOpen") is True
    for code in ("feeQuery", "parkEnv", "gateStatus", "nonsense"):
        assert rig.server.supports(code) is False
    error = failed_with(outcome(rig.command("P1", "feeQuery", {"recordCode": "A1"})), Unsupported)
    assert (error.dialect, error.code) == ("bolink", "feeQuery")
    assert peer.received() == b""


# --- connections ---------------------------------------------------------------------------------


def test_a_second_login_replaces_the_first_connection() -> None:
    """A login of a bound park from a new connection closes the old one, failing its pending command."""
    rig = make_rig()
    old, _ = log_in(rig)
    pending = outcome(rig.command("P1", "gateOpen", {"barCode": "c1"}))
    rig.clock.advance(1)  # within gateOpen's 2 s
    new, token = log_in(rig)
    assert old.closed is True
    assert new.closed is False
    failed_with(pending, NotConnected)
    assert [(r.kind, r.body) for r in rig.records()] == [
        ("lot-online", {"peer": "192.0.2.7:40001", "reason": "login (local_id L1)"}),
        (
            "lot-offline",
            {"peer": "192.0.2.7:40001", "reason": "replaced by a new connection from 192.0.2.7:40002"},
        ),
        ("lot-online", {"peer": "192.0.2.7:40002", "reason": "login (local_id L1)"}),
    ]
    assert rig.resumed == ["P1", "P1"]
    assert rig.server.state("P1") == LotState("P1", True, START + 1, START + 1, "192.0.2.7:40002")
    # The old connection going away later tells nothing more; the new one works.
    old.lose()
    assert len(rig.records()) == 3
    new.send(line("in_park", ENTRY, token=token))
    assert only_answer(new)["state"] == 1


def test_logging_in_again_on_the_same_connection_keeps_the_bind() -> None:
    """A second login on the bound connection gives a new token and journals no new lot-online."""
    rig = make_rig()
    peer, first = log_in(rig)
    peer.send(line("login", {"park_id": "P1", "local_id": "L1"}))
    second = only_answer(peer)["token"]
    assert second != first
    assert [r.kind for r in rig.records()] == ["lot-online"]
    peer.send(line("in_park", ENTRY, token=first))
    assert only_answer(peer)["state"] == 0
    peer.send(line("in_park", ENTRY, token=second))
    assert only_answer(peer)["state"] == 1


def test_logging_in_as_another_park_moves_the_connection() -> None:
    """A bound connection that logs in as another lot leaves the first (offline, commands failed)."""
    rig = make_rig(lot_table("P1"), lot_table("P2"))
    peer, _ = log_in(rig, "P1")
    pending = outcome(rig.command("P1", "gateOpen", {"barCode": "c1"}))
    peer.received()
    peer.send(line("login", {"park_id": "P2"}))
    assert only_answer(peer)["state"] == 1
    failed_with(pending, NotConnected)
    assert [(r.kind, r.park, body(r)["reason"]) for r in rig.records()] == [
        ("lot-online", "P1", "login (local_id L1)"),
        ("lot-offline", "P1", "the connection logged in as P2"),
        ("lot-online", "P2", "login"),
    ]
    assert rig.server.state("P1").connected is False
    assert rig.server.state("P2").connected is True
    assert peer.closed is False


def test_a_lost_connection_is_journaled_offline_and_shown_disconnected() -> None:
    """When the lot goes away it is journaled offline, and its state shows when and where it was last."""
    rig = make_rig()
    peer, _ = log_in(rig)
    rig.clock.advance(30)
    peer.send(b"0x11\n")
    rig.clock.advance(7)
    peer.lose()
    offline = rig.records()[-1]
    assert (offline.kind, offline.park) == ("lot-offline", "P1")
    assert offline.body == {"peer": "192.0.2.7:40001", "reason": "closed by the lot: the lot went away"}
    assert rig.server.state("P1") == LotState("P1", False, None, START + 30, "192.0.2.7:40001")


def test_state_of_a_lot_never_connected() -> None:
    """A lot that never connected is shown not connected, with nothing known of it."""
    rig = make_rig()
    assert rig.server.state("P1") == LotState("P1", False, None, None, "")


# --- the sweep -----------------------------------------------------------------------------------


def test_a_connection_not_logged_in_within_bind_timeout_is_closed() -> None:
    """A connection that has not logged in within tcp.bind_timeout (10 s) is closed by the sweep."""
    rig = make_rig()
    peer = rig.connect()
    peer.send(b"0x11\n")  # a heartbeat is not a login
    rig.clock.advance(9.9)
    server(rig).sweep()
    assert peer.closed is False
    rig.clock.advance(0.1)
    server(rig).sweep()
    assert peer.closed is True
    peer.lose()
    assert rig.records() == []


def test_bind_timeout_follows_the_configuration() -> None:
    """tcp.bind_timeout sets how long a connection may stay without logging in."""
    rig = make_rig(tcp={"bind_timeout": 30})
    peer = rig.connect()
    rig.clock.advance(29)
    server(rig).sweep()
    assert peer.closed is False
    rig.clock.advance(1)
    server(rig).sweep()
    assert peer.closed is True


def test_a_silent_lot_is_closed_after_read_idle() -> None:
    """A logged-in lot that sends nothing for tcp.read_idle (180 s) is closed and journaled offline."""
    rig = make_rig()
    rig.server.start()
    peer, _ = log_in(rig)
    rig.clock.advance(179)
    assert peer.closed is False
    rig.clock.advance(1)
    assert peer.closed is True
    peer.lose()
    offline = rig.records()[-1]
    assert offline.kind == "lot-offline"
    assert offline.body == {"peer": "192.0.2.7:40001", "reason": "nothing received for 180 s (read_idle)"}
    rig.server.stop()


def test_a_lot_sending_heartbeats_stays() -> None:
    """A logged-in lot that sends heartbeats is kept well past read_idle."""
    rig = make_rig()
    rig.server.start()
    peer, _ = log_in(rig)
    for _ in range(10):
        rig.clock.pump([60.0])
        peer.send(b"0x11\n")
    assert peer.closed is False
    assert rig.server.state("P1").connected is True
    rig.server.stop()


def test_read_idle_0_never_closes_a_silent_lot() -> None:
    """With tcp.read_idle = 0 a silent logged-in lot is never closed by the sweep."""
    rig = make_rig(tcp={"read_idle": 0})
    peer, _ = log_in(rig)
    rig.clock.advance(86_400)
    server(rig).sweep()
    assert peer.closed is False


def test_stop_closes_every_connection_and_reports_bound_lots_offline() -> None:
    """stop() closes all connections, journals lot-offline for each bound lot, and leaves no timer."""
    rig = make_rig(lot_table("P1"), lot_table("P2"))
    rig.server.start()
    first, _ = log_in(rig, "P1")
    second, _ = log_in(rig, "P2")
    stranger = rig.connect()
    rig.server.stop()
    assert (first.closed, second.closed, stranger.closed) == (True, True, True)
    offline = [r for r in rig.records() if r.kind == "lot-offline"]
    assert sorted((r.park, body(r)["reason"]) for r in offline) == [
        ("P1", "gateway stopping"),
        ("P2", "gateway stopping"),
    ]
    assert rig.clock.getDelayedCalls() == []
    # The transports finishing their close journal nothing more.
    first.lose()
    second.lose()
    stranger.lose()
    assert len([r for r in rig.records() if r.kind == "lot-offline"]) == 2


# --- legacy_opr ----------------------------------------------------------------------------------


def test_legacy_opr_is_service_order_and_fingerprint() -> None:
    """A message's repeat id is its service, order_id and data's fingerprint, or fresh."""
    assert legacy_opr("in_park", "A1", "0123abcd") == "in_park:A1:0123abcd"
    assert legacy_opr("in_park", "A1") == "in_park:A1"
    assert legacy_opr("upload_order", "X" * 21) == "upload_order:" + "X" * 21
    assert re.fullmatch(r"[0-9a-f]{32}", legacy_opr("park_status", ""))
    assert legacy_opr("park_status", "") != legacy_opr("park_status", "")


# --- configuration -------------------------------------------------------------------------------


def configure(lot: dict[str, Any], listen: dict[str, str] | None = None) -> None:
    """Read a configuration of one lot ([listen] bolink set unless `listen` is given)."""
    parse(
        {"listen": {"bolink": "tcp:6789"} if listen is None else listen, "lot": [lot]},
        dialects={"bolink": bolink, "standard": standard},
    )


@pytest.mark.parametrize("signature", ["required", "optional"])
def test_config_refuses_a_bolink_lot_without_secret(signature: str) -> None:
    """A bolink lot with an empty secret is refused unless its signature is off."""
    with pytest.raises(ConfigError, match=r"^lot\[0\]\.secret: "):
        configure(lot_table(secret="", signature=signature))
    configure(lot_table(secret="", signature="off"))


def test_config_requires_the_bolink_listener() -> None:
    """A bolink lot without [listen] bolink is refused; an unknown [listen] key still is too."""
    with pytest.raises(ConfigError, match=r"^listen\.bolink: required"):
        configure(lot_table(), listen={})
    with pytest.raises(ConfigError, match=r"^listen\.acme: "):
        configure(lot_table(), listen={"bolink": "tcp:6789", "acme": "tcp:6790"})
    configure(lot_table())


def test_config_reads_the_framing_of_a_lot() -> None:
    """[[lot]] framing is "cloud" by default or "lines"; anything else is refused naming the key."""
    settings = parse(
        {"listen": {"bolink": "tcp:6789"}, "lot": [lot_table("P1"), lot_table("P2", framing="lines")]},
        dialects={"bolink": bolink, "standard": standard},
    )
    assert [lot.framing for lot in settings.lots] == ["cloud", "lines"]
    with pytest.raises(ConfigError, match=r"^lot\[0\]\.framing: 'crlf' is not one of cloud, lines$"):
        configure(lot_table(framing="crlf"))


# --- the log: lot.online, lot.offline, lot.rejected ----------------------------------------------


def test_every_refusal_logs_one_lot_rejected_and_an_answered_message_none() -> None:
    """Each message answered state 0, here or by the host, logs one lot.rejected; a stored one nothing."""
    rig = make_rig()
    with captured() as events:
        stranger = rig.connect()
        stranger.send(line("login", {"park_id": "P9"}))
        stranger.send(line("login", {"park_id": "P1"}, secret="not-the-secret"))
        stranger.send(line("in_park", ENTRY))
        peer, token = log_in(rig)
        peer.send(b"not json\n")
        peer.send(line("in_park", ENTRY, token="0" * 32))
        peer.send(line("in_park", ENTRY, token=token, secret="not-the-secret"))
        peer.send(line("in_park", {**ENTRY, "car_number": ""}, token=token))
        peer.send(line("in_park", {**ENTRY, "order_id": "X" * 21}, token=token))
        peer.send(b'{"service_name":"in_park","data":"' + b"x" * 70_000)
        peer.send(b'"}\n' + line("in_park", ENTRY, token=token))
    refused = [e for e in events if e.get("event") == "lot.rejected"]
    for event in refused:
        assert event["dialect"] == event["via"] == "bolink" and event["reason"]
        # The host's refusals (after translation) do not know the connection; bolink's own do.
        from_host = event["log_namespace"] == "gateway.dialects.host"
        assert event["peer"] == "" if from_host else event["peer"].startswith("192.0.2.7:")
    assert [(e["park"], e["code"], e["result"]) for e in refused] == [
        ("", "login", "9104"),
        ("P1", "login", "9006"),
        ("", "in_park", "9000"),
        ("P1", "", "9002"),
        ("P1", "in_park", "9000"),
        ("P1", "in_park", "9006"),
        ("P1", "in_park", "9010"),
        ("P1", "in_park", "9010"),
        ("P1", "", "9002"),
    ]
    assert refused[-2]["peer"] == "" and "order_id" in refused[-2]["reason"]
    [online] = [e for e in events if e.get("event") == "lot.online"]
    assert (online["park"], online["how"], online["dialect"]) == ("P1", "login (local_id L1)", "bolink")
    assert rig.codes() == ["carIn", "freeSpace"]


def test_a_lost_connection_logs_one_lot_offline() -> None:
    """A logged-in lot whose connection is lost logs one lot.offline with the reason and the dialect."""
    rig = make_rig()
    peer, _ = log_in(rig)
    with captured("lot.offline") as events:
        peer.lose()
    [offline] = events
    assert (offline["park"], offline["dialect"]) == ("P1", "bolink") and offline["reason"]
