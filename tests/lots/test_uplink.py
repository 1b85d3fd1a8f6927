"""The HTTP uplink end to end in memory: every rule and result code of CONTRACT §4."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import pytest
from attrs import define, field, frozen
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from gateway import config
from gateway.lots.http import UplinkEndpoint, UplinkSite
from gateway.lots.passwords import PasswordChecker
from gateway.lots.sessions import token_digest
from gateway.protocol.catalog import INTERFACES, DeliveryClass
from gateway.protocol.signing import compact, sign
from tests.lots.harness import PASSWORD, ZONE, Uplink, fired, lot_entry, result_of
from tests.lots.test_passwords import HeldThreads
from tests.protocol.samples import PNG_BASE64, RESPONSE_SAMPLES, SAMPLES
from tests.test_logs import captured

CAR_IN = SAMPLES["carIn"]
REPORTS = [i.code for i in INTERFACES if i.uplink is DeliveryClass.REPORT]


@pytest.fixture
def gw() -> Uplink:
    return Uplink()


# login (B.4.1)


def test_login_issues_a_32_character_token_and_the_park(gw: Uplink) -> None:
    """A right login answers 0000 with a 32-character token and the park code, signed with token ""."""
    answer = gw.send("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD}, opr="L1")
    assert answer["resultCode"] == "0000" and answer["code"] == "login" and answer["oprNum"] == "L1"
    assert len(answer["data"]["token"]) == 32 and answer["data"]["parkCode"] == "P001"
    assert answer["signature"] == sign(compact(answer["data"]), "", "s3cret")


def test_login_journals_the_token_digest_never_the_password_or_token(gw: Uplink) -> None:
    """The journal gets a token record with the token's digest; neither secret is in it."""
    token = gw.login()
    [record] = gw.journal.records
    assert record.kind == "token" and record.park == "P001" and record.code == "login"
    assert record.body["token_sha256"] == token_digest(token)
    assert token not in json.dumps(record.body) and PASSWORD not in json.dumps(record.body)


@pytest.mark.parametrize(
    ("data", "code", "text"),
    [
        ({"parkUserName": "lot001", "parkUserPwd": "wrong"}, "9003", ""),
        ({"parkUserName": "nobody", "parkUserPwd": PASSWORD}, "9003", ""),
        ({}, "9004", "data"),
        ({"parkUserName": "lot001"}, "9010", "data.parkUserPwd: required"),
        ({"parkUserName": "lot001", "parkUserPwd": ["x"]}, "9010", "data.parkUserPwd"),
    ],
)
def test_bad_logins(gw: Uplink, data: dict[str, Any], code: str, text: str) -> None:
    """Wrong credentials are 9003, no data 9004, a missing or bad field 9010 naming it; no token is stored."""
    answer = gw.send("login", data)
    assert answer["resultCode"] == code
    assert text in answer["resultMessage"]
    assert gw.journal.records == []


