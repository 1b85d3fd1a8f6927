"""CONTRACT §3-§5 as an acceptance test sees them: HTTP requests to the uplink, frames on the downlink.

Each test names the statement it holds the gateway to. Statements already held
black-box elsewhere (tests/lots, tests/protocol) are not repeated here; these
are the ones that had no test through the public surface.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gateway.protocol.signing import compact, sign
from tests.cloud.test_api import Api
from tests.lots.harness import PASSWORD, Uplink, fired, lot_entry, result_of
from tests.lots.test_downlink import Gateway
from tests.protocol.samples import SAMPLES
from tests.test_logs import captured

CAR_IN = SAMPLES["carIn"]
ENVELOPE_MEMBERS = {"code", "oprNum", "resultCode", "resultMessage", "signature", "data"}


@pytest.fixture
def gw() -> Uplink:
    return Uplink()


def post_param(gw: Uplink, text: str, path: str = "/uplink") -> dict[str, Any]:
    """POST `param=text` as a lot would; the answer must be HTTP 200 JSON (§4)."""
    status, headers, body = gw.post(urlencode({"param": text}), path)
    assert status == 200
    assert headers["content-type"] == "application/json; charset=utf-8"
    answer: dict[str, Any] = json.loads(body)
    return answer


def assert_full_envelope(answer: dict[str, Any]) -> None:
    """表B.3 with B.2.3.5's defaults: every member present, none null."""
    assert set(answer) == ENVELOPE_MEMBERS, answer
    for name in ("code", "oprNum", "resultCode", "resultMessage", "signature"):
        assert isinstance(answer[name], str), (name, answer)
    assert isinstance(answer["data"], (dict, list)), answer
    assert re.fullmatch(r"\d{4}", answer["resultCode"]), answer


# §2: names


def test_the_distribution_and_the_console_script_have_the_contracts_names() -> None:
    """setup.cfg names the distribution `cpmi-gateway` and installs the `cpmictl` console script."""
    setup = configparser.ConfigParser()
    setup.read(Path(__file__).parents[2] / "setup.cfg")
    assert setup["metadata"]["name"] == "cpmi-gateway"
    scripts = [
        line.split("=")[0].strip() for line in setup["options.entry_points"]["console_scripts"].splitlines()
    ]
    assert "cpmictl" in scripts


# §4: the response envelope


def test_every_answer_is_a_full_response_envelope_with_defaults(gw: Uplink) -> None:
    """Accepted or refused, the answer holds code, oprNum, resultCode, resultMessage, signature, data,
    with "" and {} for what it has nothing to say in, never null; oprNum is echoed."""
    token = gw.login()
    cases = {
        "0000": gw.envelope("carIn", CAR_IN, token=token, opr="E-ok"),
        "9000": gw.envelope("carIn", CAR_IN, token="x" * 32, opr="E-token"),
        "9001": gw.envelope("noSuchCode", CAR_IN, token=token, opr="E-code"),
        "9003": gw.envelope("login", {"parkUserName": "lot001", "parkUserPwd": "wrong"}, opr="E-login"),
        "9006": gw.envelope("carIn", CAR_IN, token=token, opr="E-sig", signature="0" * 32),
        "9010": gw.envelope("carIn", {**CAR_IN, "inIdentity": "two"}, token=token, opr="E-field"),
    }
    for expected, envelope in cases.items():
        answer = post_param(gw, json.dumps(envelope, ensure_ascii=False))
        assert_full_envelope(answer)
        assert answer["resultCode"] == expected, answer
        assert answer["oprNum"] == envelope["oprNum"]
    # Not even JSON, and empty: still a 200 envelope.
    for text, expected in (('{"code":"carIn","oprNum":"E-bad",', "9002"), ("", "9005")):
        answer = post_param(gw, text)
        assert_full_envelope(answer)
        assert answer["resultCode"] == expected, answer


def test_the_answer_is_signed_over_its_compact_data_with_token_and_secret(gw: Uplink) -> None:
    """B.3.7: signature = upper-case hex MD5 of compact(data) + token + secret, on a report's answer."""
    token = gw.login()
    answer = post_param(gw, json.dumps(gw.envelope("carIn", CAR_IN, token=token), ensure_ascii=False))
    assert answer["resultCode"] == "0000"
    text = json.dumps(answer["data"], separators=(",", ":"), ensure_ascii=False)
    expected = hashlib.md5((text + token + "s3cret").encode()).hexdigest().upper()
    assert answer["signature"] == expected


