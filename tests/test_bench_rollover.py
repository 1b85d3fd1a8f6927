"""bench.rollover's lots driven in memory: how they bind, lose their token, pace and come back (no timing)."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport

from bench.lotfleet import SECRET
from bench.rollover import Herd, HerdLot, Upload, with_backlog
from gateway.protocol.envelope import response_text
from gateway.protocol.framing import FrameDecoder, encode_json_frame

DOWNLINK, UPLINK = 9000, 8000


def herd(lots: int = 1, turn: float = 0.0, spread: float = 1.0) -> tuple[Herd, MemoryReactorClock]:
    args = argparse.Namespace(
        host="127.0.0.1",
        port=DOWNLINK,
        uplink=UPLINK,
        password="pw",
        secret=SECRET,
        first=0,
        lots=lots,
        turn=turn,
        spread=spread,
        interval=30.0,
        connecting=10,
    )
    reactor = MemoryReactorClock()
    return Herd(reactor, args), reactor


def connect(herd: Herd, reactor: MemoryReactorClock) -> tuple[Any, StringTransport]:
    """Complete the latest connection the lots asked for; the protocol and its transport."""
    factory = reactor.tcpClients[-1][2]
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def sent_frames(transport: StringTransport) -> list[dict[str, Any]]:
    frames = [json.loads(p) for p in FrameDecoder(1 << 16).feed(transport.value())]
    transport.clear()
    return frames


def answer(protocol: HerdLot, code: str, result: str, message: str = "", data: object = None) -> None:
    """The gateway's answer to the lot's `code`."""
    text = response_text(code, "x", result, message, data if data is not None else {}, "", SECRET)
    protocol.dataReceived(encode_json_frame(text))


def test_a_lot_binds_by_password_then_by_its_token_after_losing_the_connection(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A new lot logs in with its password; cut off by a restart, it comes back 0.5-1.5 s later by token."""
    running, reactor = herd()
    running.start()
    lot, transport = connect(running, reactor)
    [login] = sent_frames(transport)
    assert login["code"] == "login" and login["data"]["parkUserPwd"] == "pw"
    answer(lot, "login", "0000", data={"token": "t1", "parkCode": "P00000"})
    assert running.bound_count == 1 and '"event": "bound"' in capsys.readouterr().out
    lot.connectionLost(None)  # type: ignore[arg-type]
    reactor.advance(0.4)
    assert len(reactor.tcpClients) == 1  # not yet
    reactor.advance(1.2)
    again, transport = connect(running, reactor)
    [heartbeat] = sent_frames(transport)
    assert heartbeat["code"] == "heartbeat" and heartbeat["token"] == "t1"
    answer(again, "heartbeat", "0000")
    assert running.counters["binds_by_token"] == 1 and running.bound_count == 1
    assert '"event": "rebound"' in capsys.readouterr().out