def test_a_lot_of_another_dialect_cannot_log_in_here() -> None:
    """A bolink lot that has an account too is refused 9003 over the standard's login: no token."""
    gw = Uplink(lots=[lot_entry(dialect="bolink", secret="k")], tables={"listen": {"bolink": "tcp:0"}})
    answer = gw.send("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD}, secret="k")
    assert answer["resultCode"] == "9003"
    assert gw.journal.records == []


def test_login_with_a_wrong_signature_is_9006(gw: Uplink) -> None:
    """A login signed with the wrong secret is refused 9006."""
    answer = gw.send("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD}, secret="other")
    assert answer["resultCode"] == "9006"


def test_login_by_table_one_number(gw: Uplink) -> None:
    """Code "1" is login; the answer writes the mnemonic."""
    answer = gw.send("1", {"parkUserName": "lot001", "parkUserPwd": PASSWORD})
    assert answer["resultCode"] == "0000" and answer["code"] == "login"


# tokens (B.3.5, B.3.6)


def test_missing_or_unknown_token_is_9000(gw: Uplink) -> None:
    """A request without a token, or with one never issued, is answered 9000."""
    assert gw.send("carIn", CAR_IN)["resultCode"] == "9000"
    assert gw.send("carIn", CAR_IN, token="f" * 32)["resultCode"] == "9000"


def test_second_login_makes_the_first_token_9000(gw: Uplink) -> None:
    """After a second login of the same account the old token answers 9000, the new one works."""
    first = gw.login()
    second = gw.login()
    assert gw.send("carIn", CAR_IN, token=first)["resultCode"] == "9000"
    assert gw.send("carIn", CAR_IN, token=second)["resultCode"] == "0000"


def test_token_expires_at_the_end_of_the_month(gw: Uplink) -> None:
    """A token issued in November answers 9000 from 1 December 00:00 in the gateway's zone."""
    token = gw.login()
    gw.clock.advance(datetime(2026, 12, 1, tzinfo=ZONE).timestamp() - gw.clock.seconds())
    assert gw.send("carIn", CAR_IN, token=token)["resultCode"] == "9000"


def test_tokens_survive_a_restart(gw: Uplink) -> None:
    """A gateway rebuilt from the journal accepts the token issued before."""
    token = gw.login()
    gw.restart()
    assert gw.send("carIn", CAR_IN, token=token)["resultCode"] == "0000"


def test_token_of_a_removed_lot_is_9104(gw: Uplink) -> None:
    """A token whose lot is no longer configured is answered 9104."""
    token = gw.login()
    gw.settings = config.parse({"lot": [lot_entry(park_code="P009", username="lot009")]})
    gw.restart()
    answer = gw.send("carIn", CAR_IN, token=token)
    assert answer["resultCode"] == "9104" and "P001" in answer["resultMessage"]


# interfaces and envelopes


def test_every_report_interface_is_accepted_and_journaled(gw: Uplink) -> None:
    """Each report-class uplink's sample from the standard's tables answers 0000 and is journaled once."""
    token = gw.login()
    gw.send("parkEnv", SAMPLES["parkEnv"], token=token)
    for code in REPORTS:
        answer = gw.send(code, SAMPLES[code], token=token, opr=f"op-{code}")
        assert answer["resultCode"] == "0000", (code, answer)
        assert answer["code"] == code and answer["oprNum"] == f"op-{code}"
        assert answer["signature"] == sign(compact(answer["data"]), token, "s3cret")
        [record] = [r for r in gw.journal.records if r.opr == f"op-{code}"]
        assert (record.kind, record.park, record.code) == ("uplink", "P001", code)


def test_table_one_number_is_accepted_and_the_mnemonic_written(gw: Uplink) -> None:
    """Code "2" is carIn; the answer and the journal say carIn."""
    token = gw.login()
    answer = gw.send("2", CAR_IN, token=token)
    assert answer["code"] == "carIn" and answer["resultCode"] == "0000"
    assert gw.journal.records[-1].code == "carIn"


def test_url_per_interface(gw: Uplink) -> None:
    """POST /uplink/{code} takes the code from the URL when the envelope has none."""
    token = gw.login()
    envelope = gw.envelope("carIn", CAR_IN, token=token)
    envelope["code"] = ""
    status, _, body = gw.post(urlencode({"param": json.dumps(envelope)}), "/uplink/carIn")
    assert status == 200 and json.loads(body)["resultCode"] == "0000"
    assert gw.journal.records[-1].code == "carIn"


def test_url_and_envelope_codes_must_agree(gw: Uplink) -> None:
    """A URL code that differs from the envelope's is 9002 naming code."""
    token = gw.login()
    answer = gw.send("carIn", CAR_IN, token=token, path="/uplink/carOut")
    assert answer["resultCode"] == "9002" and "code" in answer["resultMessage"]


@pytest.mark.parametrize("code", ["nonsense", "gateOpen", "99", ""])
def test_unknown_or_downlink_only_code_is_9001(gw: Uplink, code: str) -> None:
    """A code that is no uplink interface is 9001 (9002 when there is none at all)."""
    token = gw.login()
    answer = gw.send(code, CAR_IN, token=token)
    assert answer["resultCode"] == ("9002" if code == "" else "9001")


def test_raw_json_body(gw: Uplink) -> None:
    """A raw application/json body is the envelope itself."""
    token = gw.login()
    envelope = gw.envelope("carIn", CAR_IN, token=token)
    status, _, body = gw.post(json.dumps(envelope).encode(), content_type="application/json")
    assert status == 200 and json.loads(body)["resultCode"] == "0000"


def test_signature_over_data_as_written(gw: Uplink) -> None:
    """A lot signing `data` with its own spacing is accepted (the raw span is signed)."""
    token = gw.login()
    data_text = '{ "recordCode" : "R1",  "carNum": "京A12345", "inTime": "2026-11-24 08:30:00" }'
    param = '{"token":"%s","code":"carIn","oprNum":"raw-1","signature":"%s","data":%s}' % (
        token,
        sign(data_text, token, "s3cret"),
        data_text,
    )
    _, _, body = gw.post(urlencode({"param": param}))
    assert json.loads(body)["resultCode"] == "0000"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("param=", "9005"),
        ("param=%20%20", "9005"),
        ("param=not-json", "9002"),
        ("param=%5B1%5D", "9002"),
    ],
)
def test_empty_and_malformed_messages(gw: Uplink, body: str, code: str) -> None:
    """An empty param is 9005 and text that is not an envelope 9002, both HTTP 200 JSON."""
    status, headers, answer = gw.post(body)
    assert status == 200 and headers["content-type"] == "application/json; charset=utf-8"
    assert json.loads(answer)["resultCode"] == code


def test_form_without_param_is_9002(gw: Uplink) -> None:
    """A form body that lacks `param` is 9002 naming it."""
    answer = json.loads(gw.post("other=1")[2])
    assert answer["resultCode"] == "9002" and "param" in answer["resultMessage"]


def test_wrong_method_is_405_and_too_large_is_413(gw: Uplink) -> None:
    """GET is not the protocol (405); a body over the limit is refused 413."""
    assert gw.post(b"", method="GET")[0] == 405
    assert gw.post(b"param=" + b"x" * 1_000_001)[0] == 413


def test_non_utf8_body_is_9002(gw: Uplink) -> None:
    """Bytes that are not UTF-8 (and no charset says otherwise) are 9002."""
    answer = json.loads(gw.post(b"\xff\xfe{}", content_type="application/json")[2])
    assert answer["resultCode"] == "9002"


