"""The `$${json}##*` TCP framing: escaping, encoding, and a decoder that resyncs on garbage."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.framing import (
    FrameDecoder,
    FrameTooLarge,
    encode_frame,
    encode_json_frame,
    escape_json,
)
from gateway.protocol.signing import compact
from tests.fuzz.ops import decoder_ops

# Text UTF-8 can carry (no lone surrogates), weighted toward the characters framing escapes.
special_text = st.text(
    alphabet=st.sampled_from('$#*\\"ab京\u2028\n') | st.characters(codec="utf-8"), max_size=20
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | special_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(special_text, children, max_size=4),
    max_leaves=20,
)

# Bytes that are not `$` or `#`, so they can never open, end or break a frame.
plain_garbage = st.binary(max_size=12).map(lambda b: b.replace(b"$", b"").replace(b"#", b""))


def decode_all(stream: bytes, limit: int = 1 << 20) -> list[bytes | FrameTooLarge]:
    return FrameDecoder(limit).feed(stream)


def feed_chunks(decoder: FrameDecoder, chunks: list[bytes]) -> list[bytes | FrameTooLarge]:
    events: list[bytes | FrameTooLarge] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(stream) + 1) for cut in cuts})
    bounds = [0, *points, len(stream)]
    return [stream[a:b] for a, b in pairwise(bounds)]


MESSAGE = {
    "code": "carIn",
    "data": {
        "plate": "京A·12345",
        "note": "price $5 # gate * 2",
        "sep": "a\u2028b\u2029c",
        "nested": [[1, "$$"], ["##", {"*": "#*$"}], []],
    },
}


# --- escaping and encoding -------------------------------------------------


def test_round_trip_of_special_characters() -> None:
    """A message with `$ # *`, U+2028, Chinese and nested lists decodes to itself."""
    frame = encode_frame(MESSAGE)
    [payload] = decode_all(frame)
    assert isinstance(payload, bytes)
    assert json.loads(payload) == MESSAGE


def test_frame_holds_no_raw_delimiters() -> None:
    """Between the leading `$$` and trailing `##*` no raw `$`, `#` or `*` remains."""
    frame = encode_frame(MESSAGE)
    assert frame.startswith(b"$$") and frame.endswith(b"##*")
    inner = frame[2:-3]
    assert b"$" not in inner and b"#" not in inner and b"*" not in inner


def test_frame_is_compact_utf8() -> None:
    """The payload is compact JSON with Chinese as UTF-8, not ASCII escapes."""
    assert encode_frame({"a": "京", "b": [1, 2]}) == '$${"a":"京","b":[1,2]}##*'.encode()


def test_json_frame_reuses_the_signed_text() -> None:
    """encode_json_frame frames a given text; unescaped, it is that text byte for byte."""
    text = compact({"price": "$5", "k": "#*"})
    frame = encode_json_frame(text)
    assert frame == encode_frame({"price": "$5", "k": "#*"})
    assert compact(json.loads(frame[2:-3])) == text


def test_escape_json_replaces_only_the_three_characters() -> None:
    """escape_json writes `$ # *` as their \\u escapes and leaves the rest alone."""
    assert escape_json('{"a":"$#*\\\\$"}') == '{"a":"\\u0024\\u0023\\u002a\\\\\\u0024"}'


@given(json_values)
def test_escaped_json_parses_to_the_same_value(value: object) -> None:
    """Escaping any JSON text (compact or indented) leaves its parsed value unchanged."""
    for text in (compact(value), json.dumps(value, indent=1)):
        escaped = escape_json(text)
        assert json.loads(escaped) == value
        assert not {"$", "#", "*"} & set(escaped)


def test_lone_surrogates_cannot_be_framed() -> None:
    """Text with a lone surrogate has no UTF-8 form, so encoding it raises a ValueError."""
    with pytest.raises(ValueError):
        encode_frame({"a": "\ud800"})


@given(json_values)
def test_encoded_frames_decode_to_the_value(value: object) -> None:
    """Any JSON value survives encode_frame and the decoder."""
    assert [json.loads(p) for p in decode_all(encode_frame(value))] == [value]  # type: ignore[arg-type]


# --- split points ----------------------------------------------------------


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """Several frames with garbage (and sometimes no `*`) between them, and their payloads."""
    payloads = draw(st.lists(json_values.map(lambda v: escape_json(compact(v)).encode()), max_size=5))
    stream = draw(plain_garbage)
    for payload in payloads:
        stream += b"$$" + payload + b"##" + draw(st.sampled_from([b"*", b"", b"**", b"\r\n", b"*\n"]))
        stream += draw(plain_garbage)
    return stream, payloads


@given(streams(), st.lists(st.integers(min_value=0), max_size=20))
def test_split_points_do_not_matter(case: tuple[bytes, list[bytes]], cuts: list[int]) -> None:
    """Fed in arbitrary chunks, a stream yields the same payloads and counts as fed whole."""
    stream, payloads = case
    whole = FrameDecoder(1 << 20)
    assert whole.feed(stream) == payloads
    chunked = FrameDecoder(1 << 20)
    assert feed_chunks(chunked, split(stream, cuts)) == payloads
    assert chunked.skipped_bytes == whole.skipped_bytes
    assert chunked.buffered_bytes == whole.buffered_bytes


@given(
    st.binary(max_size=200)
    | st.lists(st.sampled_from([b"$", b"#", b"*", b"x", b"{}"]), max_size=60).map(b"".join),
    st.lists(st.integers(min_value=0), max_size=20),
    st.integers(min_value=1, max_value=8),
)
def test_any_bytes_decode_the_same_in_any_split(data: bytes, cuts: list[int], limit: int) -> None:
    """Even on garbage and with tiny limits, chunking changes neither events nor counts."""
    whole = FrameDecoder(limit)
    expected = whole.feed(data)
    chunked = FrameDecoder(limit)
    events = feed_chunks(chunked, split(data, cuts))
    assert [type(e) for e in events] == [type(e) for e in expected]
    assert [e for e in events if isinstance(e, bytes)] == [e for e in expected if isinstance(e, bytes)]
    assert (chunked.skipped_bytes, chunked.buffered_bytes, chunked.dead) == (
        whole.skipped_bytes,
        whole.buffered_bytes,
        whole.dead,
    )


@given(st.binary(max_size=500), st.lists(st.integers(min_value=0), max_size=30))
def test_arbitrary_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    """Any bytes in any chunks are decoded without an exception, and payloads hold no delimiter."""
    decoder = FrameDecoder(64)
    for event in feed_chunks(decoder, split(data, cuts)):
        if isinstance(event, bytes):
            assert b"#" not in event and b"$$" not in event and not event.startswith(b"$")
    assert decoder.buffered_bytes <= 64 + 3 or decoder.dead


# --- garbage ---------------------------------------------------------------


def test_leading_garbage_is_skipped_and_counted() -> None:
    """Bytes before the first `$$` are dropped and counted."""
    decoder = FrameDecoder(100)
    assert decoder.feed(b"hello\r\n$${}##*") == [b"{}"]
    assert decoder.skipped_bytes == 7


def test_frames_without_separators_and_with_stray_bytes() -> None:
    """Frames need no `*` between them; extra `*`, CR LF and spaces between them are skipped."""
    decoder = FrameDecoder(100)
    stream = b'$${"a":1}##$${"b":2}##**\r\n $${"c":3}##*\n'
    assert decoder.feed(stream) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    assert decoder.skipped_bytes == len(b"*\r\n ") + len(b"\n")


def test_separator_split_from_its_frame_is_not_garbage() -> None:
    """A `*` arriving in the next chunk after a frame's `##` is its separator, not skipped."""
    decoder = FrameDecoder(100)
    assert decoder.feed(b"$${}##") == [b"{}"]
    assert decoder.feed(b"*") == []
    assert decoder.skipped_bytes == 0


