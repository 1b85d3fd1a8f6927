"""Fuzzing the uplink's llhttp channel: how the bytes are cut changes nothing, and no input breaks it."""

from __future__ import annotations

import re

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gateway.lots.http import UplinkChannel, UplinkEndpoint, UplinkSite

STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Echo:
    """An uplink handler answering each request with its text: at once, or (`later`) on `answer()`."""

    def __init__(self, later: bool = False) -> None:
        self.texts: list[str] = []
        self.later = later
        self.pending: list[tuple[Deferred[bytes], bytes]] = []

    def handle(
        self, text: str, url_code: str | None = None, files: object = (), gone: object = None
    ) -> Deferred[bytes]:
        self.texts.append(text)
        body = text.encode("utf-8", "surrogatepass")
        if not self.later:
            return succeed(body)
        answer: Deferred[bytes] = Deferred()
        self.pending.append((answer, body))
        return answer

    def answer(self) -> None:
        """Answer what waits, as a journal's commit would, until nothing does (answering lets the
        channel read what it held, which may bring more)."""
        while self.pending:
            d, body = self.pending.pop(0)
            d.callback(body)


def connect(handler: Echo) -> tuple[UplinkChannel, StringTransport]:
    site = UplinkSite(UplinkEndpoint(handler, 4096), reactor=Clock())  # type: ignore[arg-type]
    channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def feed(data: bytes, cuts: list[int], answers: list[bool] | None = None) -> tuple[Echo, StringTransport]:
    """`data` given to a new channel in pieces ending at `cuts` (offsets into it), then the rest.

    With `answers`, the handler answers late: after the n-th read only if `answers[n]` (cycled) is
    true, and at the end whatever still waits. Reads that come while a request waits are held.
    """
    handler = Echo(later=answers is not None)
    channel, transport = connect(handler)
    start = 0
    for n, cut in enumerate([*sorted({c % (len(data) + 1) for c in cuts}), len(data)]):
        channel.dataReceived(data[start:cut])
        start = cut
        if answers and answers[n % len(answers)]:
            handler.answer()
    handler.answer()
    return handler, transport


def framed(out: bytes, transport: StringTransport) -> list[bytes]:
    """The statuses of the answers in `out`, each checked whole: a status line, Content-Length and that
    many bytes, and nothing after an answer that closes the connection (100 Continue aside)."""
    statuses, at = [], 0
    while at < len(out):
        if out.startswith(CONTINUE, at):
            at += len(CONTINUE)
            continue
        status = STATUS.match(out, at)
        assert status, out[at : at + 40]
        end = out.index(b"\r\n\r\n", at) + 4
        length = re.search(rb"Content-Length: (\d+)\r\n", out[at:end])
        assert length is not None
        at = end + int(length.group(1))
        assert at <= len(out)
        statuses.append(status.group(1))
        if b"Connection: close\r\n" in out[status.start() : end]:
            assert at == len(out) and transport.disconnecting
    return statuses


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One well-formed uplink request: a form or raw JSON, by Content-Length or chunked."""
    text = draw(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40))
    body = draw(st.sampled_from([b"param=", b""])) + text.encode()
    head = b"POST /uplink HTTP/1.1\r\nHost: gw\r\n"
    if body.startswith(b"param="):
        head += b"Content-Type: application/x-www-form-urlencoded\r\n"
        body = b"param=" + body[6:].replace(b"%", b"%25").replace(b"&", b"%26").replace(b"+", b"%2B")
    if draw(st.booleans()):
        sizes = draw(st.lists(st.integers(1, 8), max_size=6))
        chunks, at = [], 0
        for size in sizes:
            piece = body[at : at + size]
            if piece:
                chunks.append(b"%x\r\n%s\r\n" % (len(piece), piece))
            at += size
        if at < len(body):
            chunks.append(b"%x\r\n%s\r\n" % (len(body) - at, body[at:]))
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(chunks) + b"0\r\n\r\n"
    return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


@settings(max_examples=300)
@given(
    st.lists(requests(), min_size=1, max_size=4),
    st.lists(st.integers(0, 10**6), max_size=12),
    st.none() | st.lists(st.booleans(), min_size=1, max_size=6),
)
def test_any_cut_of_pipelined_requests_gets_the_same_answers(
    pipelined: list[bytes], cuts: list[int], answers: list[bool] | None
) -> None:
    """Requests sent together are handled and answered in order, however the bytes arrive in reads and
    whether each is answered at once or only after later reads have come (and been held)."""
    data = b"".join(pipelined)
    whole, whole_transport = feed(data, [])
    cut, cut_transport = feed(data, cuts, answers)
    assert len(whole.texts) == len(pipelined)
    assert cut.texts == whole.texts
    assert framed(cut_transport.value(), cut_transport) == [b"200"] * len(pipelined)
    assert not cut_transport.disconnecting
    assert cut_transport.value() == whole_transport.value()  # Date too: both clocks stand at 0


FRAGMENTS = [
    b"POST /uplink HTTP/1.1\r\n",
    b"GET / HTTP/1.0\r\n",
    b"Host: gw\r\n",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"X: " + b"y" * 300 + b"\r\n",
    b"\r\n",
    b"\n",
    b"0\r\n\r\n",
    b"ff\r\n",
    b"12",
    b"param=%7B%7D",
    b"\x00",
    b" ",
    b":",
]


@settings(max_examples=500)
@given(
    st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=8), max_size=80).map(b"".join),
    st.lists(st.integers(0, 10**6), max_size=12),
    st.none() | st.lists(st.booleans(), min_size=1, max_size=6),
)
def test_no_input_breaks_the_channel(data: bytes, cuts: list[int], answers: list[bool] | None) -> None:
    """Whatever arrives, in whatever reads: no exception, no 500, and every answer is a whole HTTP answer
    (status, Content-Length, that many bytes), with nothing written after one that closes."""
    assume(b"HEAD" not in data)  # its answer has a Content-Length and no body
    _, transport = feed(data, cuts, answers)
    assert b"500" not in framed(transport.value(), transport)