def test_declared_charset_is_honoured(gw: Uplink) -> None:
    """A body in GBK with charset=GBK declared is read correctly."""
    token = gw.login()
    envelope = gw.envelope("carIn", CAR_IN, token=token)
    body = json.dumps(envelope, ensure_ascii=False).encode("gbk")
    answer = json.loads(gw.post(body, content_type="application/json; charset=GBK")[2])
    assert answer["resultCode"] == "0000"
    assert gw.journal.records[-1].body["carNum"] == "京A12345"


# signatures (B.3.7)


def test_wrong_signature_is_9006_and_not_journaled(gw: Uplink) -> None:
    """A signature that does not match is 9006 and nothing is stored."""
    token = gw.login()
    answer = gw.send("carIn", CAR_IN, token=token, signature="0" * 32)
    assert answer["resultCode"] == "9006"
    assert [r.kind for r in gw.journal.records] == ["token"]


def test_signature_needs_the_secret(gw: Uplink) -> None:
    """A signature made without the lot's secret does not match."""
    token = gw.login()
    assert gw.send("carIn", CAR_IN, token=token, secret="")["resultCode"] == "9006"


def test_optional_signature_accepts_none_but_not_a_wrong_one() -> None:
    """With signature = "optional" an empty signature passes and a wrong one is 9006."""
    gw = Uplink([lot_entry(signature="optional")])
    token = gw.login()
    assert gw.send("carIn", CAR_IN, token=token, signature="")["resultCode"] == "0000"
    assert gw.send("carIn", CAR_IN, token=token, signature="BAD")["resultCode"] == "9006"


def test_signature_off_ignores_it() -> None:
    """With signature = "off" any signature passes."""
    gw = Uplink([lot_entry(signature="off")])
    token = gw.login()
    assert gw.send("carIn", CAR_IN, token=token, signature="BAD")["resultCode"] == "0000"


def test_required_signature_refuses_an_empty_one(gw: Uplink) -> None:
    """With signature = "required" an empty signature is 9006."""
    token = gw.login()
    assert gw.send("carIn", CAR_IN, token=token, signature="")["resultCode"] == "9006"


# heartbeat


def test_heartbeat_answers_the_gateway_time_without_storing(gw: Uplink) -> None:
    """heartbeat answers 0000 with the gateway's time in its zone and journals nothing."""
    token = gw.login()
    answer = gw.send("heartbeat", None, token=token)
    assert answer["resultCode"] == "0000"
    assert answer["data"] == {"time": "2026-11-24 10:00:00"}
    assert [r.kind for r in gw.journal.records] == ["token"]


# repeats (B.2.3.6)


def test_repeat_gets_the_first_answer_and_is_not_journaled_again(gw: Uplink) -> None:
    """The same oprNum again is answered as the first time and stored once."""
    token = gw.login()
    first = gw.send("carIn", CAR_IN, token=token, opr="R-1")
    again = gw.send("carIn", CAR_IN, token=token, opr="R-1")
    assert first == again
    assert [r.opr for r in gw.journal.records].count("R-1") == 1


def test_repeats_survive_a_restart(gw: Uplink) -> None:
    """After a restart, a repeat of a stored oprNum is still not stored again."""
    token = gw.login()
    gw.send("carIn", CAR_IN, token=token, opr="R-1")
    gw.restart()
    assert gw.send("carIn", CAR_IN, token=token, opr="R-1")["resultCode"] == "0000"
    assert [r.opr for r in gw.journal.records].count("R-1") == 1


def test_sixth_repeat_within_the_hour_is_9007(gw: Uplink) -> None:
    """Five repeats are answered; the sixth within the hour is 9007; an hour later it is new."""
    token = gw.login()
    answers = [gw.send("carIn", CAR_IN, token=token, opr="R-2")["resultCode"] for _ in range(7)]
    assert answers == ["0000"] * 6 + ["9007"]
    gw.clock.advance(3600)
    assert gw.send("carIn", CAR_IN, token=token, opr="R-2")["resultCode"] == "0000"


def test_a_repeat_while_storing_waits_for_the_same_answer(gw: Uplink) -> None:
    """A repeat sent before the first is durable gets its answer once it is, and stores nothing."""
    token = gw.login()
    gw.journal.hold = True
    body = urlencode({"param": json.dumps(gw.envelope("carIn", CAR_IN, token=token, opr="R-3"))})
    first = gw.treq.post(
        "http://gw/uplink",
        data=body,
        headers={"Content-Type": ["application/x-www-form-urlencoded"]},
    )
    second = gw.treq.post(
        "http://gw/uplink",
        data=body,
        headers={"Content-Type": ["application/x-www-form-urlencoded"]},
    )
    gw.treq.flush()
    assert not fired(first) and not fired(second), "answered before the record was durable"
    gw.journal.release()
    gw.treq.flush()
    bodies = [json.loads(result_of(gw.treq.content(result_of(d)))) for d in (first, second)]
    assert bodies[0] == bodies[1] and bodies[0]["resultCode"] == "0000"
    assert [r.opr for r in gw.journal.records].count("R-3") == 1


# durability