def test_lone_dollar_between_frames_is_garbage() -> None:
    """A single `$` outside a frame is dropped, even when the next `$$` follows it at once."""
    decoder = FrameDecoder(100)
    assert decoder.feed(b"$x$") == []
    assert decoder.buffered_bytes == 1  # the trailing `$` may be half of `$$`
    assert decoder.feed(b"$${}##*") == [b"{}"]
    assert decoder.skipped_bytes == 3


def test_lone_hash_between_frames_is_garbage() -> None:
    """A `#` or `##` outside a frame is skipped."""
    decoder = FrameDecoder(100)
    assert decoder.feed(b"#a##$${}##*#") == [b"{}"]
    assert decoder.skipped_bytes == 5


def test_new_frame_start_breaks_an_unterminated_frame() -> None:
    """A `$$` inside an unterminated frame drops the partial and decodes the new frame."""
    decoder = FrameDecoder(100)
    assert decoder.feed(b'$${"a":') == []
    assert decoder.feed(b'$${"b":2}##*') == [b'{"b":2}']
    assert decoder.skipped_bytes == len(b'$${"a":')


def test_lone_hash_inside_a_frame_breaks_it() -> None:
    """A `#` not followed by `#` breaks the frame; decoding resumes at the next `$$`."""
    decoder = FrameDecoder(100)
    assert decoder.feed(b'$${"a":"#') == []
    assert decoder.feed(b'x"}##*$${"b":2}##*') == [b'{"b":2}']
    assert decoder.skipped_bytes == len(b'$${"a":"#') + len(b'x"}##*')