def test_a_field_invalid_message_names_the_field(gw: Uplink) -> None:
    """9010's message names the field and why."""
    token = gw.login()
    answer = gw.send("carIn", {**CAR_IN, "inTime": "yesterday"}, token=token)
    assert answer["resultCode"] == "9010" and "inTime" in answer["resultMessage"]


# §3: Table-1 numbers in, mnemonics out


def test_a_table_one_number_in_the_url_answers_with_the_mnemonic(gw: Uplink) -> None:
    """POST /uplink/4 is carOut: the answer and the journal carry `carOut`."""
    token = gw.login()
    data = SAMPLES["carOut"]
    envelope = gw.envelope("carOut", data, token=token)
    envelope["code"] = ""
    answer = post_param(gw, json.dumps(envelope, ensure_ascii=False), "/uplink/4")
    assert answer["resultCode"] == "0000" and answer["code"] == "carOut"
    assert gw.journal.records[-1].code == "carOut"


def test_login_and_heartbeat_by_number(gw: Uplink) -> None:
    """ "1" is login and "8" is heartbeat; the answers say `login` and `heartbeat`."""
    answer = gw.send("1", {"parkUserName": "lot001", "parkUserPwd": PASSWORD})
    assert (answer["code"], answer["resultCode"]) == ("login", "0000")
    beat = gw.send("8", None, token=answer["data"]["token"])
    assert (beat["code"], beat["resultCode"]) == ("heartbeat", "0000")


# §4 signature


def test_a_signature_over_the_compact_form_is_accepted_when_the_text_is_spaced(gw: Uplink) -> None:
    """data written with spaces and escapes may be signed over its compact re-serialization."""
    token = gw.login()
    envelope = gw.envelope("carIn", CAR_IN, token=token)  # signed over compact(data)
    text = json.dumps(envelope, ensure_ascii=True, indent=2)  # data as written differs
    assert compact(CAR_IN) not in text
    assert post_param(gw, text)["resultCode"] == "0000"


def test_a_signature_over_the_data_as_written_is_accepted(gw: Uplink) -> None:
    """The signature over the data member exactly as it appears in the text is accepted."""
    token = gw.login()
    data_text = json.dumps(CAR_IN, ensure_ascii=True, indent=1)
    signature = hashlib.md5((data_text + token + "s3cret").encode()).hexdigest().upper()
    text = '{"token":"%s","code":"carIn","oprNum":"W-1","signature":"%s","data":%s}' % (
        token,
        signature,
        data_text,
    )
    assert post_param(gw, text)["resultCode"] == "0000"


# §4 hostile clients: header members


@pytest.mark.parametrize(
    ("member", "limit"), [("token", 32), ("code", 10), ("oprNum", 36), ("signature", 100)]
)
def test_a_header_member_longer_than_table_b2_is_refused_naming_it(
    gw: Uplink, member: str, limit: int
) -> None:
    """One character over 表B.2's length is 9002 (or 9010) naming the member, never stored, and the
    answer holds at most the first 36 characters of the refused value."""
    token = gw.login()
    envelope = gw.envelope("carIn", CAR_IN, token=token, opr="H-1")
    value = "Z" * (limit + 1)
    envelope[member] = value
    answer = post_param(gw, json.dumps(envelope, ensure_ascii=False))
    assert_full_envelope(answer)
    assert answer["resultCode"] in ("9002", "9010") and member in answer["resultMessage"], answer
    assert "Z" * 37 not in json.dumps(answer)
    assert [r.kind for r in gw.journal.records] == ["token"]


def test_header_members_at_their_limits_are_not_refused_for_length(gw: Uplink) -> None:
    """A 36-character oprNum and a 100-character signature field are within 表B.2."""
    token = gw.login()
    opr = "O" * 36
    answer = gw.send("carIn", CAR_IN, token=token, opr=opr)
    assert answer["resultCode"] == "0000" and answer["oprNum"] == opr


def test_a_refused_field_value_is_echoed_by_at_most_36_characters_in_answer_and_log(gw: Uplink) -> None:
    """A 5,000-character bad time is 9010 naming inTime; the answer and the log quote at most 36 of it."""
    token = gw.login()
    with captured("lot.rejected") as events:
        answer = gw.send("carIn", {**CAR_IN, "inTime": "Z" * 5000}, token=token)
    assert answer["resultCode"] == "9010" and "inTime" in answer["resultMessage"]
    assert "Z" * 36 in answer["resultMessage"] and "Z" * 37 not in json.dumps(answer)
    [event] = events
    assert "Z" * 37 not in json.dumps({k: str(v) for k, v in event.items()})


