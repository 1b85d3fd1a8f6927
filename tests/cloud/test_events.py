"""Journal records as CloudEvents: ids, types, time conversion, the batch body."""

from __future__ import annotations

import copy
import json
import re
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cloud.events import (
    BATCH_CONTENT_TYPE,
    batch_body,
    event_entries,
    local_to_rfc3339,
    query_event,
    to_event,
)
from gateway.dialects import host
from gateway.journal.record import Record, dumps_compact
from gateway.lots import downlink, sync, uplink
from gateway.protocol.catalog import INTERFACES

SHANGHAI = ZoneInfo("Asia/Shanghai")
GATEWAY = "gw-01"


def record(
    kind: str = "uplink",
    code: str = "carIn",
    body: object = None,
    *,
    seq: int = 7,
    park: str = "P001",
    opr: str = "op-1",
) -> Record:
    return Record(
        seq=seq,
        ts="2026-11-24T00:30:00.000001Z",
        kind=kind,
        park=park,
        code=code,
        opr=opr,
        body={} if body is None else body,
        chain="0" * 32,
    )


def event_of(rec: Record) -> dict[str, object]:
    event = to_event(rec, gateway_id=GATEWAY, zone=SHANGHAI)
    assert event is not None
    return event


def test_kind_spellings_match_the_lot_side() -> None:
    """The kinds events.py knows are spelt as the lot side journals them."""
    assert uplink.UPLINK_RECORD == "uplink"
    assert (downlink.ONLINE_RECORD, downlink.OFFLINE_RECORD) == ("lot-online", "lot-offline")
    assert sync.SYNC_DONE_RECORD == "sync-done"
    assert host.LEGACY_RECORD == "legacy"


def test_untranslated_legacy_message_is_forwarded_as_it_came() -> None:
    """A legacy message nothing was made of goes as org.cpmi.dialect.{dialect}.{service}.v1, whole."""
    message = {"service_name": "park_status", "sign": "AB", "data": {"state": 1, "in_time": 1700000000}}
    body = {"dialect": "bolink", "translated": [], "message": message}
    event = event_of(record("legacy", "park_status", body, opr="park_status:x"))
    assert event["type"] == "org.cpmi.dialect.bolink.park_status.v1"
    assert event["data"] == message
    assert event["cpmioprnum"] == "park_status:x" and event["id"] == "gw-01-7"


def test_translated_legacy_message_is_not_forwarded_twice() -> None:
    """A legacy message with translations is not an event: its carIn and freeSpace records are."""
    body = {"dialect": "bolink", "translated": ["carIn", "freeSpace"], "message": {"data": {}}}
    assert to_event(record("legacy", "in_park", body), gateway_id=GATEWAY, zone=SHANGHAI) is None
    for broken in ({"translated": []}, {"dialect": "", "translated": []}, ["not", "an", "object"]):
        assert to_event(record("legacy", "x", broken), gateway_id=GATEWAY, zone=SHANGHAI) is None


def test_ids_are_stable_and_unique_per_seq() -> None:
    """An event's id is {gateway}-{seq}: the same on every mapping, different per seq."""
    first = event_of(record(seq=41))
    again = event_of(record(seq=41))
    assert first["id"] == again["id"] == "gw-01-41"
    ids = {event_of(record(seq=seq))["id"] for seq in range(1, 101)}
    assert len(ids) == 100


def test_common_attributes() -> None:
    """Every event carries specversion, source, time, datacontenttype and both extensions."""
    event = event_of(record(seq=9, park="P042", opr="abc"))
    assert event["specversion"] == "1.0"
    assert event["source"] == "urn:cpmi:park:P042"
    assert event["time"] == "2026-11-24T00:30:00.000001Z"
    assert event["datacontenttype"] == "application/json"
    assert event["cpmioprnum"] == "abc"
    assert event["cpmiseq"] == 9


