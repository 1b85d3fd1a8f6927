"""The subjects, headers and stream names of CONTRACT §9, from ``[cluster] prefix`` (no I/O)."""

from __future__ import annotations

import re

__all__ = [
    "CLIENT_HEADER",
    "EVENTS_DUPLICATE_WINDOW",
    "GATEWAY_HEADER",
    "OPR_HEADER",
    "OPR_VALUE",
    "event_suffix",
    "events_stream",
    "events_subject",
    "events_subjects",
    "stream_name",
]

EVENTS_DUPLICATE_WINDOW = 120.0
"""Seconds JetStream remembers a ``Nats-Msg-Id`` (CONTRACT §9: at least 2 minutes)."""

CLIENT_HEADER = "Cpmi-Client"
"""Who asked, as the asking gateway's command API knows them (journaled as the client)."""
GATEWAY_HEADER = "Cpmi-Gateway"
"""The gateway that relayed the request or published the entry (journaled as `via`)."""
OPR_HEADER = "Cpmi-Opr"
"""The oprNum the asking gateway chose, so both journals can name the same command."""
OPR_VALUE = re.compile(r"[0-9A-Za-z-]{1,36}")
"""An oprNum taken from `OPR_HEADER` as it is (表B.2: at most 36); any other is replaced."""

_GATEWAY_TYPE = "org.cpmi.gateway."
_INTERFACE_TYPE = "org.cpmi.t002."
_DIALECT_TYPE = "org.cpmi.dialect."


def stream_name(prefix: str, what: str) -> str:
    """The stream of ``what`` (``EVENTS``, ``SYNC``): ``CPMI_EVENTS`` for the prefix ``cpmi``."""
    return f"{prefix.upper().replace('.', '_').replace('-', '_')}_{what}"


def events_stream(prefix: str) -> str:
    """The events' stream: ``CPMI_EVENTS`` for the default prefix."""
    return stream_name(prefix, "EVENTS")


def events_subjects(prefix: str) -> list[str]:
    """The subjects the events' stream takes: ``cpmi.events.>``."""
    return [f"{prefix}.events.>"]


def event_suffix(type_: str, code: str) -> str:
    """The last subject token of an event of CloudEvents ``type_`` from a record of ``code``.

    The interface code for a lot's message (``carIn``), the gateway record's
    name for the gateway's own (``lot-online``, ``downlink-delivered``), the
    dialect and its service for a legacy message (``bolink-inPark``).
    """
    if type_.startswith(_INTERFACE_TYPE):
        return code
    if type_.startswith(_GATEWAY_TYPE):
        return type_[len(_GATEWAY_TYPE) :].rsplit(".", 1)[0]
    if type_.startswith(_DIALECT_TYPE):
        return "-".join(type_[len(_DIALECT_TYPE) :].rsplit(".", 1)[0].split("."))
    return code or "event"


# What a subject token cannot hold (a separator, a wildcard, whitespace).
_NOT_IN_TOKEN = re.compile(r"[.*>\s]")


def events_subject(prefix: str, park: str, suffix: str) -> str:
    """``{prefix}.events.{park}.{suffix}``; an event of no lot goes under ``_`` (never a wildcard).

    Park codes are checked at start-up ([cluster] on); a suffix from a dialect's
    service name has anything a token cannot hold replaced by ``-``.
    """
    return f"{prefix}.events.{park or '_'}.{_NOT_IN_TOKEN.sub('-', suffix) or 'event'}"
