"""The downlink's decisions (B.3, CONTRACT §5): which connection is which lot, and commands.

`Downlinks` is the `FrameHandler` of every TCP connection. It binds a connection
to a lot (by `login`, or by `heartbeat` with a valid token, signed when the lot's
signature is required), answers the lot's heartbeats, sends commands as ACK
frames and matches the lot's REPLY frames to them by oprNum, and runs the one
idle sweep (B.3.4) over all connections. What an unbound peer may make it hold
is bounded (CONTRACT §4): bytes before a bind (max_unbound_bytes), frames
while a login is checked, and the time to bind; a bound connection whose
token is no longer in force is closed at its next frame. The protocol in
`tcp.py` only turns bytes into envelopes and back.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from zoneinfo import ZoneInfo

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.interfaces import DeadlinePassed, JournalAppend, LotReply, LotState, NotConnected
from gateway.journal.kinds import OFFLINE_RECORD, ONLINE_RECORD
from gateway.logs import lot_rejected
from gateway.lots.answers import Answer
from gateway.lots.connections import Bind, Registry
from gateway.lots.login import STANDARD, Checker, LoginOutcome, login
from gateway.lots.sessions import Sessions
from gateway.lots.tcp import DownlinkFactory, DownlinkProtocol
from gateway.protocol.catalog import deadline_of, lookup
from gateway.protocol.envelope import EnvelopeError, Reply, Request, ack_frame, build_response
from gateway.protocol.framing import FrameTooLarge, encode_json_frame
from gateway.protocol.results import RESULT_OK, Result
from gateway.protocol.signing import signature_ok
from gateway.protocol.times import wire_time
from gateway.settings import Config, LotConfig

log = Logger()

SWEEP_INTERVAL = 1.0
# Frames a lot may send while its login's password check is under way.
MAX_QUEUED = 32
# Expired oprNums remembered to tell a late reply from an unknown one.
_EXPIRED_KEPT = 1024
# Logins begun in one turn of the reactor; the next wait for the following turns, in order. At the
# month's end every lot logs in again; without a cap, one turn could take the logins of hundreds
# of lots (and their answers came back in one journal batch), and every other lot's frame, and
# every uplink, waited for the whole turn (docs/benchmarks.md, the month's rollover).
LOGINS_PER_TURN = 32

Connection = DownlinkProtocol
UNBOUND, BINDING, BOUND, CLOSING = Bind.UNBOUND, Bind.BINDING, Bind.BOUND, Bind.CLOSING


class _Pending:
    """A command sent and not yet replied to."""

    __slots__ = ("code", "connection", "deadline", "deferred", "park", "timer")

    def __init__(
        self, park: str, code: str, connection: Connection, deadline: float, deferred: Deferred[LotReply]
    ) -> None:
        self.park = park
        self.code = code
        self.connection = connection
        self.deadline = deadline
        self.deferred = deferred
        self.timer: IDelayedCall | None = None


_COUNTERS = (
    "connections",
    "frames_in",
    "frames_out",
    "garbage_bytes",
    "bad_frames",
    "bad_signatures",
    "unmatched_replies",
    "late_replies",
    "binds",
    "bind_failures",
    "replaced",
    "closed_unbound",
    "closed_unbound_bytes",
    "closed_token",
    "closed_idle",
    "closed_oversize",
    "heartbeats_in",
    "heartbeats_out",
    "commands",
    "command_replies",
    "command_timeouts",
    "errors",
)


class Downlinks:
    """The lots' downlink connections: binds, heartbeats, commands, the idle sweep."""

    def __init__(
        self,
        *,
        config: Config,
        sessions: Sessions,
        passwords: Checker,
        journal: JournalAppend,
        clock: IReactorTime,
        deadlines: Mapping[str, float] | None = None,
        logins_per_turn: int = LOGINS_PER_TURN,
    ) -> None:
        self._config = config
        self._tcp = config.tcp
        self._sessions = sessions
        self._passwords = passwords
        self._journal = journal
        self._clock = clock
        self._zone: ZoneInfo = config.gateway.timezone
        self._deadlines = dict(deadlines or {})
        self._connections: Registry[Connection] = Registry()
        self._outstanding: dict[str, _Pending] = {}
        self._expired: OrderedDict[str, None] = OrderedDict()
        self._logins_per_turn = logins_per_turn
        self._logins_begun = 0  # since the cap was last reached
        # One entry per connection at most (it is BINDING meanwhile); bind_timeout closes it.
        self._logins_waiting: deque[tuple[Connection, Request]] = deque()
        self._turn_call: IDelayedCall | None = None
        self._sweep = LoopingCall(self.sweep)
        self._sweep.clock = clock
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        # Called with the park each time a lot binds a new connection (sync delivery resumes).
        self.bound_listeners: list[Callable[[str], None]] = []
        # Called with the park each time a lot's connection is unbound (lost, replaced, closed).
        self.unbound_listeners: list[Callable[[str], None]] = []

    # the service side

    def factory(self) -> ServerFactory:
        """The factory to listen with (`serverFromString(reactor, listen.downlink).listen`)."""
        return DownlinkFactory(self, self._clock, self._tcp.max_frame_bytes, self._tcp.max_unbound_bytes)

    def start(self) -> None:
        """Start the idle sweep."""
        if not self._sweep.running:
            self._sweep.start(SWEEP_INTERVAL, now=False)

    def stop(self) -> None:
        """Stop the idle sweep."""
        if self._sweep.running:
            self._sweep.stop()

    def disconnect_all(self, reason: str) -> None:
        """Close every connection, journaling each bound lot offline now.

        Called as the gateway stops, before the journal closes: the offline
        records are appended here, not when the connections are finally lost
        (by then the journal no longer takes records).
        """
        for park, connection in self._connections.bound():
            self._unbind(connection, park, reason)
            connection.close(reason)
        for connection in self._connections.unbound():
            connection.close(reason)

    def disconnect(self, park: str, reason: str) -> bool:
        """Close the lot's connection, journaling it offline now; whether it had one.

        A reload that removes the lot or changes its credentials cuts it off this way.
        """
        connection = self._connections.lot(park)
        if connection is None:
            return False
        self._unbind(connection, park, reason)
        connection.close(reason)
        self._fail_outstanding(connection)
        return True

    def reconfigure(self, config: Config) -> None:
        """Take the lots of a reloaded configuration: lookups from now on see `config`.

        Only the lots change: the [tcp] timers and the zone are read at start.
        """
        self._config = config

    def _lot_by_username(self, username: str) -> LotConfig | None:
        """The lot of the account in the running configuration (a reload may change it)."""
        return self._config.lot_by_username(username)

    def seen(self, park: str) -> None:
        """The lot `park` proved itself over HTTP now: its last seen (`state`) is now."""
        self._connections.seen(park, self._clock.seconds())

    def state(self, park: str) -> LotState:
        """The downlink state of the lot `park` (configured or not)."""
        return self._connections.state(park)

    def states(self) -> list[LotState]:
        """The state of every configured lot, in configuration order."""
        return [self.state(lot.park_code) for lot in self._config.lots]

    def bound_parks(self) -> Iterable[str]:
        """The parks with a bound connection now, configured or not: `connected` in their `state`.

        A view of the registry, for counting (`LotRouter.connected_count`): read it before anything changes.
        """
        return self._connections.bound_parks()

    # commands

    def supports(self, park: str, code: str) -> bool:
        """Whether `code` can be sent down: any downlink interface can, in the standard."""
        interface = lookup(code)
        return interface is not None and interface.downlink is not None

    def command(self, park: str, code: str, data: object, opr: str = "") -> Deferred[LotReply]:
        """Send `code` with `data` to the lot now, as oprNum `opr` (a new one if empty); fire with its REPLY.

        The command API passes the oprNum it journaled the command with, so the
        lot's REPLY names the record it answers (CONTRACT §7). Fails at once
        with NotConnected when the lot is not bound, with ValueError when `opr`
        is taken by a command still waiting for its REPLY, and with
        DeadlinePassed when the lot does not reply in time. Never queued.
        """
        interface = lookup(code)
        if interface is None or interface.downlink is None:
            return fail(ValueError(f"{code!r} is not a downlink interface"))
        connection = self._connections.lot(park)
        if connection is None or connection.phase is CLOSING:
            return fail(NotConnected(park))
        lot = self._config.lot_by_park(park)
        secret = lot.secret if lot is not None else ""
        deadline = deadline_of(interface.code, self._deadlines)
        if not opr:
            opr = uuid.uuid4().hex
        elif opr in self._outstanding:
            return fail(ValueError(f"oprNum {opr!r} is already waiting for a reply"))

        def cancel(_: Deferred[LotReply]) -> None:
            pending = self._outstanding.pop(opr, None)
            if pending is not None and pending.timer is not None and pending.timer.active():
                pending.timer.cancel()

        deferred: Deferred[LotReply] = Deferred(cancel)
        pending = _Pending(park, interface.code, connection, deadline, deferred)
        self._outstanding[opr] = pending
        pending.timer = self._clock.callLater(deadline, self._expire, opr)
        self.counters["commands"] += 1
        self._send(connection, ack_frame(interface.code, opr, connection.token, secret, data))
        return deferred

    def _expire(self, opr: str) -> None:
        pending = self._outstanding.pop(opr, None)
        if pending is None:
            return
        self.counters["command_timeouts"] += 1
        self._expired[opr] = None
        if len(self._expired) > _EXPIRED_KEPT:
            self._expired.popitem(last=False)
        pending.deferred.errback(DeadlinePassed(pending.park, pending.code, pending.deadline))

    def _fail_outstanding(self, connection: Connection) -> None:
        # Commands are rare: a scan of the outstanding ones is cheaper than a set per connection.
        for opr, pending in list(self._outstanding.items()):
            if pending.connection is connection:
                del self._outstanding[opr]
                if pending.timer is not None and pending.timer.active():
                    pending.timer.cancel()
                pending.deferred.errback(NotConnected(pending.park))

    # the idle sweep (B.3.4)

    def sweep(self) -> None:
        """Close idle and unbound connections and heartbeat quiet ones: one pass over all of them."""
        now = self._clock.seconds()
        bind_by = now - self._tcp.bind_timeout
        for connection in self._connections.unbound():
            if connection.opened <= bind_by and connection.phase is not CLOSING:
                self.counters["closed_unbound"] += 1
                connection.close("not bound within bind_timeout")
        tcp = self._tcp
        # Thresholds computed once, so each connection costs two comparisons when all is well.
        never = float("-inf")
        read_by = now - tcp.read_idle if tcp.read_idle else never
        all_by = now - tcp.all_idle if tcp.all_idle else never
        write_by = now - tcp.write_idle if tcp.write_idle else never
        idle: list[tuple[Connection, str]] = []
        quiet: list[Connection] = []
        for connection in self._connections.bound_connections():
            read, written = connection.last_read, connection.last_write
            if read <= read_by:
                idle.append((connection, f"nothing received for {tcp.read_idle} s (read_idle)"))
            elif read <= all_by and written <= all_by:
                idle.append((connection, f"nothing received or sent for {tcp.all_idle} s (all_idle)"))
            elif written <= write_by:
                quiet.append(connection)
        for connection, reason in idle:
            if connection.phase is not CLOSING:
                self.counters["closed_idle"] += 1
                connection.close(reason)
        for connection in quiet:
            self._heartbeat(connection)

    def _heartbeat(self, connection: Connection) -> None:
        lot = self._config.lot_by_park(connection.park or "")
        secret = lot.secret if lot is not None else ""
        self.counters["heartbeats_out"] += 1
        self._send(connection, ack_frame("heartbeat", uuid.uuid4().hex, connection.token, secret, {}))

    # events from the connections (FrameHandler)

    def connection_made(self, connection: Connection) -> None:
        self.counters["connections"] += 1
        self._connections.opened(connection)

    def garbage_received(self, connection: Connection, count: int) -> None:
        self.counters["garbage_bytes"] += count

    def too_large(self, connection: Connection, event: FrameTooLarge) -> None:
        self.counters["closed_oversize"] += 1
        reason = f"frame larger than max_frame_bytes ({event.limit})"
        self._rejected(connection, "", Answer.of(Result.MALFORMED, f"{reason}; closing the connection"))
        connection.close(reason)

    def unbound_overflow(self, connection: Connection, limit: int) -> None:
        self.counters["closed_unbound_bytes"] += 1
        reason = f"more than max_unbound_bytes ({limit}) received before a bind"
        self._rejected(connection, "", Answer.of(Result.MALFORMED, f"{reason}; closing the connection"))
        connection.close(reason)

    def frame_failed(self, connection: Connection, failure: Failure) -> None:
        self.counters["errors"] += 1
        log.failure("handling a frame from {peer} failed", failure, peer=connection.peer)

    def malformed_received(self, connection: Connection, error: EnvelopeError) -> None:
        self.counters["frames_in"] += 1
        if connection.phase is BINDING:
            self._queue(connection, error)
        else:
            self._malformed(connection, error)

    def reply_received(self, connection: Connection, reply: Reply) -> None:
        self.counters["frames_in"] += 1
        if connection.phase is BINDING:
            self._queue(connection, reply)
        else:
            self._reply(connection, reply)

    def request_received(self, connection: Connection, request: Request) -> None:
        self.counters["frames_in"] += 1
        if connection.phase is BINDING:
            self._queue(connection, request)
        else:
            self._request(connection, request)

    def _malformed(self, connection: Connection, error: EnvelopeError) -> None:
        if connection.park is not None and not self._token_in_force(connection, error.code, error.opr):
            return
        self.counters["bad_frames"] += 1
        answer = Answer.of(error.result, error.detail)
        if error.opr:
            self._answer(connection, error.code, error.opr, answer)
        else:
            self._rejected(connection, error.code, answer)  # not answered: no oprNum to answer to

    def _reply(self, connection: Connection, reply: Reply) -> None:
        if connection.park is None:
            self._refuse_unbound(connection, reply.code, reply.opr)
            return
        if not self._token_in_force(connection, reply.code, reply.opr):
            return
        pending = self._outstanding.get(reply.opr)
        if pending is None or pending.connection is not connection:
            if reply.opr in self._expired:
                self.counters["late_replies"] += 1
            elif reply.code != "heartbeat":
                # The lot's answers to the gateway's heartbeats are not tracked.
                self.counters["unmatched_replies"] += 1
            return
        lot = self._config.lot_by_park(pending.park)
        if lot is not None and not signature_ok(
            lot.signature, reply.signature, reply.data_text, reply.data, connection.token, lot.secret
        ):
            self.counters["bad_signatures"] += 1
            log.warn("dropped a reply from {park} with a wrong signature", park=pending.park)
            return
        del self._outstanding[reply.opr]
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        self.counters["command_replies"] += 1
        pending.deferred.callback(LotReply(reply.result_code, reply.result_message, reply.data))

    def _request(self, connection: Connection, request: Request) -> None:
        interface = lookup(request.code) if request.code else None
        code = interface.code if interface is not None else request.code
        if code == "login":
            self._login(connection, request)
        elif code == "heartbeat":
            self.counters["heartbeats_in"] += 1
            if connection.park is None:
                self._bind_by_token(connection, request)
            else:
                self._bound_heartbeat(connection, request)
        elif connection.park is None:
            self._refuse_unbound(connection, code, request.opr)
        elif not self._token_in_force(connection, code, request.opr):
            return
        elif interface is None:
            detail = f"code: {request.code!r} is not an interface" if request.code else "code: required"
            self._answer(connection, code, request.opr, Answer.of(Result.NO_SUCH_INTERFACE, detail))
        elif interface.uplink is not None:
            detail = f"code: {code!r} is an uplink: send it over HTTP (POST /uplink), not on the downlink"
            self._answer(connection, code, request.opr, Answer.of(Result.NO_SUCH_INTERFACE, detail))
        else:
            detail = f"code: {code!r} is sent by the gateway to the lot, not by the lot"
            self._answer(connection, code, request.opr, Answer.of(Result.NO_SUCH_INTERFACE, detail))

    def _token_in_force(self, connection: Connection, code: str, opr: str) -> bool:
        """Whether the token a bound connection holds is still in force; if not, answer 9000 and close.

        A newer login of the account replaces the token, a reload that removes
        or changes the lot revokes it, and the month's end expires it: from
        then on the connection speaks for no one (CONTRACT §5).
        """
        session = self._sessions.lookup(connection.token)
        if session is not None and session.park == connection.park:
            return True
        self.counters["closed_token"] += 1
        answer = Answer.of(Result.TOKEN_INVALID, "token: replaced by a newer login, revoked or expired")
        if self._sessions.expired(connection.token):
            # The month's end (B.3.6): every lot meets it together, and it is no refusal of the
            # lot's doing. One line says it, the lot.offline below; no lot.rejected beside it.
            self._answer(connection, code, opr, answer, logged=False)
            connection.close("its token expired (the month's end)")
        else:
            self._answer(connection, code, opr, answer)
            connection.close("its token was replaced, revoked or expired")
        return False

    def connection_lost(self, connection: Connection, reason: Failure) -> None:
        self._connections.forget(connection)
        connection.queued = None
        park = connection.park
        if park is not None and self._connections.holds(connection, park):
            why = connection.close_reason or f"closed by the lot: {reason.getErrorMessage()}"
            self._unbind(connection, park, why)
        self._fail_outstanding(connection)

    # binding

    def _queue(self, connection: Connection, event: Request | Reply | EnvelopeError) -> None:
        queued = connection.queued
        if queued is None:
            queued = connection.queued = []
        if len(queued) >= MAX_QUEUED:
            connection.close("too many frames before the login completed")
            return
        queued.append(event)

    def _refuse_unbound(self, connection: Connection, code: str, opr: str) -> None:
        self.counters["bind_failures"] += 1
        answer = Answer.of(Result.TOKEN_INVALID, "bind first with login or heartbeat")
        self._answer(connection, code, opr, answer)
        connection.close("first frame was neither login nor heartbeat")

    def _login(self, connection: Connection, request: Request) -> None:
        # BINDING from now: the lot's next frames wait for the login (MAX_QUEUED of them).
        connection.phase = BINDING
        if self._turn_call is not None:
            self._logins_waiting.append((connection, request))  # the cap is reached: next turn
            return
        self._begin_login(connection, request)
        self._logins_begun += 1
        if self._logins_begun >= self._logins_per_turn:
            self._turn_call = self._clock.callLater(0, self._next_turn)

    def _next_turn(self) -> None:
        """A new turn of the reactor: begin the logins that waited, up to the cap.

        The count starts again only once the cap was reached: at a few logins a
        second every `logins_per_turn`-th waits one turn, which costs nothing.
        """
        self._turn_call = None
        self._logins_begun = 0
        waiting = self._logins_waiting
        while waiting and self._logins_begun < self._logins_per_turn:
            connection, request = waiting.popleft()
            if connection.phase is CLOSING:
                continue  # gone (or closed by the bind timeout) while it waited
            self._begin_login(connection, request)
            self._logins_begun += 1
        if self._logins_begun >= self._logins_per_turn:
            self._turn_call = self._clock.callLater(0, self._next_turn)

    def _begin_login(self, connection: Connection, request: Request) -> None:
        outcome = login(
            request,
            config=self._config,
            sessions=self._sessions,
            passwords=self._passwords,
            journal=self._journal,
            via="TCP",
            configured=self._lot_by_username,
            # A connection lost while its login waits for a password check drops the check.
            gone=lambda: connection.phase is CLOSING,
            # Its lot.online line says it: "bound from {peer} by login".
            logged=False,
        )
        outcome.addCallback(self._logged_in, connection, request)
        outcome.addErrback(self._login_failed, connection)

    def _logged_in(self, outcome: LoginOutcome, connection: Connection, request: Request) -> None:
        connection.settle()
        queued, connection.queued = connection.queued, None
        if connection.phase is CLOSING:
            return
        lot = outcome.lot
        secret = lot.secret if lot is not None else ""
        park = lot.park_code if lot is not None else None
        self._answer(connection, "login", request.opr, outcome.answer, token="", secret=secret, park=park)
        if outcome.answer.result is not Result.OK or lot is None:
            if connection.park is None:
                self.counters["bind_failures"] += 1
                connection.close(f"login refused: {outcome.answer.message}")
            return
        self._bind(connection, lot, outcome.token, "login")
        for event in queued or ():
            if connection.phase is CLOSING:
                break
            try:
                if isinstance(event, Reply):
                    self._reply(connection, event)
                elif isinstance(event, Request):
                    self._request(connection, event)
                else:
                    self._malformed(connection, event)
            except Exception:
                self.frame_failed(connection, Failure())

    def _login_failed(self, failure: Failure, connection: Connection) -> None:
        connection.settle()
        connection.queued = None
        self.frame_failed(connection, failure)
        connection.close("login failed inside the gateway")

    def _bind_by_token(self, connection: Connection, request: Request) -> None:
        session = self._sessions.lookup(request.token)
        lot = self._config.lot_by_username(session.username) if session is not None else None
        if session is None or lot is None or lot.park_code != session.park:
            self.counters["bind_failures"] += 1
            answer = Answer.of(Result.TOKEN_INVALID, "token: unknown, replaced or expired")
            park = session.park if session is not None else None
            self._answer(connection, "heartbeat", request.opr, answer, park=park)
            connection.close("heartbeat with an invalid token")
            return
        # The token travels in clear in every uplink; the secret never does. So for a
        # lot whose signature is required, a bind by token alone would let anyone who
        # saw one uplink take the lot's downlink: the binding heartbeat must be signed.
        if not signature_ok(
            lot.signature, request.signature, request.data_text, request.data, request.token, lot.secret
        ):
            self.counters["bind_failures"] += 1
            self.counters["bad_signatures"] += 1
            detail = "signature: required to bind, and missing" if not request.signature else ""
            answer = Answer.of(Result.BAD_SIGNATURE, detail or "signature: does not match data")
            # Signed without the secret: a signature over the answer's `{}` would be the one
            # a heartbeat with `data: {}` needs to bind.
            self._answer(connection, "heartbeat", request.opr, answer, request.token, "", park=lot.park_code)
            connection.close("heartbeat with a wrong signature")
            return
        self._bind(connection, lot, request.token, "heartbeat")
        self._answer_time(connection, request.opr, request.token, lot.secret)

    def _bound_heartbeat(self, connection: Connection, request: Request) -> None:
        lot = self._config.lot_by_park(connection.park or "")
        secret = lot.secret if lot is not None else ""
        adopt = bool(request.token) and request.token != connection.token
        if adopt:
            # The lot logged in again (over HTTP): its ACKs must carry the new token.
            session = self._sessions.lookup(request.token)
            if session is None or session.park != connection.park:
                answer = Answer.of(Result.TOKEN_INVALID, "token: unknown, replaced or expired")
                self._answer(connection, "heartbeat", request.opr, answer)
                connection.close("heartbeat with an invalid token")
                return
        elif not self._token_in_force(connection, "heartbeat", request.opr):
            return
        if lot is not None and not signature_ok(
            lot.signature,
            request.signature,
            request.data_text,
            request.data,
            request.token,
            lot.secret,
            optional=True,
        ):
            self.counters["bad_signatures"] += 1
            answer = Answer.of(Result.BAD_SIGNATURE, "signature: does not match data")
            self._answer(connection, "heartbeat", request.opr, answer)
            return
        if adopt:
            connection.token = request.token
        self._answer_time(connection, request.opr, connection.token, secret)

    def _answer_time(self, connection: Connection, opr: str, token: str, secret: str) -> None:
        answer = Answer.of(Result.OK, data={"time": wire_time(self._clock.seconds(), self._zone)})
        self._answer(connection, "heartbeat", opr, answer, token, secret)

    def _bind(self, connection: Connection, lot: LotConfig, token: str, how: str) -> None:
        park = lot.park_code
        previous_park = connection.park
        if (
            previous_park is not None
            and previous_park != park
            and self._connections.holds(connection, previous_park)
        ):
            # The same connection logged in as another lot: it leaves the first one.
            self._unbind(connection, previous_park, f"the connection logged in as {park}")
            self._fail_outstanding(connection)
        old = self._connections.lot(park)
        if old is not None and old is not connection:
            self.counters["replaced"] += 1
            old.park = None
            self._unbind(old, park, f"replaced by a new connection from {connection.peer}")
            old.close("replaced by a newer connection of the same lot")
            self._fail_outstanding(old)
        self._connections.forget(connection)
        connection.token = token
        if old is connection:
            return
        connection.park = park
        connection.bound_at = self._clock.seconds()
        if connection.phase is not CLOSING:
            connection.phase = BOUND
        self._connections.bind(connection, park)
        self.counters["binds"] += 1
        log.info(
            "lot {park} bound from {peer} by {how}",
            event="lot.online",
            park=park,
            peer=connection.peer,
            how=how,
            dialect=STANDARD,
        )
        record_connection(self._journal, ONLINE_RECORD, park, connection.peer, how)
        for listener in self.bound_listeners:
            try:
                listener(park)
            except Exception:
                log.failure("a bound listener failed for lot {park}", park=park)

    def _unbind(self, connection: Connection, park: str, reason: str) -> None:
        self._connections.release(connection, park)
        log.info(
            "lot {park} unbound from {peer}: {reason}",
            event="lot.offline",
            park=park,
            peer=connection.peer,
            reason=reason,
            dialect=STANDARD,
        )
        record_connection(self._journal, OFFLINE_RECORD, park, connection.peer, reason)
        for listener in self.unbound_listeners:
            try:
                listener(park)
            except Exception:
                log.failure("an unbound listener failed for lot {park}", park=park)

    # writing

    def _answer(
        self,
        connection: Connection,
        code: str,
        opr: str,
        answer: Answer,
        token: str | None = None,
        secret: str | None = None,
        park: str | None = None,
        logged: bool = True,
    ) -> None:
        """Send a response frame; one other than 0000 is logged (lot.rejected) as the lot `park`'s
        unless `logged` is false (the caller logs the event its own way).

        `park` defaults to the connection's lot.
        """
        if answer.result is not RESULT_OK and logged:
            self._rejected(connection, code, answer, park)
        if token is None:
            token = connection.token
        if secret is None:
            lot = self._config.lot_by_park(connection.park) if connection.park else None
            secret = lot.secret if lot is not None else ""
        text = build_response(code, opr, answer.result, answer.message, answer.data, token, secret)
        self._send(connection, encode_json_frame(text.decode("utf-8")))

    def _rejected(self, connection: Connection, code: str, answer: Answer, park: str | None = None) -> None:
        lot_rejected(
            log,
            park=(connection.park if park is None else park) or "",
            peer=connection.peer,
            code=code,
            result=answer.result.code,
            reason=answer.message,
            dialect=STANDARD,
            via="tcp",
        )

    def _send(self, connection: Connection, frame: bytes) -> None:
        if connection.phase is CLOSING:
            return
        self.counters["frames_out"] += 1
        connection.send(frame)


def record_connection(journal: JournalAppend, kind: str, park: str, peer: str, reason: str) -> None:
    """Journal a lot going online or offline (`kind`), from `peer`, and why; for every dialect.

    These records are facts to forward, not promises: nothing waits on them, and
    a journal that refuses one is logged, not raised.
    """
    try:
        stored = journal.append(kind, park, "", "", {"peer": peer, "reason": reason})
    except Exception:
        log.failure("the journal refused a {kind} record", kind=kind)
        return
    stored.addErrback(
        lambda failure: log.failure("the journal could not store a {kind} record", failure, kind=kind)
    )