def test_event_follows_cloudevents_rules() -> None:
    """One event, checked by hand against CloudEvents 1.0: required attributes, names, types."""
    event = event_of(record(body={"recordCode": "R1", "carNum": "粤B12345", "inTime": "2026-11-24 08:30:00"}))
    for required in ("id", "source", "specversion", "type"):
        assert isinstance(event[required], str) and event[required]
    # Attribute names (context and extension): lowercase a-z/0-9, at most 20 characters.
    for name in event:
        if name != "data":
            assert re.fullmatch(r"[a-z0-9]{1,20}", name), name
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", str(event["time"]))
    assert isinstance(event["cpmiseq"], int) and -(2**31) <= event["cpmiseq"] < 2**31
    assert set(event) <= {
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "datacontenttype",
        "cpmioprnum",
        "cpmiseq",
        "data",
    }


def test_seq_beyond_int32_is_a_string() -> None:
    """CloudEvents' Integer is 32-bit, so a larger seq is sent as a String."""
    assert event_of(record(seq=2**31))["cpmiseq"] == str(2**31)
    assert event_of(record(seq=2**31 - 1))["cpmiseq"] == 2**31 - 1


def test_types_per_kind() -> None:
    """Uplinks are org.cpmi.t002.{code}.v1; lot and downlink outcomes are org.cpmi.gateway.*."""
    assert event_of(record("uplink", "carOut"))["type"] == "org.cpmi.t002.carOut.v1"
    assert event_of(record("lot-online", "", {"peer": "x"}))["type"] == "org.cpmi.gateway.lot-online.v1"
    assert event_of(record("lot-offline", "", {"peer": "x"}))["type"] == "org.cpmi.gateway.lot-offline.v1"
    delivered = record("sync-done", "blacklist", {"seq": 3, "client": "c", "outcome": "delivered"})
    expired = record("sync-done", "blacklist", {"seq": 3, "client": "c", "outcome": "expired", "attempts": 5})
    assert event_of(delivered)["type"] == "org.cpmi.gateway.downlink-delivered.v1"
    assert event_of(expired)["type"] == "org.cpmi.gateway.downlink-expired.v1"


def test_lot_and_sync_done_data() -> None:
    """lot-online/offline data is the body; sync-done data is the body plus the code."""
    body = {"peer": "10.0.0.2:5000", "reason": "bound"}
    assert event_of(record("lot-online", "", body, opr=""))["data"] == body
    done = {"seq": 3, "client": "c", "outcome": "delivered"}
    rec = record("sync-done", "blacklist", done)
    assert event_of(rec)["data"] == {**done, "code": "blacklist"}
    assert rec.body == {"seq": 3, "client": "c", "outcome": "delivered"}


def test_a_rejection_is_a_gateway_event_but_never_of_a_rejection() -> None:
    """A rejected record becomes org.cpmi.gateway.rejected.v1; the refusal of that event is not sent again."""
    body = {"seq": 5, "id": "gw-01-5", "type": "org.cpmi.t002.carIn.v1", "status": 422, "answer": "bad"}
    event = event_of(record("rejected", "carIn", body))
    assert event["type"] == "org.cpmi.gateway.rejected.v1"
    assert event["data"] == {**body, "code": "carIn"}
    looped = {**body, "type": "org.cpmi.gateway.rejected.v1"}
    assert to_event(record("rejected", "carIn", looped), gateway_id=GATEWAY, zone=SHANGHAI) is None
    assert to_event(record("rejected", "carIn", ["x"]), gateway_id=GATEWAY, zone=SHANGHAI) is None


def test_query_event_is_the_interface_event_of_a_query_record() -> None:
    """An autoPay query record maps to org.cpmi.t002.autoPay.v1, times converted; other kinds raise."""
    rec = record("query", "autoPay", {"recordCode": "R1", "inTime": "2026-11-24 08:30:00"}, seq=12)
    event = query_event(rec, gateway_id=GATEWAY, zone=SHANGHAI)
    assert event["id"] == "gw-01-12"
    assert event["type"] == "org.cpmi.t002.autoPay.v1"
    assert event["data"] == {"recordCode": "R1", "inTime": "2026-11-24T08:30:00+08:00"}
    with pytest.raises(ValueError, match="not a query record"):
        query_event(record("uplink", "autoPay"), gateway_id=GATEWAY, zone=SHANGHAI)


