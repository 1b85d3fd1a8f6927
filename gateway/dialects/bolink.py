"""
The `bolink` dialect: lots speaking the ParkingOS cloud's line protocol, on their own TCP port.

One JSON object a frame, ``{"service_name","token","sign","data"}``, signed with
the lot's secret (`bolink_messages`). A lot logs in with its park id, then sends
its entries and exits (``in_park``, ``out_park``, ``upload_order``), which become
the standard's ``carIn``/``carOut``/``freeSpace``; anything else it sends is kept
and forwarded as it came. ``gateOpen`` goes down as ``operate_liftrod``, whose
answer the lot sends as a signed message of its own. Frames from a lot end in
"\n", "\r\n" or "\r"; frames to it are written as the ParkingOS server writes
them, "\n" + JSON + "\r", unless its ``[[lot]]`` says ``framing = "lines"``.

`BolinkConnection` turns bytes into lines and lines into bytes; `BolinkServer`
decides: logins, binds, answers, commands and the idle sweep.
"""

from __future__ import annotations

import secrets
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.dialects.bolink_messages import (
    CLOUD,
    HEARTBEAT,
    HEARTBEAT_ANSWER,
    MAX_LINE,
    TRANSLATED,
    BadMessage,
    Envelope,
    LiftrodReply,
    LineSplitter,
    Oversize,
    Untranslatable,
    answer,
    digest,
    frame,
    liftrod_reply,
    login_answer,
    operate_liftrod,
    parse_line,
    repeat_answer,
    sign_ok,
    translate,
)
from gateway.dialects.interface import IDialect, IDialectHost, IDialectServer, Original, Unsupported
from gateway.interfaces import DeadlinePassed, LotReply, LotState, NotConnected
from gateway.logs import describe, lot_rejected
from gateway.lots.answers import Answer
from gateway.lots.connections import Bind, Registry
from gateway.protocol.results import Result
from gateway.settings import LotConfig

__all__ = ["BolinkConnection", "BolinkDialect", "BolinkServer", "bolink"]

log = Logger()

NAME = "bolink"
SWEEP_INTERVAL = 1.0
_BYTE_HEARTBEAT = b"\x11"
_LIFTROD = "operate_liftrod"
# The in_park/out_park/upload_order each lot had stored, answered "数据已处理过..." when
# they come again: for as long as the host's repeat rule remembers them (B.2.3.6), and
# at most this many, oldest forgotten first (the ParkingOS server keeps 5000).
REPEAT_WINDOW = 3600.0
REPEAT_MEMORY = 10_000


class BolinkConnection(Protocol):
    """One lot's connection: lines in, lines out; the server decides."""

    def __init__(self, server: BolinkServer, peer: str) -> None:
        self._server = server
        self._lines = LineSplitter(server.max_line)
        self.peer = peer
        self.park: str | None = None
        self.token = ""
        # How frames are written to this lot: the ParkingOS server's way until a lot logs in.
        self.framing = CLOUD
        self.unbound_bytes = 0
        self.opened = self.last_read = self.bound_at = server.clock.seconds()
        # The bind lifecycle: UNBOUND until a login, BOUND, then CLOSING (logins are decided at once).
        self.phase = Bind.UNBOUND
        self.close_reason = ""
        # operate_liftrod commands sent and not yet answered, oldest first.
        self.pending: deque[_Pending] = deque()

    def connectionMade(self) -> None:
        self.opened = self.last_read = self._server.clock.seconds()
        self._server.connection_made(self)

    def dataReceived(self, data: bytes) -> None:
        self.last_read = self._server.clock.seconds()
        if self.park is None:
            # Whatever a peer that has not logged in sends is bounded ([tcp] max_unbound_bytes).
            self.unbound_bytes += len(data)
            if self.unbound_bytes > self._server.host.tcp.max_unbound_bytes:
                self.close(f"more than {self._server.host.tcp.max_unbound_bytes} bytes before logging in")
                return
        for line in self._lines.feed(data):
            if self.phase is Bind.CLOSING:
                return
            try:
                if isinstance(line, Oversize):
                    self._server.oversize(self, line)
                else:
                    self._server.line_received(self, line)
            except Exception:
                log.failure("handling a line from {peer} failed", peer=self.peer)

    def send(self, line: bytes) -> None:
        """Write one frame (with its ends)."""
        if self.transport is not None and self.phase is not Bind.CLOSING:
            self.transport.write(line)

    def close(self, reason: str) -> None:
        """Close after what was written, remembering why."""
        if self.phase is Bind.CLOSING:
            return
        self.phase = Bind.CLOSING
        self.close_reason = reason
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.phase = Bind.CLOSING
        self._server.connection_lost(self, reason)


