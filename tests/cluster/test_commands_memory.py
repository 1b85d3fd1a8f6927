"""NatsCommands in memory: which lots it answers for, and what it holds (no nats-server)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from gateway.cluster.commands import STATUS_HEADER, NatsCommands
from gateway.interfaces import NotConnected


class Subscription:
    def __init__(self, nats: FakeNats, subject: str, cb: Callable[[Any], Awaitable[None]]) -> None:
        self.nats = nats
        self.subject = subject
        self.cb = cb

    async def unsubscribe(self) -> None:
        self.nats.subscriptions.remove(self)


class FakeNats:
    """The connection's bridges, run at once (or held while `hold`), with a client that records."""

    def __init__(self) -> None:
        self.state = "connected"
        self.state_observers: list[Callable[[str], None]] = []
        self.subscriptions: list[Subscription] = []
        self.published: list[tuple[str, bytes, dict[str, str]]] = []
        self.hold = False
        self.held: list[tuple[Deferred[Any], Callable[[Any, Any], Awaitable[Any]]]] = []

    async def subscribe(self, subject: str, cb: Callable[[Any], Awaitable[None]]) -> Subscription:
        subscription = Subscription(self, subject, cb)
        self.subscriptions.append(subscription)
        return subscription

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        self.published.append((subject, payload, headers))

    def run(self, fn: Callable[[Any, Any], Awaitable[Any]]) -> Deferred[Any]:
        if self.hold:
            waiting: Deferred[Any] = Deferred()
            self.held.append((waiting, fn))
            return waiting
        return Deferred.fromCoroutine(fn(self, None))  # type: ignore[arg-type]

    def release(self) -> None:
        held, self.held = self.held, []
        for waiting, fn in held:
            Deferred.fromCoroutine(fn(self, None)).chainDeferred(waiting)  # type: ignore[arg-type]

    def to_reactor(self, f: Callable[..., object], *args: object) -> None:
        f(*args)

    def subjects(self) -> list[str]:
        return [subscription.subject for subscription in self.subscriptions]

    def deliver(self, subject: str, data: bytes, reply: str = "_INBOX.1") -> None:
        """A message on `subject`, to every subscription whose wildcard takes it."""
        for subscription in list(self.subscriptions):
            if subject.startswith(subscription.subject[:-1]):
                msg = type("Msg", (), {"subject": subject, "data": data, "reply": reply, "headers": None})
                Deferred.fromCoroutine(subscription.cb(msg))  # type: ignore[arg-type]


class Path:
    """The command path: each request waits until answered by the test."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, bytes, dict[str, str]]] = []
        self.waiting: list[Deferred[tuple[int, dict[str, object]]]] = []

    def request(
        self, park: str, code: str, raw: bytes, *, client: str, opr: str, via: str
    ) -> Deferred[tuple[int, dict[str, object]]]:
        self.asked.append((park, code, raw, {"client": client, "opr": opr, "via": via}))
        answer: Deferred[tuple[int, dict[str, object]]] = Deferred()
        self.waiting.append(answer)
        return answer


def make(max_in_flight: int = 1024) -> tuple[NatsCommands, FakeNats, Path]:
    nats, path = FakeNats(), Path()
    commands = NatsCommands(
        connection=nats,
        commands=path,
        clock=Clock(),
        prefix="cpmi",
        gateway_id="gw-1",
        deadline=lambda code: 2.0,
        max_in_flight=max_in_flight,
    )
    return commands, nats, path


def test_a_lot_is_answered_for_from_its_bind_to_its_unbind() -> None:
    """Binding subscribes to the lot's commands, unbinding unsubscribes: no other subject is taken."""
    commands, nats, _ = make()
    commands.lot_bound("P001")
    assert nats.subjects() == ["cpmi.commands.P001.>"]
    commands.lot_bound("P001")
    assert nats.subjects() == ["cpmi.commands.P001.>"]
    commands.lot_unbound("P001")
    assert nats.subjects() == []


def test_a_lot_that_leaves_before_its_subscription_is_made_is_not_left_subscribed() -> None:
    """Bound then unbound while the subscribe is on its way: the subscription is undone once made."""
    commands, nats, _ = make()
    nats.hold = True
    commands.lot_bound("P001")
    commands.lot_unbound("P001")
    nats.hold = False
    nats.release()
    assert nats.subjects() == [] and commands.subscribed() == frozenset()


def test_a_request_is_answered_with_its_status_header_and_a_publish_is_ignored() -> None:
    """A request goes down the command path with the code from its subject and the reply goes back with
    Cpmi-Status; a message without a reply subject (a publish) is not taken."""
    commands, nats, path = make()
    commands.lot_bound("P001")
    nats.deliver("cpmi.commands.P001.gateOpen", b"{}", reply="")
    assert path.asked == []
    nats.deliver("cpmi.commands.P001.gateOpen", b'{"barCode":"G1"}')
    assert path.asked == [
        ("P001", "gateOpen", b'{"barCode":"G1"}', {"client": "nats", "opr": "", "via": "nats"})
    ]
    path.waiting[0].callback((200, {"resultCode": "0000", "resultMessage": "ok", "data": None}))
    [(subject, payload, headers)] = nats.published
    assert subject == "_INBOX.1" and headers == {STATUS_HEADER: "200"}
    assert json.loads(payload)["resultCode"] == "0000"


def test_a_request_that_arrives_after_the_lot_left_gets_no_answer() -> None:
    """A request handed over just as the lot left is not answered: silence, as from a gateway without it."""
    commands, nats, path = make()
    commands.lot_bound("P001")
    nats.hold = True
    commands.lot_unbound("P001")  # the unsubscribe is still on its way
    nats.hold = False
    for subscription in list(nats.subscriptions):
        msg = type("Msg", (), {"subject": "cpmi.commands.P001.gateOpen", "data": b"{}", "reply": "r"})
        msg.headers = None  # type: ignore[attr-defined]
        Deferred.fromCoroutine(subscription.cb(msg))  # type: ignore[arg-type]
    assert path.asked == [] and nats.published == []


def test_requests_in_flight_are_capped_and_the_rest_answered_busy_at_once() -> None:
    """Past max_in_flight a request is answered 9999 (status 503) at once and never reaches the path;
    once one in flight is answered, the next is taken again."""
    commands, nats, path = make(max_in_flight=2)
    commands.lot_bound("P001")
    for _ in range(3):
        nats.deliver("cpmi.commands.P001.gateOpen", b"{}")
    assert len(path.asked) == 2 and commands.in_flight == 2
    [(_, payload, headers)] = nats.published
    assert headers == {STATUS_HEADER: "503"} and json.loads(payload)["resultCode"] == "9999"
    assert "in flight" in json.loads(payload)["resultMessage"]
    path.waiting[0].callback((200, {"resultCode": "0000", "resultMessage": "ok", "data": None}))
    assert commands.in_flight == 1
    nats.deliver("cpmi.commands.P001.gateOpen", b"{}")
    assert len(path.asked) == 3


def test_asking_while_nats_is_not_connected_fails_not_connected() -> None:
    """With NATS reconnecting, asking for a lot held elsewhere fails NotConnected at once (409)."""
    commands, nats, _ = make()
    nats.state = "reconnecting"
    failures: list[Any] = []
    commands.ask("P001", "gateOpen", {}, "opr1", "cloud").addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(NotConnected)