def test_empty_opr_leaves_out_the_extension() -> None:
    """A record without an opr (lot-online) has no cpmioprnum rather than an empty one."""
    assert "cpmioprnum" not in event_of(record("lot-online", "", {"peer": "x"}, opr=""))


def test_carin_and_carout_times_get_the_offset() -> None:
    """carIn's inTime and carOut's inTime/outTime become RFC 3339 with +08:00."""
    car_in = event_of(record(body={"recordCode": "R1", "carNum": "粤B1", "inTime": "2026-11-24 08:30:00"}))
    assert car_in["data"] == {"recordCode": "R1", "carNum": "粤B1", "inTime": "2026-11-24T08:30:00+08:00"}
    car_out = event_of(
        record(
            code="carOut",
            body={"recordCode": "R1", "inTime": "2026-11-24 08:30:00", "outTime": "2026-11-24 23:59:59"},
        )
    )
    assert car_out["data"] == {
        "recordCode": "R1",
        "inTime": "2026-11-24T08:30:00+08:00",
        "outTime": "2026-11-24T23:59:59+08:00",
    }


def test_list_data_is_converted_item_by_item() -> None:
    """When data is a list of objects, each object's times are converted."""
    body = [
        {"recordCode": "R1", "inTime": "2026-11-24 08:30:00"},
        {"recordCode": "R2", "inTime": "2026-11-25 09:00:01"},
        "not an object",
    ]
    data = event_of(record(body=body))["data"]
    assert data == [
        {"recordCode": "R1", "inTime": "2026-11-24T08:30:00+08:00"},
        {"recordCode": "R2", "inTime": "2026-11-25T09:00:01+08:00"},
        "not an object",
    ]


def test_nested_list_times_are_converted() -> None:
    """backfill's paymentRecordList[].payTime is converted along with the top-level times."""
    body = {
        "recordCode": "R1",
        "inTime": "2026-11-24 08:30:00",
        "outTime": "2026-11-24 10:00:00",
        "paymentRecordList": [
            {"billNumber": "B1", "payTime": "2026-11-24 09:59:00"},
            {"billNumber": "B2", "payTime": ""},
        ],
    }
    data = event_of(record(code="backfill", body=body))["data"]
    assert data == {
        "recordCode": "R1",
        "inTime": "2026-11-24T08:30:00+08:00",
        "outTime": "2026-11-24T10:00:00+08:00",
        "paymentRecordList": [
            {"billNumber": "B1", "payTime": "2026-11-24T09:59:00+08:00"},
            {"billNumber": "B2", "payTime": ""},
        ],
    }


@pytest.mark.parametrize(
    "value",
    ["", "2026-11-24", "2026-11-24T08:30:00+08:00", "2026-13-01 00:00:00", "２０２６-11-24 08:30:00", "x"],
)
def test_empty_or_unparseable_times_stay(value: str) -> None:
    """A time that is empty or not "yyyy-MM-dd HH:mm:ss" is passed on as the lot sent it."""
    data = event_of(record(body={"recordCode": "R1", "inTime": value}))["data"]
    assert data == {"recordCode": "R1", "inTime": value}


def test_non_string_times_stay() -> None:
    """A time field holding a number, null or object is left alone."""
    body = {"inTime": 17, "outTime": None}
    assert event_of(record(code="carOut", body=body))["data"] == {"inTime": 17, "outTime": None}


