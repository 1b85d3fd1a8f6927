"""The members of nats-py's client the nats sink relies on, beyond its public API (see setup.cfg)."""

from __future__ import annotations

import inspect

from nats.aio.client import Client


def test_the_client_members_the_sink_writes_and_reads_through_are_there() -> None:
    """The sink writes a batch with `_send_command` + `_flush_pending` and takes PubAcks in
    `_process_msg`: a nats-py release that renames them or changes their parameters fails here,
    by name, rather than somewhere in a real-server test."""
    assert list(inspect.signature(Client._process_msg).parameters) == [
        "self",
        "sid",
        "subject",
        "reply",
        "data",
        "headers",
    ]
    assert list(inspect.signature(Client._send_command).parameters)[:2] == ["self", "cmd"]
    assert list(inspect.signature(Client._flush_pending).parameters) == ["self", "force_flush"]
    for member in (Client._process_msg, Client._send_command, Client._flush_pending):
        assert inspect.iscoroutinefunction(member), member
