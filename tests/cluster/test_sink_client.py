"""The members of nats-py's client the nats sink relies on, beyond its public API (see setup.cfg),
and the sink's reading of PubAcks ahead of nats-py's parser."""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace
from typing import Any

import pytest
from nats.aio.client import Client
from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

from gateway.cluster.sink import _Acks, _Batch, _NoStream, _Refused


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


class ParsingClient:
    """What `_Acks` uses of a nats-py client, with nats-py's own protocol parser: records what reaches it."""

    def __init__(self) -> None:
        self._ps = Parser(self)
        self.delivered: list[tuple[int, bytes, bytes, bytes, bytes | None]] = []
        self.pings = 0

    def new_inbox(self) -> str:
        return "_INBOX.t"

    async def subscribe(self, subject: str, cb: object) -> object:
        assert subject == "_INBOX.t.*"
        return SimpleNamespace(_id=7)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        self.delivered.append((sid, subject, reply, data, headers))

    async def _process_ping(self) -> None:
        self.pings += 1


PUBACK = b'{"stream":"CPMI_EVENTS","seq":%d}'
REFUSAL = b'{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum"}}'


def wire() -> bytes:
    """What the server may send on the connection: runs of PubAcks to the sink's inbox (sid 7), between
    them a ping, another subscription's message, a refusal, a no-responders status and an answer to a
    token no one waits for; the last PubAck comes twice (a second answer is ignored)."""
    parts = [b"MSG _INBOX.t.%d 7 %d\r\n%s\r\n" % (n, len(PUBACK % n), PUBACK % n) for n in range(1, 21)]
    parts.insert(5, b"PING\r\n")
    parts.insert(9, b"MSG cpmi.commands.P001 3 _INBOX.r.1 5\r\nhello\r\n")
    parts.insert(12, b"MSG _INBOX.t.21 7 %d\r\n%s\r\n" % (len(REFUSAL), REFUSAL))
    parts.insert(14, b"HMSG _INBOX.t.22 7 16 16\r\nNATS/1.0 503\r\n\r\n\r\n")
    parts.insert(15, b"MSG _INBOX.t.99 7 2\r\n{}\r\n")
    parts.append(b"MSG _INBOX.t.20 7 2\r\n{}\r\n")
    return b"".join(parts)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 40, 97, 1000])
def test_runs_of_pubacks_are_read_at_once_and_the_rest_reaches_nats_py_as_before(size: int) -> None:
    """With nats-py's parser, `_Acks` reads runs of PubAcks to its inbox itself: however the socket
    splits the stream, each waited-for answer settles its message once (PubAck, refusal, no stream),
    and the ping and the other subscription's message reach nats-py whole, once, in order."""

    async def run() -> tuple[ParsingClient, _Batch]:
        client = ParsingClient()
        acks = _Acks(client)  # type: ignore[arg-type]
        await acks.subscribe()
        hooked = client._process_msg

        async def counted(sid: int, *rest: Any) -> None:
            parsed.append(sid)
            await hooked(sid, *rest)

        client._process_msg = counted  # type: ignore[method-assign]
        batch = _Batch(22, asyncio.get_running_loop())
        batch.remaining = 22
        for token in range(1, 23):
            acks.waiting[token] = (batch, token - 1)
        data = wire()
        for at in range(0, len(data), size):
            await client._ps.parse(data[at : at + size])
        assert not acks.waiting and batch.done.done()
        assert not client._ps.buf
        return client, batch

    parsed: list[int] = []
    client, batch = asyncio.run(run())
    if size >= 97:  # reads holding whole PubAcks: those at a read's start never reach nats-py's parser
        assert parsed.count(7) < 24
    assert batch.results[:20] == [PUBACK % n for n in range(1, 21)]
    assert isinstance(batch.results[20], _Refused) and batch.results[20].status == 400
    assert isinstance(batch.results[21], _NoStream)
    assert batch.failed == 2 and batch.remaining == 0
    assert client.delivered == [(3, b"cpmi.commands.P001", b"_INBOX.r.1", b"hello", None)]
    assert client.pings == 1


def test_the_parser_members_the_sink_reads_through_are_there() -> None:
    """`_Acks` reads PubAcks ahead of nats-py's parser through its `parse`, `buf`, `state` and
    `needed`: a release that changes them fails here by name (the sink then leaves the parser alone)."""
    parser = Parser()
    assert inspect.iscoroutinefunction(parser.parse)
    assert isinstance(parser.buf, bytearray) and parser.state == AWAITING_CONTROL_LINE
    assert isinstance(parser.needed, int)