# §4 hostile clients: numbers and nesting


@pytest.mark.parametrize(
    "literal", ["NaN", "Infinity", "-Infinity", "1e999", str(2**63 + 1), str(-(2**63) - 1)]
)
def test_a_number_that_is_not_finite_or_too_big_is_9010_naming_the_field(gw: Uplink, literal: str) -> None:
    """NaN, Infinity, 1e999 and integers beyond ±2⁶³ in data are 9010 naming the field; nothing is stored."""
    token = gw.login()
    envelope = gw.envelope("carIn", {**CAR_IN, "extraAmount": 0}, token=token)
    text = json.dumps(envelope, ensure_ascii=False).replace('"extraAmount": 0', f'"extraAmount": {literal}')
    assert literal in text
    answer = post_param(gw, text)
    assert answer["resultCode"] == "9010", answer
    assert "extraAmount" in answer["resultMessage"]
    assert [r.kind for r in gw.journal.records] == ["token"]


def test_nesting_deeper_than_32_levels_is_9002(gw: Uplink) -> None:
    """An unknown field nested 40 levels deep makes the request 9002; 8 levels are kept as sent."""
    token = gw.login()
    shallow: Any = 1
    for _ in range(8):
        shallow = [shallow]
    assert gw.send("carIn", {**CAR_IN, "extra": shallow}, token=token)["resultCode"] == "0000"
    assert gw.journal.records[-1].body["extra"] == shallow
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    answer = gw.send("carIn", {**CAR_IN, "extra": deep}, token=token)
    assert answer["resultCode"] == "9002" and "32" in answer["resultMessage"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"barCode":"B1","isOpen":1,"x":1e999}',
        b'{"barCode":"B1","isOpen":1,"x":Infinity}',
        b'{"barCode":"B1","isOpen":-Infinity}',
        b'{"barCode":"B1","isOpen":1,"x":18446744073709551616}',
        b'{"barCode":"B1","isOpen":1,"x":' + b"[" * 40 + b"]" * 40 + b"}",
    ],
)
def test_the_command_api_answers_hostile_numbers_and_nesting_400_json(body: bytes) -> None:
    """On the API the same bodies are 400 with a JSON error (naming the field where there is one)."""
    api = Api()
    status, headers, answer = api.call("POST", "/v1/parks/P001/commands/gateOpen", body=body)
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert answer["error"] and api.lots.asked == [] and api.journal.records == []
    if b"[[" not in body:
        assert answer["error"].startswith(("data.x:", "data.isOpen:")), answer


# §4 repeats


def test_refused_attempts_are_no_repeats_and_the_opr_num_stays_free(gw: Uplink) -> None:
    """Seven attempts refused (9006, then 9010) are neither repeats nor stored; the eighth, right, is
    stored and answered 0000, and only then do repeats count."""
    token = gw.login()
    for _ in range(4):
        bad = gw.send("carIn", CAR_IN, token=token, opr="F-1", signature="0" * 32)
        assert bad["resultCode"] == "9006"
    for _ in range(3):
        assert gw.send("carIn", {**CAR_IN, "inTime": "x"}, token=token, opr="F-1")["resultCode"] == "9010"
    assert gw.send("carIn", CAR_IN, token=token, opr="F-1")["resultCode"] == "0000"
    assert [r.opr for r in gw.journal.records].count("F-1") == 1
    for _ in range(5):
        assert gw.send("carIn", CAR_IN, token=token, opr="F-1")["resultCode"] == "0000"
    assert gw.send("carIn", CAR_IN, token=token, opr="F-1")["resultCode"] == "9007"
    assert [r.opr for r in gw.journal.records].count("F-1") == 1


def test_a_repeat_is_answered_first_answer_even_with_other_data(gw: Uplink) -> None:
    """The same oprNum again gets the first answer; its (different) data is not stored."""
    token = gw.login()
    assert gw.send("carIn", CAR_IN, token=token, opr="D-1")["resultCode"] == "0000"
    again = gw.send("carIn", {**CAR_IN, "carNum": "京B99999"}, token=token, opr="D-1")
    assert again["resultCode"] == "0000"
    assert [r.body.get("carNum") for r in gw.journal.records if r.opr == "D-1"] == ["京A12345"]


