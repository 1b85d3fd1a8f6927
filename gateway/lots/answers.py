"""What the gateway answers a lot: a result, its message and the response `data`."""

from __future__ import annotations

from attrs import field, frozen

from gateway.protocol.results import Result


@frozen
class Answer:
    """The business part of a response envelope; the header is added when it is sent."""

    result: Result
    message: str
    data: object = field(factory=dict)

    @classmethod
    def of(cls, result: Result, detail: str = "", data: object = None) -> Answer:
        """An answer whose message is the result's text followed by `detail`."""
        return cls(result, result.message(detail), {} if data is None else data)


OK = Answer(Result.OK, Result.OK.text)