def test_lone_dollar_inside_a_frame_is_payload() -> None:
    """A single `$` inside a frame is kept: the JSON parser, not the framing, judges it."""
    assert decode_all(b'$${"a":"$5"}##*') == [b'{"a":"$5"}']


def test_run_of_dollars_opens_at_the_last_pair() -> None:
    """In `$$$...` the frame opens at the last `$$`, so a stray `$` does not spoil it."""
    decoder = FrameDecoder(100)
    assert decoder.feed(b"$$") == []
    assert decoder.feed(b"$") == []
    assert decoder.feed(b"{}##") == [b"{}"]
    assert decoder.skipped_bytes == 1


def test_triple_hash_ends_the_frame_at_the_first_pair() -> None:
    """`###` ends the frame at its first two bytes; the third is garbage."""
    decoder = FrameDecoder(100)
    assert decoder.feed(b"$${}###$$[]##") == [b"{}", b"[]"]
    assert decoder.skipped_bytes == 1


def test_empty_frame_is_an_empty_payload() -> None:
    """`$$##` yields an empty payload (for the envelope parser to reject)."""
    assert decode_all(b"$$##*") == [b""]


def test_garbage_never_grows_the_buffer() -> None:
    """Ten megabytes without `$$` keep at most one byte buffered, all of it counted."""
    decoder = FrameDecoder(1024)
    chunk = (b"garbage #* \r\n$" * 4681)[:65536]
    total = 0
    while total < 10 * 1024 * 1024:
        assert decoder.feed(chunk) == []
        total += len(chunk)
        assert decoder.buffered_bytes <= 1
    assert decoder.skipped_bytes + decoder.buffered_bytes == total


def test_idle_decoder_holds_no_buffer() -> None:
    """Between frames a decoder keeps no buffer and no instance dict; a partial frame is kept."""
    decoder = FrameDecoder(100)
    assert not hasattr(decoder, "__dict__")
    assert decoder.feed(b"$${}##*$${") == [b"{}"]
    assert decoder._buffer == bytearray(b"$${")
    assert decoder.feed(b"}##*") == [b"{}"]
    assert decoder._buffer is None and decoder.buffered_bytes == 0
    assert decoder.feed(b"x$") == [] and decoder.buffered_bytes == 1
    assert decoder.feed(b"y") == [] and decoder._buffer is None