def test_the_same_opr_num_from_two_lots_is_stored_twice() -> None:
    """Repeats are per lot: lot002's D-1 is not lot001's D-1."""
    gw = Uplink(lots=[lot_entry(), lot_entry(park_code="P002", username="lot002")])
    one, two = gw.login(), gw.login("lot002")
    assert gw.send("carIn", CAR_IN, token=one, opr="D-1")["resultCode"] == "0000"
    assert gw.send("carIn", CAR_IN, token=two, opr="D-1")["resultCode"] == "0000"
    assert [(r.park, r.opr) for r in gw.journal.records if r.kind != "token"] == [
        ("P001", "D-1"),
        ("P002", "D-1"),
    ]


# §3 query class


class SilentCloud(Resource):
    """A query endpoint that never answers."""

    isLeaf = True

    def render_POST(self, request: Request) -> int:
        return NOT_DONE_YET


def test_a_query_the_cloud_leaves_unanswered_is_9999_with_the_reason_and_journaled() -> None:
    """autoPay with a silent cloud: at its 1 s deadline the lot gets 9999 with the reason, and the
    answer is journaled after the query."""
    gw = Uplink()
    cloud = gw.query_cloud(SilentCloud())
    token = gw.login()
    text = json.dumps(gw.envelope("autoPay", SAMPLES["autoPay"], token=token, opr="Q-9"), ensure_ascii=False)
    reply = gw.handler.handle(text)
    cloud.flush()
    gw.clock.advance(0.9)
    assert not fired(reply)
    gw.clock.advance(0.1)
    cloud.flush()
    answer = json.loads(result_of(reply))
    assert answer["resultCode"] == "9999" and "1 s" in answer["resultMessage"]
    records = [(r.kind, r.code) for r in gw.journal.records if r.opr == "Q-9"]
    assert records == [("query", "autoPay"), ("answer", "autoPay")]
    assert gw.journal.records[-1].body["resultCode"] == "9999"
    assert gw.clock.getDelayedCalls() == []


# §4 HTTP


def test_wrong_method_on_the_envelope_url_is_405_with_allow(gw: Uplink) -> None:
    """GET /uplink (not a request of the protocol) is 405 with Allow: POST."""
    status, headers, _ = gw.post(b"", "/uplink", method="GET")
    assert status == 405 and headers["allow"] == "POST"


def test_a_raw_json_body_with_a_charset_parameter(gw: Uplink) -> None:
    """application/json; charset=utf-8 is a raw JSON body like application/json."""
    token = gw.login()
    envelope = gw.envelope("carIn", CAR_IN, token=token)
    body = json.dumps(envelope, ensure_ascii=False).encode()
    status, _, answer = gw.post(body, content_type="application/json; charset=utf-8")
    assert status == 200 and json.loads(answer)["resultCode"] == "0000"


def test_times_are_written_in_the_configured_zone() -> None:
    """[gateway] timezone is the zone of the times the gateway writes (10:00 Shanghai is 03:00 Berlin)."""
    gw = Uplink(tables={"gateway": {"timezone": "Europe/Berlin"}})
    answer = gw.send("heartbeat", None, token=gw.login())
    assert answer["data"] == {"time": "2026-11-24 03:00:00"}


# §5: the downlink


def test_a_connection_sending_only_garbage_is_closed_at_bind_timeout() -> None:
    """Bytes that never make a bind do not keep a connection: it is closed at bind_timeout (default 10 s)."""
    gateway = Gateway()
    gateway.downlinks.start()
    lot = gateway.connect()
    for _ in range(9):
        lot.send_bytes(b"$$x")
        gateway.advance(1)
    assert not lot.closed
    lot.send_bytes(b"$$x")
    gateway.advance(1)
    assert lot.closed
    gateway.downlinks.stop()


def test_tcp_login_and_heartbeat_by_table_one_number() -> None:
    """On the downlink too "1" is login and "8" heartbeat: both bind, answers name the mnemonic."""
    gateway = Gateway()
    lot = gateway.connect(1)
    opr = lot.request("1", {"parkUserName": "lot001", "parkUserPwd": PASSWORD})
    [answer] = lot.received()
    assert (answer["code"], answer["oprNum"], answer["resultCode"]) == ("login", opr, "0000")
    token = answer["data"]["token"]
    assert gateway.downlinks.state("P001").connected
    other = gateway.connect(2)
    other.request("8", {}, token=token)
    [beat] = other.received()
    assert (beat["code"], beat["resultCode"]) == ("heartbeat", "0000")
    assert gateway.downlinks.state("P001").peer == "10.0.0.7:2" and lot.closed


