"""A scripted TCP connection for the framing checks: send any bytes, watch every frame and the close.

`FrameProbe` is a lot's connection with nothing automatic in it: no bind, no
heartbeats, no replies. The kit writes what a check needs (a frame in pieces,
garbage, an oversize frame) and waits for a matching frame or for the platform
to close the connection. Payloads are kept as they arrived, escapes included.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from gateway.protocol.envelope import request_text
from gateway.protocol.framing import FrameDecoder, FrameTooLarge, encode_json_frame

__all__ = ["Frame", "FrameProbe", "connect_probe"]

Frame = dict[str, Any]
"""A frame's payload parsed as JSON (an object); a payload that is not one is kept as {"": text}."""


class FrameProbe(Protocol):
    """Records each frame from the platform; `expect` and `closed_within` wait on them."""

    def __init__(self, clock: IReactorTime, max_frame_bytes: int = 2**24) -> None:
        self.clock = clock
        self.payloads: list[bytes] = []
        self.frames: list[Frame] = []
        self.lost = False
        self._decoder = FrameDecoder(max_frame_bytes)
        self._waiters: list[tuple[Callable[[Frame], bool], Deferred[Frame | None], IDelayedCall]] = []
        self._close_waiters: list[tuple[Deferred[bool], IDelayedCall]] = []

    # --- events --------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        for event in self._decoder.feed(data):
            if isinstance(event, FrameTooLarge):
                return
            self.payloads.append(event)
            try:
                frame = json.loads(event.decode("utf-8"))
            except ValueError:
                frame = {"": event.decode("utf-8", "replace")}
            if not isinstance(frame, dict):
                frame = {"": event.decode("utf-8", "replace")}
            self.frames.append(frame)
            for waiter in list(self._waiters):
                match, deferred, timer = waiter
                if match(frame) and waiter in self._waiters:
                    self._waiters.remove(waiter)
                    timer.cancel()
                    deferred.callback(frame)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        waiters, self._close_waiters = self._close_waiters, []
        for deferred, timer in waiters:
            timer.cancel()
            deferred.callback(True)
        pending, self._waiters = self._waiters, []
        for _, frame_waiter, frame_timer in pending:
            frame_timer.cancel()
            frame_waiter.callback(None)

    # --- writing -------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Write raw bytes (nothing is written once the connection is lost)."""
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def request(self, code: str, opr: str, token: str, secret: str, data: object) -> bytes:
        """Write a request envelope as one frame, signed and escaped; return the frame."""
        frame = encode_json_frame(request_text(code, opr, token, secret, data))
        self.write(frame)
        return frame

    def close(self) -> None:
        """Close the connection."""
        if self.transport is not None and not self.lost:
            self.transport.loseConnection()

    # --- waiting -------------------------------------------------------

    def expect(
        self, match: Callable[[Frame], bool], timeout: float, seen: bool = True
    ) -> Deferred[Frame | None]:
        """The first frame `match` accepts (one already received too, when `seen`), or None
        after `timeout` seconds or when the connection is lost first."""
        if seen:
            for frame in self.frames:
                if match(frame):
                    return succeed(frame)
        if self.lost:
            return succeed(None)
        deferred: Deferred[Frame | None] = Deferred()

        def expired() -> None:
            for waiter in list(self._waiters):
                if waiter[1] is deferred:
                    self._waiters.remove(waiter)
                    deferred.callback(None)

        self._waiters.append((match, deferred, self.clock.callLater(timeout, expired)))
        return deferred

    def answer_to(self, opr: str, timeout: float) -> Deferred[Frame | None]:
        """The response envelope (a frame with a resultCode) to the request `opr`."""
        return self.expect(lambda frame: "resultCode" in frame and frame.get("oprNum") == opr, timeout)

    def closed_within(self, timeout: float) -> Deferred[bool]:
        """True once the connection is lost, False if it is still open after `timeout` seconds."""
        if self.lost:
            return succeed(True)
        deferred: Deferred[bool] = Deferred()

        def expired() -> None:
            for waiter in list(self._close_waiters):
                if waiter[0] is deferred:
                    self._close_waiters.remove(waiter)
                    deferred.callback(False)

        self._close_waiters.append((deferred, self.clock.callLater(timeout, expired)))
        return deferred


class _ProbeFactory(Factory):
    noisy = False

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock

    def buildProtocol(self, addr: IAddress | None) -> FrameProbe:
        return FrameProbe(self.clock)


async def connect_probe(endpoint: IStreamClientEndpoint, clock: IReactorTime) -> FrameProbe:
    """A new probe connected through `endpoint`."""
    connected: Deferred[Any] = endpoint.connect(_ProbeFactory(clock))
    probe = await connected
    assert isinstance(probe, FrameProbe)
    return probe