class _Pending:
    """A gateOpen sent as operate_liftrod, waiting for the lot's answer."""

    __slots__ = ("channel", "deferred", "liftrod_id", "operate", "timer")

    def __init__(self, channel: str, operate: int, liftrod_id: str, deferred: Deferred[LotReply]) -> None:
        self.channel = channel
        self.operate = operate
        self.liftrod_id = liftrod_id
        self.deferred = deferred
        self.timer: IDelayedCall | None = None

    def answered_by(self, reply: LiftrodReply) -> bool:
        """Whether `reply` is this command's answer, as far as the members it gives tell."""
        if reply.liftrod_id is not None:
            return reply.liftrod_id == self.liftrod_id
        if reply.channel_id is not None and reply.channel_id != self.channel:
            return False
        return reply.operate is None or reply.operate == self.operate


class _Factory(ServerFactory):
    noisy = False

    def __init__(self, server: BolinkServer) -> None:
        self.server = server

    def buildProtocol(self, addr: IAddress | None) -> BolinkConnection:
        return BolinkConnection(self.server, describe(addr) if addr is not None else "unknown")


def legacy_opr(service: str, order_id: str, fingerprint: str = "") -> str:
    """The message's id for the repeat rule: its service, order and data's fingerprint, or a fresh one.

    The same order sent again with other data (an exit settled again with another
    pay_type, as the SDK documentation allows) is a new message, as it is to the
    ParkingOS server, whose repeat check is by the sign. A message without an
    order has no identity: it gets a fresh id. The host journals an id longer than
    32 characters as its MD5.
    """
    if not order_id:
        return uuid.uuid4().hex
    return f"{service}:{order_id}:{fingerprint}" if fingerprint else f"{service}:{order_id}"