# --- size limit ------------------------------------------------------------


def test_payload_at_the_limit_is_accepted() -> None:
    """A payload of exactly max_frame_bytes is a frame, whole or byte by byte."""
    payload = b'"' + b"x" * 8 + b'"'
    stream = b"$$" + payload + b"##*"
    assert decode_all(stream, limit=10) == [payload]
    decoder = FrameDecoder(10)
    assert feed_chunks(decoder, [bytes([b]) for b in stream]) == [payload]


def test_payload_over_the_limit_is_too_large_once() -> None:
    """One byte over the limit yields one FrameTooLarge, then the decoder is dead."""
    decoder = FrameDecoder(10)
    events = decoder.feed(b"$${}##*$$" + b"x" * 11 + b"##*$${}##*")
    assert events == [b"{}", FrameTooLarge(size=11, limit=10)]
    assert decoder.dead
    assert decoder.feed(b"$${}##*") == []
    assert decoder.buffered_bytes == 0


def test_unterminated_oversize_frame_is_caught_early() -> None:
    """Fed byte by byte and never terminated, a frame is refused as soon as it passes the limit."""
    decoder = FrameDecoder(1000)
    events = decoder.feed(b"$$")
    fed = 0
    while not events:
        events = decoder.feed(b"x")
        fed += 1
        assert decoder.buffered_bytes <= 1000 + 2
    assert events == [FrameTooLarge(size=1001, limit=1000)]
    assert fed == 1001
    assert all(decoder.feed(b"x##*$${}##*") == [] for _ in range(3))


def test_trailing_dollar_does_not_count_toward_the_limit() -> None:
    """A frame at the limit followed by `$$` is broken, not too large: the `$` may open a frame."""
    decoder = FrameDecoder(4)
    assert feed_chunks(decoder, [b"$$abcd", b"$", b"$[]##"]) == [b"[]"]
    assert decoder.skipped_bytes == len(b"$$abcd")


def test_limit_must_be_positive() -> None:
    """A non-positive limit is a configuration error."""
    with pytest.raises(ValueError, match="positive"):
        FrameDecoder(0)


# --- work ------------------------------------------------------------------


def test_large_frame_one_byte_at_a_time_is_linear() -> None:
    """A 1 MiB frame fed in 1-byte chunks decodes; each feed searches only the new byte."""
    payload = b'"' + b"x" * (1 << 20) + b'"'
    decoder = FrameDecoder(len(payload))
    stream = memoryview(b"$$" + payload + b"##*")
    events: list[bytes | FrameTooLarge] = []
    for i in range(len(stream)):
        events.extend(decoder.feed(stream[i : i + 1].tobytes()))
        assert decoder._scan >= decoder.buffered_bytes - 1  # the search resumes where it stopped
    assert events == [payload]


# Item 4: a stream of `$` (or any bytes) costs work linear in its length.


@pytest.mark.parametrize("unit", [b"$", b"$$a", b"$$#a", b"#", b"*", b"$$a##*", b"$$" + b"x" * 40 + b"$"])
@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_decoding_is_linear_in_the_bytes_fed(unit: bytes, chunk: int | None) -> None:
    """Four times the bytes take at most about four times the operations (a rescan per `$` took 16)."""

    def ops(size: int) -> int:
        data = unit * (size // len(unit))
        chunks = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
        return decoder_ops(chunks)[0]

    small, large = ops(4096), ops(16384)
    assert large <= 4.3 * small + 200
    assert large <= 60 * 16384


def test_a_run_of_dollars_is_crossed_in_one_step() -> None:
    """A megabyte of `$` in one piece takes about one operation per byte and holds two bytes after."""
    decoder = FrameDecoder(1 << 20)
    ops, events = decoder_ops([b"$" * (1 << 20)])
    assert events == [] and ops < 2 * (1 << 20)
    assert decoder.feed(b"$" * 100_000 + b'{"a":1}##') == [b'{"a":1}']