def test_nothing_is_acknowledged_before_it_is_durable(gw: Uplink) -> None:
    """The 0000 is sent only after the journal says the record is durable."""
    token = gw.login()
    gw.journal.hold = True
    body = urlencode({"param": json.dumps(gw.envelope("carOut", SAMPLES["carOut"], token=token))})
    answer = gw.treq.post(
        "http://gw/uplink",
        data=body,
        headers={"Content-Type": ["application/x-www-form-urlencoded"]},
    )
    gw.treq.flush()
    assert not fired(answer)
    gw.journal.release()
    gw.treq.flush()
    assert json.loads(result_of(gw.treq.content(result_of(answer))))["resultCode"] == "0000"


def test_a_journal_failure_is_9999_and_the_retry_is_stored(gw: Uplink) -> None:
    """When the journal cannot write, the lot gets 9999 (and retries); the retry is stored."""
    token = gw.login()
    gw.journal.broken = OSError(28, "No space left on device")
    answer = gw.send("carIn", CAR_IN, token=token, opr="F-1")
    assert answer["resultCode"] == "9999" and "journal" in answer["resultMessage"]
    gw.journal.broken = None
    assert gw.send("carIn", CAR_IN, token=token, opr="F-1")["resultCode"] == "0000"
    assert [r.opr for r in gw.journal.records].count("F-1") == 1


# fields (9004, 9010)


@pytest.mark.parametrize("data", [None, {}, [], ""])
def test_empty_data_is_9004(gw: Uplink, data: Any) -> None:
    """A report with no data is 9004."""
    token = gw.login()
    assert gw.send("carIn", data, token=token)["resultCode"] == "9004"


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"inTime": "2026/11/24 08:30"}, "data.inTime"),
        ({"inIdentity": 9}, "data.inIdentity"),
        ({"recordCode": ""}, "data.recordCode"),
        ({"carNum": "京" * 51}, "data.carNum"),
    ],
)
def test_invalid_field_is_9010_naming_it(gw: Uplink, change: dict[str, Any], path: str) -> None:
    """A field against the standard's tables is 9010 and the message names it."""
    token = gw.login()
    answer = gw.send("carIn", {**CAR_IN, **change}, token=token)
    assert answer["resultCode"] == "9010"
    assert path in answer["resultMessage"]
    assert [r.kind for r in gw.journal.records] == ["token"]


def test_lossless_coercion_and_unknown_fields_are_kept(gw: Uplink) -> None:
    """ "2" for an Int becomes 2; fields the standard does not know are stored untouched."""
    token = gw.login()
    gw.send("carIn", {**CAR_IN, "inIdentity": "2", "vendorExtra": {"x": [1]}}, token=token)
    body = gw.journal.records[-1].body
    assert body["inIdentity"] == 2 and body["vendorExtra"] == {"x": [1]}


def test_list_data_is_validated_item_by_item(gw: Uplink) -> None:
    """A list of records is accepted, and a bad item is named by its index."""
    token = gw.login()
    assert gw.send("carIn", [CAR_IN, CAR_IN], token=token)["resultCode"] == "0000"
    answer = gw.send("carIn", [CAR_IN, {**CAR_IN, "inTime": "x"}], token=token)
    assert answer["resultCode"] == "9010" and "data[1].inTime" in answer["resultMessage"]


def test_passwords_in_any_message_are_redacted(gw: Uplink) -> None:
    """A parkUserPwd inside any stored message is replaced before it reaches the journal."""
    token = gw.login()
    gw.send("carIn", {**CAR_IN, "parkUserPwd": "hunter2"}, token=token)
    assert "hunter2" not in json.dumps([r.body for r in gw.journal.records])


# business rules of the standard


@pytest.mark.parametrize("total", [0, -5])
def test_park_env_without_spaces_is_9102(gw: Uplink, total: int) -> None:
    """parkEnv with totalNum 0 or less is 9102 and not stored."""
    token = gw.login()
    answer = gw.send("parkEnv", {**SAMPLES["parkEnv"], "totalNum": total}, token=token)
    assert answer["resultCode"] == "9102"


def test_free_space_above_total_is_9105_even_after_restart(gw: Uplink) -> None:
    """freeSpace above the last parkEnv totalNum is 9105, also after a restart."""
    token = gw.login()
    gw.send("parkEnv", {**SAMPLES["parkEnv"], "totalNum": 100}, token=token)
    assert gw.send("freeSpace", {"parkCode": "P001", "emptyNum": 100}, token=token)["resultCode"] == "0000"
    assert gw.send("freeSpace", {"parkCode": "P001", "emptyNum": 101}, token=token)["resultCode"] == "9105"
    gw.restart()
    assert gw.send("freeSpace", {"parkCode": "P001", "emptyNum": 101}, token=token)["resultCode"] == "9105"


def test_negative_free_space_is_9010(gw: Uplink) -> None:
    """A negative emptyNum is 9010 naming it."""
    token = gw.login()
    answer = gw.send("freeSpace", {"parkCode": "P001", "emptyNum": -1}, token=token)
    assert answer["resultCode"] == "9010" and "emptyNum" in answer["resultMessage"]