def test_at_the_turn_a_lot_is_told_its_token_expired_logs_in_again_at_once_and_uploads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After the turn: heartbeat, 9000, cut off; back within 0.2 s by password, then one signed carIn."""
    running, reactor = herd(turn=1.0)
    running.start()
    lot, transport = connect(running, reactor)
    sent_frames(transport)
    answer(lot, "login", "0000", data={"token": "t1", "parkCode": "P00000"})
    reactor.advance(0)  # the turn (passed already: at once); the next heartbeat within --spread 1 s
    assert running.turned
    reactor.advance(1.0)
    [heartbeat] = sent_frames(transport)
    assert heartbeat["code"] == "heartbeat" and heartbeat["token"] == "t1"
    answer(lot, "heartbeat", "9000", "token: replaced by a newer login, revoked or expired")
    assert running.counters["expired"] == 1 and running.tokens == [""]
    lot.connectionLost(None)  # type: ignore[arg-type]
    reactor.advance(0.2)
    again, transport = connect(running, reactor)
    [login] = sent_frames(transport)
    assert login["code"] == "login"
    answer(again, "login", "0000", data={"token": "t2", "parkCode": "P00000"})
    _, port, factory, _, _ = reactor.tcpClients[-1]
    assert port == UPLINK and factory.kind is Upload
    upload = factory.buildProtocol(None)
    upload_transport = StringTransport()
    upload.makeConnection(upload_transport)
    request = upload_transport.value()
    assert request.startswith(b"POST /uplink HTTP/1.1\r\n")
    form = urllib.parse.parse_qs(request.partition(b"\r\n\r\n")[2].decode())
    envelope = json.loads(form["param"][0])
    assert envelope["code"] == "carIn" and envelope["token"] == "t2" and envelope["signature"]
    upload.dataReceived(b'HTTP/1.1 200 OK\r\n\r\n{"resultCode": "0000"}')
    upload.connectionLost(None)  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert '"event": "rebound"' in out and '"event": "uploaded"' in out
    assert running.counters["uploads"] == 1


def test_a_bound_lot_heartbeats_every_interval_until_its_connection_is_lost() -> None:
    """As a real lot: the first heartbeat within the interval after the bind, then one every 30 s;
    none once the connection is gone (else the gateway's own heartbeats would all come together)."""
    running, reactor = herd()
    running.start()
    lot, transport = connect(running, reactor)
    sent_frames(transport)
    answer(lot, "login", "0000", data={"token": "t1", "parkCode": "P00000"})
    reactor.advance(30.0)
    [first] = sent_frames(transport)
    assert first["code"] == "heartbeat" and first["token"] == "t1"
    reactor.advance(29.9)
    assert sent_frames(transport) == []
    reactor.advance(0.2)
    assert [frame["code"] for frame in sent_frames(transport)] == ["heartbeat"]
    lot.connectionLost(None)  # type: ignore[arg-type]
    assert not [call for call in reactor.getDelayedCalls() if call.func == lot.heartbeat]


@pytest.mark.parametrize("spread", [30.0, 60.0])
def test_a_spread_as_long_as_the_interval_leaves_the_heartbeats_where_they_were(spread: float) -> None:
    """With --spread at or above the interval the turn moves no heartbeat: each lot's next one is
    where its own phase put it."""
    running, reactor = herd(turn=1.0, spread=spread)
    running.start()
    lot, transport = connect(running, reactor)
    sent_frames(transport)
    answer(lot, "login", "0000", data={"token": "t1", "parkCode": "P00000"})
    assert lot.beat is not None
    due = lot.beat.getTime()
    reactor.advance(0)  # the turn (passed already: at once)
    assert running.turned and lot.beat.getTime() == due


def test_a_lot_answered_busy_waits_one_to_three_seconds() -> None:
    """A login answered 9999 busy is counted, and the lot tries again only 1-3 s after being cut off."""
    running, reactor = herd()
    running.start()
    lot, _ = connect(running, reactor)
    answer(lot, "login", "9999", "busy, retry: too many logins are waiting for a password check")
    lot.connectionLost(None)  # type: ignore[arg-type]
    assert running.counters["busy"] == 1
    reactor.advance(0.99)
    assert len(reactor.tcpClients) == 1
    reactor.advance(2.02)
    assert len(reactor.tcpClients) == 2


def test_the_backlog_goes_on_the_lots_listeners_only() -> None:
    """`--backlog` sets the uplink's and the downlink's backlog, not the API's; 0 leaves the default."""
    config = "".join(
        f'{name} = "tcp:{port}:interface=127.0.0.1"\n'
        for name, port in (("uplink", 1), ("downlink", 2), ("api", 3))
    )
    assert with_backlog(config, 0) == config
    lines = with_backlog(config, 1024).splitlines()
    assert lines[0].endswith(':backlog=1024"') and lines[1].endswith(':backlog=1024"')
    assert "backlog" not in lines[2]