def test_frames_separated_by_stars_with_garbage_between_are_each_answered() -> None:
    """`$${..}##*` frames in one write, bytes outside frames skipped: every heartbeat is answered in order."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    frames = []
    for n in range(3):
        envelope = {
            "token": token,
            "code": "heartbeat",
            "oprNum": f"hb-{n}",
            "signature": sign("{}", token, "s3cret"),
        }
        frames.append(b"$$" + json.dumps({**envelope, "data": {}}, separators=(",", ":")).encode() + b"##")
    lot.send_bytes(b"noise" + frames[0] + b"*\r\n" + frames[1] + b"*garbage*" + frames[2] + b"*")
    answers = lot.received()
    assert [(a["oprNum"], a["resultCode"]) for a in answers] == [(f"hb-{n}", "0000") for n in range(3)]
    assert not lot.closed


def test_the_downlink_answers_are_framed_and_escaped() -> None:
    """The gateway writes `$$` JSON `##` `*`; `$ # *` in a value travel as \\u0024 \\u0023 \\u002a."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    data = {"barCode": "a$b#c*d"}
    gateway.downlinks.command("P001", "gateOpen", data)
    raw = lot.transport.value()
    assert raw.startswith(b"$$") and raw.endswith(b"##*")
    payload = raw[2:-3]
    assert b"$" not in payload and b"#" not in payload and b"*" not in payload
    assert b"\\u0024" in payload and b"\\u0023" in payload and b"\\u002a" in payload
    [ack] = lot.received()
    assert set(ack) == {"token", "code", "oprNum", "signature", "data"}
    assert ack["data"]["barCode"] == "a$b#c*d" and ack["token"] == token
    assert ack["signature"] == sign(compact(ack["data"]), token, "s3cret")


def test_a_heartbeat_answer_carries_the_gateway_time_in_its_zone() -> None:
    """On TCP, too, heartbeat answers 0000 with the time as yyyy-MM-dd HH:mm:ss (Asia/Shanghai)."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    lot.request("heartbeat", {}, token=token)
    [beat] = lot.received()
    assert beat["resultCode"] == "0000" and beat["data"] == {"time": "2026-11-24 10:00:00"}


def test_a_wrongly_signed_binding_heartbeat_is_9006_and_closed() -> None:
    """signature = "required": a heartbeat bind signed with the wrong secret is 9006 and closed."""
    gateway = Gateway()
    token = gateway.token()
    lot = gateway.connect()
    lot.request("heartbeat", {}, token=token, secret="not-the-secret")
    [answer] = lot.received()
    assert answer["resultCode"] == "9006" and lot.closed
    assert not gateway.downlinks.state("P001").connected


def test_a_reply_with_escaped_delimiters_is_checked_over_its_unescaped_compact_json() -> None:
    """A lot signs its REPLY before the framing escapes: data holding `$ # *`, framed as \\u0024 \\u0023
    \\u002a, matches its ACK by oprNum and gives the cloud the unescaped data."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    deferred = gateway.downlinks.command("P001", "gateOpen", {"barCode": "B1"})
    [ack] = lot.received()
    data = {"note": "a$b#c*d"}
    lot.reply(ack["oprNum"], data, token)  # signed over compact(data), then framed with escapes
    assert gateway.downlinks.counters["bad_signatures"] == 0
    reply = result_of(deferred)
    assert reply.result_code == "0000" and reply.data == data


def test_several_commands_are_outstanding_on_one_connection_and_matched_by_opr_num() -> None:
    """Two ACKs out at once; REPLYs in the other order each fire their own command."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    first = gateway.downlinks.command("P001", "gateOpen", {"barCode": "B1"})
    second = gateway.downlinks.command("P001", "gateState", {"barCode": "B2"})
    ack1, ack2 = lot.received()
    assert ack1["oprNum"] != ack2["oprNum"]
    lot.reply(ack2["oprNum"], {"barState": 2}, token, code="gateState")
    assert not fired(first) and result_of(second).data == {"barState": 2}
    lot.reply(ack1["oprNum"], {"ok": 1}, token)
    assert result_of(first).data == {"ok": 1}