def test_another_parks_code_is_9104(gw: Uplink) -> None:
    """A parkCode in data that is not the account's park is 9104."""
    token = gw.login()
    answer = gw.send("freeSpace", {"parkCode": "P999", "emptyNum": 3}, token=token)
    assert answer["resultCode"] == "9104" and "parkCode" in answer["resultMessage"]


def test_image_as_multipart_file(gw: Uplink) -> None:
    """A carImage whose picture is a file part named by imageCode stores it as base64."""
    token = gw.login()
    data = [{"recordCode": "R1", "imageCode": "IMG1", "imageType": 1}]
    envelope = json.dumps(gw.envelope("carImage", data, token=token))
    _, _, body = gw.post(envelope, files={"IMG1": b"\xff\xd8jpeg"})
    assert json.loads(body)["resultCode"] == "0000", body
    assert gw.journal.records[-1].body[0]["imageBase64"] == "/9hqcGVn"


def test_unnamed_file_parts_go_to_descriptions_in_order(gw: Uplink) -> None:
    """File parts not named by an imageCode fill the descriptions without images, in order."""
    token = gw.login()
    data = [
        {"recordCode": "R1", "imageCode": "A", "imageType": 1},
        {"recordCode": "R1", "imageCode": "B", "imageType": 2},
    ]
    envelope = json.dumps(gw.envelope("carImage", data, token=token))
    _, _, body = gw.post(envelope, files={"file1": b"first", "file2": b"second"})
    assert json.loads(body)["resultCode"] == "0000"
    assert [i["imageBase64"] for i in gw.journal.records[-1].body] == ["Zmlyc3Q=", "c2Vjb25k"]


@pytest.mark.parametrize("files", [{}, {"a": b"1", "b": b"2"}])
def test_images_and_descriptions_that_disagree_are_9201(gw: Uplink, files: dict[str, bytes]) -> None:
    """Fewer or more images than descriptions is 9201, and nothing is stored."""
    token = gw.login()
    data = [{"recordCode": "R1", "imageCode": "IMG1", "imageType": 1}]
    envelope = json.dumps(gw.envelope("carImage", data, token=token))
    _, _, body = gw.post(envelope, files=files)
    assert json.loads(body)["resultCode"] == "9201"
    assert [r.kind for r in gw.journal.records] == ["token"]


def test_inline_base64_image_needs_no_file(gw: Uplink) -> None:
    """A carImage with imageBase64 inline is stored as sent."""
    token = gw.login()
    data = [{"recordCode": "R1", "imageCode": "I", "imageType": 2, "imageBase64": PNG_BASE64}]
    assert gw.send("carImage", data, token=token)["resultCode"] == "0000"


# queries


def test_auto_pay_without_a_cloud_is_9999_and_journaled(gw: Uplink) -> None:
    """autoPay in log-only mode answers 9999 "no cloud configured"; request and outcome are stored."""
    token = gw.login()
    answer = gw.send("autoPay", SAMPLES["autoPay"], token=token, opr="Q-1")
    assert answer["resultCode"] == "9999" and "no cloud configured" in answer["resultMessage"]
    kinds = [(r.kind, r.code) for r in gw.journal.records if r.opr == "Q-1"]
    assert kinds == [("query", "autoPay"), ("answer", "autoPay")]


def test_a_fault_inside_the_gateway_is_answered_9999(gw: Uplink) -> None:
    """A bug in a later stage still gets the lot a protocol answer (9999), never an HTTP 500."""
    token = gw.login()

    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    gw.handler._store = broken  # type: ignore[method-assign]
    status, headers, body = gw.post(
        urlencode({"param": json.dumps(gw.envelope("carIn", CAR_IN, token=token))})
    )
    assert status == 200 and headers["content-type"] == "application/json; charset=utf-8"
    assert json.loads(body)["resultCode"] == "9999"


