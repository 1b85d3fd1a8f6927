"""Fuzzing the TCP frame decoder and what follows it: any bytes, any split, a protocol answer, linear work."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol.envelope import EnvelopeError, Reply, Request, parse_frame
from gateway.protocol.framing import FrameDecoder, FrameTooLarge
from gateway.protocol.results import Result
from tests.fuzz.ops import decoder_ops
from tests.fuzz.strategies import hostile_text

# Bytes that matter to the decoder, and a filler.
framing_bytes = st.lists(st.sampled_from([b"$", b"#", b"*", b"a", b"$$", b"##", b"##*"]), max_size=200).map(
    b"".join
)


def reference(stream: bytes) -> list[bytes]:
    """The frames of `stream` by the rules of §5, a byte at a time (slow, plain, no size limit).

    A frame opens at `$$`; a `$$` inside it reopens it there (so `$$$` opens at
    the last pair); `##` ends it; a lone `#` breaks it. Bytes outside frames
    are skipped.
    """
    frames: list[bytes] = []
    opener: int | None = None
    k = 0
    while k < len(stream):
        if opener is None:
            if stream[k : k + 2] == b"$$":
                opener = k
                k += 1
            else:
                k += 1
            continue
        if stream[k : k + 2] == b"$$":
            opener = k
            k += 1
        elif stream[k] == ord("#") and k >= opener + 2:
            if k + 1 == len(stream):
                break
            if stream[k + 1] == ord("#"):
                frames.append(stream[opener + 2 : k])
                k += 2
            else:
                k += 1
            opener = None
        else:
            k += 1
    return frames


def _cut(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(stream) + 1) for cut in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in pairwise(points)]


@given(framing_bytes, st.lists(st.integers(0, 1000), max_size=20))
@settings(max_examples=500)
def test_decoder_agrees_with_the_plain_reference_in_any_split(stream: bytes, cuts: list[int]) -> None:
    """The fast decoder finds exactly the frames the byte-at-a-time reading does, however split."""
    decoder = FrameDecoder(1 << 20)
    frames: list[bytes | FrameTooLarge] = []
    for chunk in _cut(stream, cuts):
        frames.extend(decoder.feed(chunk))
    assert frames == reference(stream)
    assert decoder.buffered_bytes <= len(stream)


@given(
    st.binary(max_size=400) | framing_bytes, st.lists(st.integers(0, 1000), max_size=10), st.integers(1, 64)
)
@settings(max_examples=300)
def test_any_bytes_give_frames_or_one_too_large_and_every_frame_an_answer(
    stream: bytes, cuts: list[int], limit: int
) -> None:
    """No bytes raise; a too-large frame ends decoding; each payload parses or is refused with a code."""
    decoder = FrameDecoder(limit)
    events: list[bytes | FrameTooLarge] = []
    for chunk in _cut(stream, cuts):
        events.extend(decoder.feed(chunk))
        assert decoder.buffered_bytes <= limit + 3
    too_large = [event for event in events if isinstance(event, FrameTooLarge)]
    assert len(too_large) <= 1 and (not too_large or events[-1] is too_large[0])
    for event in events:
        if isinstance(event, bytes):
            _parses_or_is_refused(event)


def _parses_or_is_refused(payload: bytes) -> None:
    try:
        message = parse_frame(payload)
    except EnvelopeError as error:
        assert error.result in (Result.MALFORMED, Result.EMPTY_MESSAGE, Result.FIELD_INVALID)
        assert len(error.opr) <= 36 and len(error.code) <= 10 and len(error.detail) <= 36 * 10 + 150
        return
    assert isinstance(message, Request | Reply)


@given(hostile_text)
@settings(max_examples=300)
def test_hostile_json_in_a_frame_gets_an_answer(text: str) -> None:
    """Whatever JSON-ish text a lot frames, it is a request, a reply, or refused with a result code."""
    _parses_or_is_refused(text.encode("utf-8", "surrogatepass"))


@given(st.binary(min_size=1, max_size=12) | st.sampled_from([b"$", b"$$a", b"$$#", b"#$", b"$*#"]))
@settings(max_examples=60, deadline=None)
def test_decoding_work_is_linear_for_any_repeated_pattern(unit: bytes) -> None:
    """For any pattern, four times as many repeats cost at most about four times the operations."""
    small = decoder_ops([unit * (2048 // len(unit) + 1)])[0]
    large = decoder_ops([unit * (4 * (2048 // len(unit) + 1))])[0]
    assert large <= 4.3 * small + 200, (unit, small, large)