@implementer(IDialectServer)
class BolinkServer:
    """The bolink lots' connections: logins, uplinks, gateOpen, the idle sweep."""

    def __init__(self, host: IDialectHost) -> None:
        self.host = host
        self.clock = host.clock
        self._connections: Registry[BolinkConnection] = Registry()
        # (park, opr) of each stored in_park/out_park/upload_order -> when, oldest first.
        self._processed: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.max_line: int = min(MAX_LINE, host.tcp.max_frame_bytes)
        self._sweep = LoopingCall(self.sweep)
        self._sweep.clock = host.clock

    # IDialectServer

    def factory(self, listener: str) -> ServerFactory:
        if listener != NAME:
            raise KeyError(listener)
        return _Factory(self)

    def supports(self, code: str) -> bool:
        return code == "gateOpen"

    def command(self, park: str, code: str, data: object) -> Deferred[LotReply]:
        if code != "gateOpen":
            return fail(Unsupported(NAME, code))
        connection = self._connections.lot(park)
        if connection is None or connection.phase is Bind.CLOSING:
            return fail(NotConnected(park))
        fields = data if isinstance(data, Mapping) else {}
        channel = str(fields.get("barCode", ""))
        # operate_liftrod's operate: 0 抬杆 (raise: open), 1 落杆 (lower: close) (SDK documentation;
        # liftrod_info_tb.operate "0抬杆1落杆2暂停" in the ParkingOS schema; its console lifts with 0).
        # isOpen 1 is 开闸; absent it is its default, 0 (B.2.3.5), 关闸: the command says which.
        operate = 0 if fields.get("isOpen") in (1, True, "1") else 1
        deadline = self.host.deadline(code)

        def cancel(_: Deferred[LotReply]) -> None:
            self._forget(connection, pending)

        pending = _Pending(channel, operate, uuid.uuid4().hex, Deferred(cancel))
        pending.timer = self.clock.callLater(deadline, self._expire, connection, pending, park, deadline)
        connection.pending.append(pending)
        connection.send(operate_liftrod(channel, operate, park, pending.liftrod_id, connection.framing))
        return pending.deferred

    def state(self, park: str) -> LotState:
        return self._connections.state(park)

    def bound_parks(self) -> Iterable[str]:
        """The parks logged in now, for counting them (``IDialectServer``'s optional one)."""
        return self._connections.bound_parks()

    def disconnect(self, park: str, reason: str) -> bool:
        connection = self._connections.lot(park)
        if connection is None:
            return False
        self._unbind(connection, park, reason)
        connection.close(reason)
        return True

    def start(self) -> None:
        if not self._sweep.running:
            self._sweep.start(SWEEP_INTERVAL, now=False)

    def stop(self) -> None:
        if self._sweep.running:
            self._sweep.stop()
        for park, connection in self._connections.bound():
            self._unbind(connection, park, "gateway stopping")
            connection.close("gateway stopping")
        for connection in self._connections.unbound():
            connection.close("gateway stopping")

    # the sweep

    def sweep(self) -> None:
        """Close connections not logged in within bind_timeout, and lots silent for read_idle."""
        now = self.clock.seconds()
        tcp = self.host.tcp
        for connection in self._connections.unbound():
            if connection.opened <= now - tcp.bind_timeout:
                connection.close("not logged in within bind_timeout")
        if tcp.read_idle:
            for _, connection in self._connections.bound():
                if connection.last_read <= now - tcp.read_idle:
                    connection.close(f"nothing received for {tcp.read_idle} s (read_idle)")

    # events from the connections

    def connection_made(self, connection: BolinkConnection) -> None:
        self._connections.opened(connection)

    def connection_lost(self, connection: BolinkConnection, reason: Failure) -> None:
        self._connections.forget(connection)
        park = connection.park
        if park is not None and self._connections.holds(connection, park):
            why = connection.close_reason or f"closed by the lot: {reason.getErrorMessage()}"
            self._unbind(connection, park, why)
        self._fail_pending(connection, NotConnected(park or "?"))

    def oversize(self, connection: BolinkConnection, event: Oversize) -> None:
        detail = f"line longer than {event.limit} bytes; dropped"
        self._rejected(connection, "", Result.MALFORMED, detail)
        connection.send(answer("", False, detail, "", connection.framing))

    def line_received(self, connection: BolinkConnection, line: bytes) -> None:
        framing = connection.framing
        if line == HEARTBEAT:
            connection.send(frame(HEARTBEAT_ANSWER, framing))
            return
        if line == _BYTE_HEARTBEAT:
            connection.send(frame("\x12", framing))
            return
        try:
            envelope = parse_line(line)
        except BadMessage as error:
            self._rejected(connection, error.service, Result.MALFORMED, str(error))
            connection.send(answer(error.service, False, str(error), "", framing))
            return
        service = envelope.service
        if service == "login":
            self._login(connection, envelope)
            return
        park = connection.park
        lot = self.host.lot(park) if park is not None else None
        if park is None or lot is None:
            detail = "log in first (service_name login)"
            self._rejected(connection, service, Result.TOKEN_INVALID, detail)
            connection.send(answer(service, False, detail, envelope.order_id, framing))
            return
        # Every message after the login, the lot's answers to operate_liftrod included, has
        # its token and sign checked first (SensorServerHandler: checkTokenSign).
        if envelope.token != connection.token:
            detail = "token: not the one this connection's login gave; log in again"
            self._rejected(connection, service, Result.TOKEN_INVALID, detail)
            connection.send(answer(service, False, detail, envelope.order_id, framing))
            return
        if not sign_ok(envelope, lot.secret, lot.signature):
            detail = "sign: does not match data"
            self._rejected(connection, service, Result.BAD_SIGNATURE, detail)
            connection.send(answer(service, False, detail, envelope.order_id, framing))
            return
        if service == _LIFTROD:
            # The lot's answer to a gateOpen (lots never ask the platform to lift a rod).
            # The ParkingOS server answers it with an empty frame, which no lot needs: none.
            self._liftrod_answered(connection, envelope)
            return
        self._uplink(connection, park, envelope)

    def _rejected(
        self, connection: BolinkConnection, service: str, result: Result, reason: str, park: str | None = None
    ) -> None:
        """Log a message refused here, before the host sees it (lot.rejected; the host logs its own).

        bolink answers carry no result code: `result` is the standard's nearest one.
        """
        lot_rejected(
            log,
            park=(connection.park if park is None else park) or "",
            peer=connection.peer,
            code=service,
            result=result.code,
            reason=reason,
            dialect=NAME,
            via=NAME,
        )

    # logging in

    def _login(self, connection: BolinkConnection, envelope: Envelope) -> None:
        data = envelope.data if isinstance(envelope.data, Mapping) else {}
        park_id = data.get("park_id")
        lot = self.host.lot(str(park_id)) if isinstance(park_id, str | int) and park_id != "" else None
        if lot is None:
            detail = f"park_id: {park_id!r} is not a bolink lot of this gateway"
            self._rejected(connection, "login", Result.NO_SUCH_PARK, detail)
            connection.send(login_answer(False, detail, "", connection.framing))
            return
        if not sign_ok(envelope, lot.secret, lot.signature):
            detail = "sign: does not match data"
            self._rejected(connection, "login", Result.BAD_SIGNATURE, detail, lot.park_code)
            connection.send(login_answer(False, detail, "", lot.framing))
            return
        token = secrets.token_hex(16)
        local = data.get("local_id")
        self._bind(
            connection, lot, token, f"login (local_id {local})" if local not in (None, "") else "login"
        )
        connection.framing = lot.framing
        connection.send(login_answer(True, "", token, lot.framing))

    def _bind(self, connection: BolinkConnection, lot: LotConfig, token: str, how: str) -> None:
        park = lot.park_code
        previous = connection.park
        if previous is not None and previous != park and self._connections.holds(connection, previous):
            self._unbind(connection, previous, f"the connection logged in as {park}")
            self._fail_pending(connection, NotConnected(previous))
        old = self._connections.lot(park)
        if old is not None and old is not connection:
            self._unbind(old, park, f"replaced by a new connection from {connection.peer}")
            old.park = None
            old.close("replaced by a newer connection of the same lot")
            self._fail_pending(old, NotConnected(park))
        self._connections.forget(connection)
        connection.token = token
        if old is connection:
            return
        connection.park = park
        connection.bound_at = self.clock.seconds()
        if connection.phase is not Bind.CLOSING:
            connection.phase = Bind.BOUND
        self._connections.bind(connection, park)
        self.host.online(park, connection.peer, how)

    def _unbind(self, connection: BolinkConnection, park: str, reason: str) -> None:
        self._connections.release(connection, park)
        self.host.offline(park, connection.peer, reason)

    # uplinks

    def _uplink(self, connection: BolinkConnection, park: str, envelope: Envelope) -> None:
        service, order_id = envelope.service, envelope.order_id
        data = envelope.data if isinstance(envelope.data, Mapping) else {}
        try:
            messages = translate(service, data, self.host.zone)
        except Untranslatable as error:
            self._rejected(connection, service, Result.FIELD_INVALID, str(error))
            connection.send(answer(service, False, str(error), order_id, connection.framing))
            return
        opr = legacy_opr(service, order_id, digest(envelope))
        watched = service in TRANSLATED and bool(order_id)
        if watched and self._seen(park, opr):
            # As the later ParkingOS server answers an entry or exit it has had (TempUtil.isReSend).
            plate = data.get("car_number")
            connection.send(
                repeat_answer(service, order_id, plate if isinstance(plate, str) else "", connection.framing)
            )
            return
        # The token is the connection's own: not kept.
        kept = {"service_name": service, "sign": envelope.sign, "data": envelope.data}
        original = Original(service=service, opr=opr, message=kept)
        stored = self.host.submit(park, original, messages or ())

        def answered(outcome: Answer) -> None:
            ok = outcome.result is Result.OK
            if ok and watched:
                self._remember(park, opr)
            connection.send(answer(service, ok, "" if ok else outcome.message, order_id, connection.framing))

        stored.addCallback(answered).addErrback(
            lambda failure: log.failure(
                "answering {service} from {park} failed", failure, service=service, park=park
            )
        )

    def _seen(self, park: str, opr: str) -> bool:
        """Whether the lot's message `opr` was stored within REPEAT_WINDOW seconds."""
        key = (park, opr)
        when = self._processed.get(key)
        if when is None:
            return False
        if when > self.clock.seconds() - REPEAT_WINDOW:
            return True
        del self._processed[key]
        return False

    def _remember(self, park: str, opr: str) -> None:
        processed = self._processed
        processed[(park, opr)] = self.clock.seconds()
        processed.move_to_end((park, opr))
        horizon = self.clock.seconds() - REPEAT_WINDOW
        while processed and (len(processed) > REPEAT_MEMORY or next(iter(processed.values())) <= horizon):
            processed.popitem(last=False)

    # gateOpen

    def _liftrod_answered(self, connection: BolinkConnection, envelope: Envelope) -> None:
        reply = liftrod_reply(envelope)
        pending = next((p for p in connection.pending if p.answered_by(reply)), None)
        if pending is None:
            log.info("an operate_liftrod answer from {peer} matched no command", peer=connection.peer)
            return
        self._forget(connection, pending)
        errmsg = reply.errmsg
        if reply.state == 1:
            result = LotReply(
                Result.OK.code,
                errmsg or Result.OK.text,
                {"barCode": pending.channel, "status": 1},
            )
        else:
            said = "no data.state" if reply.state is None else f"state {reply.state}"
            detail = f"the lot answered operate_liftrod with {said}" + (f": {errmsg}" if errmsg else "")
            result = LotReply(
                Result.FAILED.code,
                Result.FAILED.message(detail),
                {"barCode": pending.channel, "status": 0},
            )
        pending.deferred.callback(result)

    def _forget(self, connection: BolinkConnection, pending: _Pending) -> None:
        try:
            connection.pending.remove(pending)
        except ValueError:
            pass
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()

    def _expire(self, connection: BolinkConnection, pending: _Pending, park: str, deadline: float) -> None:
        self._forget(connection, pending)
        pending.deferred.errback(DeadlinePassed(park, "gateOpen", deadline))

    def _fail_pending(self, connection: BolinkConnection, error: Exception) -> None:
        while connection.pending:
            pending = connection.pending.popleft()
            if pending.timer is not None and pending.timer.active():
                pending.timer.cancel()
            pending.deferred.errback(error)


@implementer(IPlugin, IDialect)
class BolinkDialect:
    """The ParkingOS cloud's lot protocol: JSON lines on a TCP port of its own."""

    name = NAME
    listeners = (NAME,)
    summary = "lots speaking the ParkingOS (bolink) line protocol: in_park, out_park, operate_liftrod"

    def check_lot(self, lot: LotConfig) -> str | None:
        if not lot.secret and lot.signature != "off":
            return "secret: must not be empty: a bolink lot proves who it is by signing with it"
        return None

    def serve(self, host: IDialectHost) -> BolinkServer:
        return BolinkServer(host)


bolink = BolinkDialect()