def test_a_fault_answers_9999_with_its_opr_num_and_frees_it_for_the_retry(gw: Uplink) -> None:
    """A request whose handling raises is answered 9999 naming its code and oprNum; the retry of
    that oprNum is processed and stored, not left waiting on the faulted attempt forever."""
    token = gw.login()
    store = gw.handler._store

    def broken(*args: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    gw.handler._store = broken  # type: ignore[method-assign]
    with captured("lot.rejected") as events:
        answer = gw.send("carIn", CAR_IN, token=token, opr="X-1")
    assert (answer["resultCode"], answer["code"], answer["oprNum"]) == ("9999", "carIn", "X-1")
    assert logged(events) == [("P001", "carIn", "9999")]
    gw.handler._store = store  # type: ignore[method-assign]
    assert gw.send("carIn", CAR_IN, token=token, opr="X-1")["resultCode"] == "0000"
    assert [r.kind for r in gw.journal.records if r.opr == "X-1"] == ["uplink"]


def test_six_9999_answers_do_not_make_the_seventh_attempt_9007(gw: Uplink) -> None:
    """Attempts answered 9999 because the disk is low are not stored and never count towards 9007:
    the seventh attempt, with the disk back, is stored; only its own repeats count from then on."""
    token = gw.login()
    gw.journal.broken = OSError(28, "No space left on device")
    codes = [gw.send("carIn", CAR_IN, token=token, opr="D-1")["resultCode"] for _ in range(6)]
    assert codes == ["9999"] * 6
    gw.journal.broken = None
    codes = [gw.send("carIn", CAR_IN, token=token, opr="D-1")["resultCode"] for _ in range(7)]
    assert codes == ["0000"] * 6 + ["9007"]
    assert [r.opr for r in gw.journal.records].count("D-1") == 1


def test_login_is_signed_with_an_empty_token_even_when_the_envelope_carries_one(gw: Uplink) -> None:
    """A login is signed over data + "" + secret (the contract); a stale token in its envelope is ignored."""
    old = gw.login()
    data = {"parkUserName": "lot001", "parkUserPwd": PASSWORD}
    answer = gw.send("login", data, token=old, signature=sign(compact(data), "", "s3cret"))
    assert answer["resultCode"] == "0000"
    stale_signed = gw.send("login", data, token=old, signature=sign(compact(data), old, "s3cret"))
    assert stale_signed["resultCode"] == "9006"


# queries answered by the cloud (CONTRACT §3 "query")

PAID = RESPONSE_SAMPLES["autoPay"]


@frozen
class Outcome:
    """A query's outcome as the cloud side gives it (QueryOutcome)."""

    result_code: str
    message: str
    data: object


@define
class FakeQueries:
    """Answers every query with `outcome`, or later with `pending`; keeps the records it was asked.

    `effect` runs on each question, before the answer.
    """

    outcome: Outcome
    asked: list[Any] = field(factory=list)
    effect: Callable[[], None] | None = None
    pending: Deferred[Any] | None = None

    def ask(self, record: Any) -> Deferred[Any]:
        self.asked.append(record)
        if self.effect is not None:
            self.effect()
        return self.pending if self.pending is not None else succeed(self.outcome)


def test_a_cloud_answer_0000_is_the_lots_answer_and_journaled() -> None:
    """The cloud's 0000 and data reach the lot; the journal holds the query, then the answer and data."""
    queries = FakeQueries(Outcome("0000", "", PAID))
    gw = Uplink(queries=queries)
    token = gw.login()
    answer = gw.send("autoPay", SAMPLES["autoPay"], token=token, opr="Q-1")
    assert answer["resultCode"] == "0000" and answer["data"] == PAID
    assert answer["signature"] == sign(compact(PAID), token, "s3cret")
    records = [r for r in gw.journal.records if r.opr == "Q-1"]
    assert [(r.kind, r.code) for r in records] == [("query", "autoPay"), ("answer", "autoPay")]
    query, stored = records
    assert query.body == SAMPLES["autoPay"]
    assert stored.body == {"resultCode": "0000", "resultMessage": answer["resultMessage"], "data": PAID}
    [asked] = queries.asked
    assert asked.kind == "query" and asked.seq == query.seq and asked.body == SAMPLES["autoPay"]


def test_a_cloud_answer_9999_reaches_the_lot_with_its_reason() -> None:
    """The cloud side's 9999 and its reason are the lot's answer, and are journaled without data."""
    gw = Uplink(queries=FakeQueries(Outcome("9999", "cloud did not answer within 1 s", None)))
    token = gw.login()
    answer = gw.send("autoPay", SAMPLES["autoPay"], token=token, opr="Q-2")
    assert answer["resultCode"] == "9999"
    assert answer["resultMessage"].endswith("cloud did not answer within 1 s")
    stored = [r for r in gw.journal.records if r.opr == "Q-2"][-1]
    assert stored.kind == "answer"
    assert stored.body == {"resultCode": "9999", "resultMessage": answer["resultMessage"]}


def test_a_query_the_journal_cannot_store_is_not_asked() -> None:
    """A query record the journal refuses gets the lot the not-stored 9999; the cloud is never asked."""
    queries = FakeQueries(Outcome("0000", "", PAID))
    gw = Uplink(queries=queries)
    token = gw.login()
    gw.journal.broken = OSError(28, "No space left on device")
    answer = gw.send("autoPay", SAMPLES["autoPay"], token=token, opr="Q-3")
    assert answer["resultCode"] == "9999" and "cannot store" in answer["resultMessage"]
    assert queries.asked == []


def test_an_answer_the_journal_cannot_keep_is_9999() -> None:
    """When the answer record cannot be stored the lot gets 9999, even after the cloud's 0000."""
    gw = Uplink()

    def break_journal() -> None:
        gw.journal.broken = OSError(5, "Input/output error")

    queries = FakeQueries(Outcome("0000", "", PAID), effect=break_journal)
    gw.queries = queries
    gw.restart()
    token = gw.login()
    answer = gw.send("autoPay", SAMPLES["autoPay"], token=token, opr="Q-4")
    assert answer["resultCode"] == "9999" and "cannot store" in answer["resultMessage"]
    assert len(queries.asked) == 1
    assert [r.kind for r in gw.journal.records if r.opr == "Q-4"] == ["query"]


def test_a_repeated_query_gets_the_first_answer_without_asking_again() -> None:
    """A repeat of an answered oprNum gets the same 0000 and data; no second question, nothing journaled."""
    queries = FakeQueries(Outcome("0000", "", PAID))
    gw = Uplink(queries=queries)
    token = gw.login()
    first = gw.send("autoPay", SAMPLES["autoPay"], token=token, opr="Q-5")
    count = len(gw.journal.records)
    again = gw.send("autoPay", SAMPLES["autoPay"], token=token, opr="Q-5")
    assert again == first and again["resultCode"] == "0000"
    assert len(queries.asked) == 1 and len(gw.journal.records) == count


def test_a_repeat_while_the_cloud_is_asked_waits_for_its_answer() -> None:
    """A repeat arriving before the cloud has answered waits for that answer instead of asking again."""
    pending: Deferred[Any] = Deferred()
    queries = FakeQueries(Outcome("0000", "", PAID), pending=pending)
    gw = Uplink(queries=queries)
    token = gw.login()
    text = json.dumps(gw.envelope("autoPay", SAMPLES["autoPay"], token=token, opr="Q-6"))
    first, second = gw.handler.handle(text), gw.handler.handle(text)
    assert not fired(first) and not fired(second) and len(queries.asked) == 1
    pending.callback(Outcome("0000", "", PAID))
    body = result_of(first)
    assert result_of(second) == body and json.loads(body)["data"] == PAID


def test_the_query_client_answers_through_the_uplink() -> None:
    """Wired to a QueryClient on a StubTreq'd cloud, a lot's autoPay gets the cloud's answer end to end."""

    class Cloud(Resource):
        isLeaf = True

        def render_POST(self, request: Request) -> bytes:
            event = json.loads(request.content.read())
            assert event["type"] == "org.cpmi.t002.autoPay.v1" and event["cpmioprnum"] == "Q-7"
            return json.dumps(PAID).encode()

    gw = Uplink()
    cloud = gw.query_cloud(Cloud())
    token = gw.login()
    text = json.dumps(gw.envelope("autoPay", SAMPLES["autoPay"], token=token, opr="Q-7"))
    reply = gw.handler.handle(text)
    cloud.flush()
    answer = json.loads(result_of(reply))
    assert answer["resultCode"] == "0000" and answer["data"] == PAID


# the log (lot.rejected)


def logged(events: list[Any]) -> list[tuple[str, str, str]]:
    """(park, code, result) of each lot.rejected event, after checking the keys every one has."""
    for event in events:
        assert event["dialect"] == "standard" and event["via"] == "http" and event["reason"]
        assert event["log_level"] is LogLevel.warn
    return [(e["park"], e["code"], e["result"]) for e in events]


def test_every_refused_request_logs_one_lot_rejected(gw: Uplink) -> None:
    """Each answer but 0000 logs one lot.rejected: park ("" when unknown), code, result and reason."""
    with captured("lot.rejected") as events:
        wrong = gw.send("login", {"parkUserName": "lot001", "parkUserPwd": "hunter2"})
        gw.send("login", {"parkUserName": "nobody", "parkUserPwd": "hunter2"})
        token = gw.login()
        gw.send("carIn", CAR_IN, token="0" * 32)
        gw.send("carIn", CAR_IN, token=token, signature="BAD")
        gw.send("carIn", {**CAR_IN, "inTime": "yesterday"}, token=token)
        gw.send("noSuchCode", CAR_IN, token=token)
        gw.post("param=", "/uplink/carIn")
        gw.send("carIn", CAR_IN, token=token)
        gw.send("heartbeat", {}, token=token)
    assert logged(events) == [
        ("P001", "login", "9003"),
        ("", "login", "9003"),
        ("", "carIn", "9000"),
        ("P001", "carIn", "9006"),
        ("P001", "carIn", "9010"),
        ("", "noSuchCode", "9001"),
        ("", "carIn", "9005"),
    ]
    assert events[0]["reason"] == wrong["resultMessage"]
    assert "hunter2" not in repr(events)


def test_a_repeat_answered_from_the_cache_is_not_logged_again_but_9007_is() -> None:
    """A refusal kept for repeats is logged when given, not on each repeat; the 9007 past the limit is."""
    gw = Uplink(queries=FakeQueries(Outcome("9501", "not registered", None)))
    token = gw.login()
    with captured("lot.rejected") as events:
        answers = [gw.send("autoPay", SAMPLES["autoPay"], token=token, opr="Q-9") for _ in range(7)]
    assert [answer["resultCode"] for answer in answers] == ["9501"] * 6 + ["9007"]
    assert logged(events) == [("P001", "autoPay", "9501"), ("P001", "autoPay", "9007")]


def test_a_refusal_not_kept_for_repeats_is_logged_each_time(gw: Uplink) -> None:
    """A rejected report is not kept (its repeat is checked again), so each refusal is logged."""
    token = gw.login()
    with captured("lot.rejected") as events:
        for _ in range(2):
            gw.send("carIn", {**CAR_IN, "inTime": "yesterday"}, token=token, opr="R-1")
    assert logged(events) == [("P001", "carIn", "9010")] * 2


def test_answers_the_http_resource_gives_itself_name_the_peer(gw: Uplink) -> None:
    """A body not understood (9002) and a fault inside the gateway (9999) are logged with the peer."""
    token = gw.login()

    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    gw.handler.handle = broken  # type: ignore[method-assign]
    with captured("lot.rejected") as events:
        gw.post(b"\xff\xfe", content_type="application/json; charset=utf-8")
        gw.post(urlencode({"param": json.dumps(gw.envelope("carIn", CAR_IN, token=token))}), "/uplink/carIn")
    assert logged(events) == [("", "", "9002"), ("", "carIn", "9999")]
    assert all(event["peer"] for event in events)


# logins behind a bounded queue (CONTRACT §4)


def queued_logins(gw: Uplink, max_pending: int = 1) -> HeldThreads:
    """Make the handler's logins go through a real PasswordChecker (one thread, held by the test)."""
    runner = HeldThreads()
    checker = PasswordChecker(gw.clock, threads=1, max_pending=max_pending, run=runner)  # type: ignore[arg-type]
    gw.handler._passwords = checker
    return runner


def login_text(gw: Uplink, password: str = PASSWORD) -> str:
    return json.dumps(gw.envelope("login", {"parkUserName": "lot001", "parkUserPwd": password}))


def test_a_login_past_the_queue_is_answered_9999_busy_at_once_and_reports_go_on() -> None:
    """While one login is checked and max_pending wait, the next is answered 9999 "busy, retry" at
    once; a report of a lot already logged in is answered 0000 at once all the while."""
    gw = Uplink(lots=[lot_entry(), lot_entry(park_code="P002", username="lot002")])
    token = gw.login("lot002")
    runner = queued_logins(gw)
    checked, waiting = gw.handler.handle(login_text(gw)), gw.handler.handle(login_text(gw))
    with captured("lot.rejected") as events:
        busy = json.loads(result_of(gw.handler.handle(login_text(gw))))
    assert busy["resultCode"] == "9999" and "busy, retry" in busy["resultMessage"]
    assert logged(events) == [("P001", "login", "9999")]
    assert not fired(checked) and not fired(waiting) and len(runner.running) == 1
    assert gw.send("carIn", CAR_IN, token=token)["resultCode"] == "0000"
    assert gw.send("heartbeat", None, token=token)["resultCode"] == "0000"
    runner.answer(0, True)
    assert json.loads(result_of(checked))["resultCode"] == "0000"
    assert len(runner.running) == 1


def test_a_login_whose_client_left_is_dropped_unchecked_and_unlogged() -> None:
    """A login waiting in the queue whose HTTP client has gone is dropped when its turn comes: its
    password is never checked and no refusal is logged for it."""
    gw = Uplink()
    runner = queued_logins(gw, max_pending=4)
    first = gw.handler.handle(login_text(gw))
    left = gw.handler.handle(login_text(gw, "left"), gone=lambda: True)
    with captured("lot.rejected") as events:
        runner.answer(0, True)
    assert json.loads(result_of(first))["resultCode"] == "0000"
    assert json.loads(result_of(left))["resultCode"] == "9999"
    assert runner.running == [] and events == []


def test_an_http_client_is_gone_once_its_connection_is_lost() -> None:
    """The endpoint tells the handler a request's client has gone when its connection is lost."""
    told: list[Callable[[], bool]] = []

    class Waiting:
        def handle(self, text: str, code: object, files: object, gone: Callable[[], bool]) -> Deferred[bytes]:
            told.append(gone)
            return Deferred()

    site = UplinkSite(UplinkEndpoint(Waiting(), 1000), reactor=Clock())  # type: ignore[arg-type]
    channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
    assert channel is not None
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"POST /uplink HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}")
    [gone] = told
    assert not gone()
    channel.connectionLost(Failure(ConnectionDone()))
    assert gone()


