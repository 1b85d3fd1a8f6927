"""
Journal records as CloudEvents 1.0 (structured JSON form), and their batch body (no I/O).

CONTRACT §6: each forwarded record becomes one event whose ``id`` is
``{gateway id}-{seq}`` (the same on every retry and replay), whose ``source`` is
``urn:cpmi:park:{park}`` and whose ``data`` is the interface's business data with
its times converted to RFC 3339 with the lot's offset. Records the cloud is not
told about (tokens, recovery, queries and answers, commands and their replies,
sync entries themselves, anything unknown) map to ``None``.

The record kinds come from ``gateway.journal.kinds``: this module sits on the
cloud side and depends only on ``protocol`` and ``journal``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache, lru_cache
from zoneinfo import ZoneInfo

import orjson
from attrs import frozen

from gateway.interfaces import Entry
from gateway.journal.kinds import (
    ANSWER_RECORD,
    COMMAND_RECORD,
    COMMAND_REPLY_RECORD,
    FORWARDED_RECORD,
    LEGACY_RECORD,
    OFFLINE_RECORD,
    ONLINE_RECORD,
    QUARANTINE_RECORD,
    QUERY_RECORD,
    RECOVERY_RECORD,
    REJECTED_RECORD,
    RESTORE_RECORD,
    SEAL_RECORD,
    SYNC_DONE_RECORD,
    SYNC_RECORD,
    TOKEN_RECORD,
    UPLINK_RECORD,
)
from gateway.journal.record import Record, dumps_compact
from gateway.protocol.catalog import Field, lookup

__all__ = [
    "BATCH_CONTENT_TYPE",
    "EVENT_CONTENT_TYPE",
    "EVENT_KINDS",
    "NO_EVENT_KINDS",
    "batch_body",
    "event_entries",
    "local_to_rfc3339",
    "query_event",
    "to_event",
]

BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
"""The ``Content-Type`` of :func:`batch_body`'s output."""

EVENT_CONTENT_TYPE = "application/cloudevents+json"
"""The ``Content-Type`` of one event sent on its own (queries)."""

# A legacy message as a dialect received it (gateway.dialects.host); forwarded only
# when nothing of the standard was made of it, as org.cpmi.dialect.{dialect}.{service}.v1.
_TYPE_PREFIX_DIALECT = "org.cpmi.dialect."
# The forwarder's record of an event the cloud refused (gateway.cloud.forwarder).
_REJECTED_TYPE = "org.cpmi.gateway.rejected.v1"

# Kinds whose event (`to_event`) does not depend on the body: always one, or never
# one. Any other kind is decoded and asked (`cpmictl log` counts by these).
EVENT_KINDS = frozenset({UPLINK_RECORD, ONLINE_RECORD, OFFLINE_RECORD})
NO_EVENT_KINDS = frozenset(
    {
        QUERY_RECORD,
        ANSWER_RECORD,
        TOKEN_RECORD,
        COMMAND_RECORD,
        COMMAND_REPLY_RECORD,
        SYNC_RECORD,
        RECOVERY_RECORD,
        RESTORE_RECORD,
        QUARANTINE_RECORD,
        FORWARDED_RECORD,
        SEAL_RECORD,
    }
)

_TYPE_PREFIX_T002 = "org.cpmi.t002."
_LOT_TYPES = {
    ONLINE_RECORD: "org.cpmi.gateway.lot-online.v1",
    OFFLINE_RECORD: "org.cpmi.gateway.lot-offline.v1",
}
# A sync entry's outcome (CONTRACT §6, §9). "refused": an entry put in the [cluster] stream that is not a
# valid downlink, a final outcome the cloud must hear of; "published" is a step, not an outcome: no event.
_SYNC_DONE_TYPES = {
    "delivered": "org.cpmi.gateway.downlink-delivered.v1",
    "expired": "org.cpmi.gateway.downlink-expired.v1",
    "refused": "org.cpmi.gateway.downlink-refused.v1",
}

# CloudEvents' Integer is a signed 32-bit number; a larger seq goes as a String.
_INT32_MAX = 2**31 - 1

_orjson_dumps = orjson.dumps

# "yyyy-MM-dd HH:mm:ss", ASCII digits only (\d would also take other scripts' digits).
_LOCAL_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})", re.ASCII)


@frozen
class _TimePlan:
    """Where an interface's datetime fields sit: names at this level, and nested members."""

    names: tuple[str, ...]
    nested: tuple[tuple[str, _TimePlan], ...]


_EMPTY_PLAN = _TimePlan((), ())


def _plan_of(fields: Sequence[Field]) -> _TimePlan:
    names = tuple(f.name for f in fields if f.datetime)
    nested: list[tuple[str, _TimePlan]] = []
    for f in fields:
        if f.items:
            inner = _plan_of(f.items)
            if inner is not _EMPTY_PLAN:
                nested.append((f.name, inner))
    if not names and not nested:
        return _EMPTY_PLAN
    return _TimePlan(names, tuple(nested))