def test_offset_follows_the_zone_and_its_rules() -> None:
    """The offset is the zone's at that moment (DST included) and always whole minutes."""
    paris = ZoneInfo("Europe/Paris")
    assert local_to_rfc3339("2026-07-01 12:00:00", paris) == "2026-07-01T12:00:00+02:00"
    assert local_to_rfc3339("2026-01-01 12:00:00", paris) == "2026-01-01T12:00:00+01:00"
    # Shanghai's local mean time (+08:05:43) has no RFC 3339 form: given in UTC.
    assert local_to_rfc3339("1900-01-01 00:00:00", SHANGHAI) == "1899-12-31T15:54:17Z"


def test_record_body_is_not_mutated() -> None:
    """Mapping converts into new objects; the record's body, nested lists included, stays as it was."""
    body = {
        "inTime": "2026-11-24 08:30:00",
        "paymentRecordList": [{"payTime": "2026-11-24 09:59:00"}],
    }
    before = copy.deepcopy(body)
    rec = record(code="backfill", body=body)
    event_of(rec)
    assert rec.body == before
    list_body = [{"inTime": "2026-11-24 08:30:00"}]
    event_of(record(body=list_body))
    assert list_body == [{"inTime": "2026-11-24 08:30:00"}]


@pytest.mark.parametrize(
    "kind",
    ["token", "recovery", "query", "answer", "command", "command-reply", "sync", "seal", "whatever"],
)
def test_non_forwarded_kinds_give_none(kind: str) -> None:
    """Records the cloud is not told about map to None."""
    assert to_event(record(kind, body={"x": 1}), gateway_id=GATEWAY, zone=SHANGHAI) is None


@pytest.mark.parametrize("body", [{"seq": 1, "outcome": "pending"}, {"seq": 1}, ["delivered"]])
def test_sync_done_without_a_known_outcome_gives_none(body: object) -> None:
    """A sync-done record whose outcome is neither delivered nor expired is not forwarded."""
    assert to_event(record("sync-done", "blacklist", body), gateway_id=GATEWAY, zone=SHANGHAI) is None


def test_batch_body_is_a_compact_utf8_json_array() -> None:
    """batch_body gives a JSON array that parses back equal, UTF-8 with Chinese text unescaped."""
    events = [
        event_of(record(seq=1, body={"carNum": "粤B12345", "inTime": "2026-11-24 08:30:00"})),
        event_of(record("lot-offline", "", {"peer": "x", "reason": "超时"}, seq=2, opr="")),
    ]
    body = batch_body(events)
    text = body.decode("utf-8")
    assert "粤B12345" in text and "超时" in text and "\\u" not in text
    assert json.loads(body) == events
    assert text.startswith("[{") and ", " not in text and ": " not in text
    assert batch_body([]) == b"[]"
    assert BATCH_CONTENT_TYPE == "application/cloudevents-batch+json"


def test_batch_body_takes_integers_beyond_64_bits() -> None:
    """A body integer orjson refuses still serializes (the journal's fallback serializer)."""
    events = [event_of(record(body={"payNum": 2**70}))]
    assert json.loads(batch_body(events)) == events


_UPLINK_CODES = [*sorted(i.code for i in INTERFACES if i.uplink is not None), "unknownCode"]
_TIME_KEYS = ["inTime", "outTime", "payTime", "paymentRecordList", "couponList", "startDate", "recordCode"]

_json_leaf = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_TIME_KEYS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)
_times = st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\Z") | _json


@given(
    code=st.sampled_from(_UPLINK_CODES),
    body=_json
    | st.dictionaries(st.sampled_from(_TIME_KEYS), _times)
    | st.lists(st.dictionaries(st.sampled_from(_TIME_KEYS), _times), max_size=3),
)
def test_any_json_body_maps_without_raising(code: str, body: object) -> None:
    """Any JSON-like body of an uplink record maps to an event, leaves the body as it was, and serializes."""
    before = copy.deepcopy(body)
    event = to_event(record(code=code, body=body), gateway_id=GATEWAY, zone=SHANGHAI)
    assert event is not None
    assert event["type"] == f"org.cpmi.t002.{code}.v1"
    assert body == before
    batch_body([event])