def test_answers_to_unverified_requests_are_no_signing_oracle(gw: Uplink) -> None:
    """For a lot whose signature is required, an unsigned heartbeat (allowed, as in B.4.8) and a
    wrongly signed report are answered without the secret: a token alone gets no signature that
    would bind the lot's downlink."""
    token = gw.login()
    heartbeat = gw.send("heartbeat", None, token=token, signature="")
    assert heartbeat["resultCode"] == "0000"
    assert heartbeat["signature"] != sign(compact(heartbeat["data"]), token, "s3cret")
    refused = gw.send("carIn", CAR_IN, token=token, signature="BAD")
    assert refused["resultCode"] == "9006"
    assert refused["signature"] != sign(compact(refused["data"]), token, "s3cret")
    signed = gw.send("heartbeat", None, token=token)
    assert signed["signature"] == sign(compact(signed["data"]), token, "s3cret")


def test_the_lot_is_seen_at_a_login_and_a_signed_request_only(gw: Uplink) -> None:
    """The handler tells `seen` the park of a successful login and of each request signed with the
    lot's secret (a heartbeat included); a wrong password, a wrong signature or an unknown token
    prove nothing and are not told."""
    seen: list[str] = []
    gw.handler.seen = seen.append
    assert gw.send("login", {"parkUserName": "lot001", "parkUserPwd": "wrong"})["resultCode"] != "0000"
    assert gw.send("heartbeat", {}, token="no-such-token")["resultCode"] == "9000"
    assert seen == []
    token = gw.login()
    assert seen == ["P001"]
    assert gw.send("carIn", CAR_IN, token=token, secret="wrong")["resultCode"] == "9006"
    assert seen == ["P001"]
    assert gw.send("heartbeat", {}, token=token)["resultCode"] == "0000"
    assert gw.send("carIn", CAR_IN, token=token)["resultCode"] == "0000"
    assert seen == ["P001", "P001", "P001"]