@cache
def _time_plan(code: str) -> _TimePlan:
    """The datetime fields of ``code``'s request data, worked out once per code."""
    interface = lookup(code)
    return _EMPTY_PLAN if interface is None else _plan_of(interface.request)


@lru_cache(maxsize=4096)  # pure; lots' times repeat within their second (~2.5 us a miss)
def local_to_rfc3339(value: str, zone: ZoneInfo) -> str:
    """
    ``"yyyy-MM-dd HH:mm:ss"`` read in ``zone`` as RFC 3339 with the zone's offset.

    ``"2026-11-24 08:30:00"`` in Asia/Shanghai is ``"2026-11-24T08:30:00+08:00"``.
    Anything else -- empty, another format, an impossible date -- is returned as
    is: the event carries what the lot sent rather than dropping it. An offset
    that is not whole minutes (local mean time before 1901) has no RFC 3339
    form, so such a time is given in UTC instead.
    """
    match = _LOCAL_TIME.fullmatch(value)
    if match is None:
        return value
    try:
        year, month, day, hour, minute, second = map(int, match.groups())
        moment = datetime(year, month, day, hour, minute, second, tzinfo=zone)
        offset = moment.utcoffset()
        if offset is None or offset.seconds % 60 or offset.microseconds:
            return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return moment.isoformat()
    except (ValueError, OverflowError):
        return value


def _convert_value(value: object, plan: _TimePlan, zone: ZoneInfo) -> object:
    """``value`` (one object or a list of them) with its times converted; unchanged parts shared."""
    if isinstance(value, dict):
        return _convert_object(value, plan, zone)
    if isinstance(value, list):
        converted = [_convert_value(item, plan, zone) for item in value]
        if any(new is not old for new, old in zip(converted, value, strict=True)):
            return converted
    return value


def _convert_object(data: dict[str, object], plan: _TimePlan, zone: ZoneInfo) -> dict[str, object]:
    # Copy on write: a dict is copied only when one of its members changes.
    result = data
    for name in plan.names:
        old = data.get(name)
        if isinstance(old, str) and old:
            new = local_to_rfc3339(old, zone)
            if new != old:
                if result is data:
                    result = dict(data)
                result[name] = new
    for name, inner in plan.nested:
        old = data.get(name)
        if old is not None:
            new_value = _convert_value(old, inner, zone)
            if new_value is not old:
                if result is data:
                    result = dict(data)
                result[name] = new_value
    return result


def _envelope(record: Record, gateway_id: str, type_: str, data: object) -> dict[str, object]:
    event: dict[str, object] = {
        "specversion": "1.0",
        "id": f"{gateway_id}-{record.seq}",
        "source": f"urn:cpmi:park:{record.park}",
        "type": type_,
        "time": record.ts,
        "datacontenttype": "application/json",
    }
    # An empty extension value says nothing; lot-online/offline records carry no opr.
    if record.opr:
        event["cpmioprnum"] = record.opr
    event["cpmiseq"] = record.seq if record.seq <= _INT32_MAX else str(record.seq)
    event["data"] = data
    return event


def to_event(record: Record, *, gateway_id: str, zone: ZoneInfo) -> dict[str, object] | None:
    """
    The CloudEvent (structured JSON form, CloudEvents 1.0) for a journal record.

    ``None`` when the record is not forwarded: tokens, recovery, query/answer,
    command/command-reply, sync (the entry itself; its ``sync-done`` is), a
    legacy message that was translated (its translations are), and any kind
    this module does not know. ``zone`` is the lots' time zone, in which
    their ``"yyyy-MM-dd HH:mm:ss"`` times are read.

    The record is never modified. The event's ``data`` shares unchanged parts
    with the record's body, so treat it as read-only (serialize it, don't edit it).
    """
    kind = record.kind
    if kind == UPLINK_RECORD:
        return _interface_event(record, gateway_id, zone)
    lot_type = _LOT_TYPES.get(kind)
    if lot_type is not None:
        return _envelope(record, gateway_id, lot_type, record.body)
    if kind == SYNC_DONE_RECORD:
        body = record.body
        if not isinstance(body, Mapping):
            return None
        outcome = body.get("outcome")
        done_type = _SYNC_DONE_TYPES.get(outcome) if isinstance(outcome, str) else None
        if done_type is None:
            return None
        return _envelope(record, gateway_id, done_type, {**body, "code": record.code})
    if kind == LEGACY_RECORD:
        return _legacy_event(record, gateway_id)
    if kind == REJECTED_RECORD:
        body = record.body
        # The refusal of a refusal's own event is recorded but not sent again: no loop.
        if not isinstance(body, Mapping) or body.get("type") == _REJECTED_TYPE:
            return None
        return _envelope(record, gateway_id, _REJECTED_TYPE, {**body, "code": record.code})
    return None


def _legacy_event(record: Record, gateway_id: str) -> dict[str, object] | None:
    body = record.body
    if not isinstance(body, Mapping) or body.get("translated"):
        return None  # its translations are forwarded, as records of their own
    dialect = body.get("dialect")
    if not isinstance(dialect, str) or not dialect:
        return None
    type_ = f"{_TYPE_PREFIX_DIALECT}{dialect}.{record.code}.v1"
    return _envelope(record, gateway_id, type_, body.get("message"))