def _entry_as_to_event_makes_it(rec: Record, gateway_id: str) -> tuple[object, ...]:
    """The entry event_entries made before uplinks' events were written from pieces."""
    event = to_event(rec, gateway_id=gateway_id, zone=SHANGHAI)
    assert event is not None
    body = dumps_compact(event)
    return (rec.seq, rec.park, rec.code, rec.opr, str(event["id"]), str(event["type"]), body, 1.5, rec.ts)


def test_uplink_event_bytes_are_pinned() -> None:
    """An uplink's serialized event is exactly these bytes (CONTRACT §6, §9: the wire does not change)."""
    rec = record(
        seq=42, park="P001", opr="op-1", body={"carNum": "京A12345", "inTime": "2026-11-24 08:30:00"}
    )
    (entry,) = event_entries([rec], GATEWAY, SHANGHAI, 1.5)
    assert (
        entry.body
        == (
            '{"specversion":"1.0","id":"gw-01-42","source":"urn:cpmi:park:P001",'
            '"type":"org.cpmi.t002.carIn.v1","time":"2026-11-24T00:30:00.000001Z",'
            '"datacontenttype":"application/json","cpmioprnum":"op-1","cpmiseq":42,'
            '"data":{"carNum":"京A12345","inTime":"2026-11-24T08:30:00+08:00"}}'
        ).encode()
    )
    assert tuple(entry) == _entry_as_to_event_makes_it(rec, GATEWAY)
    assert (entry.id, entry.type, entry.at) == ("gw-01-42", "org.cpmi.t002.carIn.v1", 1.5)


_odd_text = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0xFFFF), max_size=6)


@given(
    code=st.sampled_from(_UPLINK_CODES),
    park=st.sampled_from(["P001", "停车场", ""]) | _odd_text,
    opr=st.sampled_from(["op-1", ""]) | _odd_text,
    gateway_id=st.sampled_from([GATEWAY, 'g"\\\n']) | _odd_text,
    seq=st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**63, -1]) | st.integers(),
    ts=st.sampled_from(["2026-11-24T00:30:00.000001Z"]) | _odd_text,
    body=_json
    | st.dictionaries(st.sampled_from(_TIME_KEYS), _times)
    | st.fixed_dictionaries({"payNum": st.just(2**70), "fee": st.floats(allow_nan=False)})
    | st.fixed_dictionaries({"carNum": st.just("\ud800")}),
)
def test_uplink_entries_are_byte_for_byte_those_of_to_event(
    code: str, park: str, opr: str, gateway_id: str, seq: int, ts: str, body: object
) -> None:
    """event_entries writes an uplink's event from pieces: the same bytes, id and type as
    dumps_compact(to_event(record)), whatever the lot, oprNum, gateway id, seq, time and body
    (non-ASCII, control characters, lone surrogates, integers beyond 64 bits, seqs beyond int32)."""
    rec = Record(seq, ts, "uplink", park, code, opr, body, "0" * 32)
    (entry,) = event_entries([rec], gateway_id, SHANGHAI, 1.5)
    assert tuple(entry) == _entry_as_to_event_makes_it(rec, gateway_id)


def test_entries_keep_the_records_order_across_kinds() -> None:
    """event_entries gives the events in the records' order, uplinks and the gateway's own mixed,
    leaving out the records that are no event, each entry as to_event and dumps_compact make it."""
    records = [
        record(seq=1),
        record("token", "login", seq=2),
        record("lot-online", "", {"peer": "x"}, seq=3, opr=""),
        record(seq=4, park="P002", opr="op-2"),
    ]
    entries = event_entries(records, GATEWAY, SHANGHAI, 1.5)
    assert [tuple(e) for e in entries] == [
        _entry_as_to_event_makes_it(records[i], GATEWAY) for i in (0, 2, 3)
    ]
