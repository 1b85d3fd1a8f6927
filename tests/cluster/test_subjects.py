"""Subjects and stream names from [cluster] prefix (CONTRACT §9)."""

from __future__ import annotations

from gateway.cluster.subjects import event_suffix, events_stream, events_subject, events_subjects


def test_suffixes_name_the_interface_or_the_gateway_record() -> None:
    """An interface message's suffix is its code; the gateway's own, the record's name; a dialect's, both."""
    assert event_suffix("org.cpmi.t002.carIn.v1", "carIn") == "carIn"
    assert event_suffix("org.cpmi.gateway.lot-online.v1", "") == "lot-online"
    assert event_suffix("org.cpmi.gateway.downlink-delivered.v1", "gateOpen") == "downlink-delivered"
    assert event_suffix("org.cpmi.dialect.bolink.inPark.v1", "inPark") == "bolink-inPark"


def test_subjects_and_stream_follow_the_prefix() -> None:
    """cpmi.events.{park}.{suffix} in CPMI_EVENTS; another prefix gives its own stream; no token breaks."""
    assert events_subject("cpmi", "P001", "carIn") == "cpmi.events.P001.carIn"
    assert events_stream("cpmi") == "CPMI_EVENTS" and events_subjects("cpmi") == ["cpmi.events.>"]
    assert events_stream("ops.park") == "OPS_PARK_EVENTS"
    assert events_subject("cpmi", "", "x.y *>") == "cpmi.events._.x-y---"