def _interface_event(record: Record, gateway_id: str, zone: ZoneInfo) -> dict[str, object]:
    plan = _time_plan(record.code)
    data = record.body if plan is _EMPTY_PLAN else _convert_value(record.body, plan, zone)
    return _envelope(record, gateway_id, f"{_TYPE_PREFIX_T002}{record.code}.v1", data)


def query_event(record: Record, *, gateway_id: str, zone: ZoneInfo) -> dict[str, object]:
    """
    The CloudEvent for a ``query`` record (``autoPay``), sent on its own to ``cloud.query_url``.

    Shaped like an uplink's event (``org.cpmi.t002.autoPay.v1``, id
    ``{gateway id}-{seq}``, times converted); raises ValueError for a record of
    another kind.
    """
    if record.kind != QUERY_RECORD:
        raise ValueError(f"not a query record: {record.kind!r}")
    return _interface_event(record, gateway_id, zone)


def batch_body(events: Sequence[dict[str, object]]) -> bytes:
    """
    ``events`` as an ``application/cloudevents-batch+json`` body.

    A JSON array, compact UTF-8 with non-ASCII text as is (orjson; the journal's
    fallback serializer when orjson refuses a value, e.g. an integer beyond 64 bits).
    """
    return dumps_compact(list(events))


def event_entries(records: Iterable[Record], gateway_id: str, zone: ZoneInfo, at: float) -> list[Entry]:
    """The events among ``records`` as the forwarding engine's entries, each event serialized
    (the records that are no event are left out): what the cloudevents and nats sinks deliver.

    An uplink's event is written from pieces (:func:`_uplink_entry`), byte for byte what
    ``dumps_compact(to_event(record))`` writes; any other record's is that."""
    entries: list[Entry] = []
    append = entries.append
    for record in records:
        if record.kind == UPLINK_RECORD:
            entry = _uplink_entry(record, gateway_id, zone, at)
            if entry is not None:
                append(entry)
                continue
        event = to_event(record, gateway_id=gateway_id, zone=zone)
        if event is not None:
            append(
                Entry(
                    record.seq,
                    record.park,
                    record.code,
                    record.opr,
                    str(event["id"]),
                    str(event["type"]),
                    dumps_compact(event),
                    at,
                    record.ts,
                )
            )
    return entries


# An uplink's event, serialized: what orjson writes of the dict `_envelope` builds, member by
# member (orjson writes a value inside a dict as it writes it alone, and escapes a string
# character by character). What stays the same for a lot and code is encoded once (`_heads`).
_AFTER_TIME = b',"datacontenttype":"application/json"'
_OPR = b',"cpmioprnum":'
_SEQ = b',"cpmiseq":'
_DATA = b',"data":'


@lru_cache(maxsize=10_000)  # gateways x lots x codes, bounded; the busiest stay
def _heads(gateway_id: str, park: str, code: str) -> tuple[bytes, bytes, str] | None:
    """The static pieces of the uplink events of ``park`` and ``code``: the start up to the id's seq,
    the source and type up to the time, and the type; None when orjson refuses one (lone surrogates)."""
    type_ = f"{_TYPE_PREFIX_T002}{code}.v1"
    try:
        start = b'{"specversion":"1.0","id":' + _orjson_dumps(f"{gateway_id}-")[:-1]
        middle = (
            b'","source":'
            + _orjson_dumps(f"urn:cpmi:park:{park}")
            + b',"type":'
            + _orjson_dumps(type_)
            + b',"time":'
        )
    except TypeError:
        return None
    return start, middle, type_


def _uplink_entry(record: Record, gateway_id: str, zone: ZoneInfo, at: float) -> Entry | None:
    """The entry of an uplink record, its body the same bytes as ``dumps_compact(to_event(record))``;
    None where that takes the json module (orjson refuses a value) or another form: ask to_event."""
    seq, park, code, opr = record.seq, record.park, record.code, record.opr
    if type(seq) is not int or not 0 <= seq <= _INT32_MAX:
        return None
    heads = _heads(gateway_id, park, code)
    if heads is None:
        return None
    start, middle, type_ = heads
    plan = _time_plan(code)
    data = record.body if plan is _EMPTY_PLAN else _convert_value(record.body, plan, zone)
    digits = b"%d" % seq
    try:
        body = b"".join(
            (
                start,
                digits,
                middle,
                _orjson_dumps(record.ts),
                _AFTER_TIME,
                _OPR + _orjson_dumps(opr) if opr else b"",
                _SEQ,
                digits,
                _DATA,
                _orjson_dumps(data),
                b"}",
            )
        )
    except TypeError:  # orjson.JSONEncodeError: dumps_compact takes the json module for the whole event
        return None
    return Entry(seq, park, code, opr, f"{gateway_id}-{seq}", type_, body, at, record.ts)
