"""The bolink line protocol without I/O: lines, envelopes, signatures, answers and translation."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.dialects.bolink_messages import (
    CLOUD,
    HEARTBEAT,
    HEARTBEAT_ANSWER,
    LINES,
    MAX_LINE,
    TRANSLATED,
    BadMessage,
    Envelope,
    LineSplitter,
    Oversize,
    Untranslatable,
    answer,
    canonical,
    digest,
    frame,
    liftrod_reply,
    login_answer,
    operate_liftrod,
    parse_line,
    repeat_answer,
    sign,
    sign_ok,
    translate,
)
from gateway.dialects.interface import Message
from gateway.protocol.catalog import lookup
from gateway.protocol.validation import validate

ZONE = ZoneInfo("Asia/Shanghai")
IN_TIME = 1700000000
IN_WIRE = "2023-11-15 06:13:20"
OUT_TIME = IN_TIME + 2 * 3600 + 125  # 2 h 2 min 5 s later
OUT_WIRE = "2023-11-15 08:15:25"


def feed_chunks(splitter: LineSplitter, chunks: list[bytes]) -> list[bytes | Oversize]:
    events: list[bytes | Oversize] = []
    for chunk in chunks:
        events.extend(splitter.feed(chunk))
    return events


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(stream) + 1) for cut in cuts})
    bounds = [0, *points, len(stream)]
    return [stream[a:b] for a, b in pairwise(bounds)]


def envelope(text: str) -> Envelope:
    return parse_line(text.encode("utf-8"))


def only(messages: tuple[Message, ...] | None) -> Message:
    assert messages is not None
    [message] = messages
    return message


def valid(message: Message) -> None:
    """Fail unless the catalog accepts `message` as an uplink request of its interface."""
    interface = lookup(message.code)
    assert interface is not None
    validate(interface.request, message.data)


# --- lines ---------------------------------------------------------------------------------------


def test_lines_end_at_line_feed() -> None:
    """Lines ended by LF come back one by one, without their terminators."""
    assert LineSplitter().feed(b'{"a":1}\n{"b":2}\n') == [b'{"a":1}', b'{"b":2}']


def test_lines_end_at_carriage_return_line_feed() -> None:
    """Lines ended by CR LF come back without the CR and without an empty line for the LF."""
    assert LineSplitter().feed(b'{"a":1}\r\n{"b":2}\r\n') == [b'{"a":1}', b'{"b":2}']


def test_lines_between_line_feed_and_carriage_return() -> None:
    """The `\\n{json}\\r` form (LF before, CR after each message) gives the messages."""
    assert LineSplitter().feed(b'\n{"a":1}\r\n{"b":2}\r') == [b'{"a":1}', b'{"b":2}']


def test_mixed_terminators_in_one_chunk() -> None:
    """LF, CR LF, lone CR and LF CR endings mixed in one chunk all end lines."""
    stream = b"one\ntwo\r\nthree\rfour\n\rfive\r\r\n\nsix\n"
    assert LineSplitter().feed(stream) == [b"one", b"two", b"three", b"four", b"five", b"six"]


def test_carriage_return_and_line_feed_in_separate_chunks() -> None:
    """A CR LF cut between two feeds ends one line and makes no empty one."""
    splitter = LineSplitter()
    assert splitter.feed(b"one\r") == [b"one"]
    assert splitter.feed(b"\ntwo\r") == [b"two"]
    assert splitter.feed(b"\n") == []


def test_empty_and_blank_lines_are_skipped() -> None:
    """Lines holding nothing, or only spaces and tabs, are not returned."""
    assert LineSplitter().feed(b"\n\n \t \r\n\t\none\n  \n") == [b"one"]


def test_lines_are_stripped_of_spaces_and_tabs() -> None:
    """Spaces and tabs around a line are removed; those inside it are kept."""
    assert LineSplitter().feed(b' \t{"a": "x y"}\t \r\n') == [b'{"a": "x y"}']


def test_unterminated_line_waits_for_its_end() -> None:
    """A line without a terminator is held until one arrives, then returned whole."""
    splitter = LineSplitter()
    assert splitter.feed(b'{"a":') == []
    assert splitter.buffered_bytes == 5
    assert splitter.feed(b"1}") == []
    assert splitter.feed(b"\n") == [b'{"a":1}']
    assert splitter.buffered_bytes == 0


def test_heartbeat_is_a_bare_line() -> None:
    """The heartbeat arrives as a line of its own, and its answer is one line."""
    assert LineSplitter().feed(b'0x11\r\n{"a":1}\n') == [HEARTBEAT, b'{"a":1}']
    assert HEARTBEAT_ANSWER == "0x12"
    assert frame(HEARTBEAT_ANSWER) == b"\n0x12\r"
    assert frame(HEARTBEAT_ANSWER, LINES) == b"0x12\n"


def test_byte_at_a_time() -> None:
    """Feeding one byte at a time gives the same lines as feeding all at once."""
    stream = b'\n{"service_name":"in_park"}\r\n0x11\r{"x":"\xe4\xba\xac"}\n'
    splitter = LineSplitter()
    events = feed_chunks(splitter, [stream[i : i + 1] for i in range(len(stream))])
    assert events == LineSplitter().feed(stream)
    assert events == [b'{"service_name":"in_park"}', b"0x11", b'{"x":"\xe4\xba\xac"}']


def test_every_split_point() -> None:
    """Cutting a stream in two at every byte position gives the same lines."""
    stream = b'{"a":1}\r\n\n{"b":2}\r \t\n{"c":3}\n'
    expected = [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    for cut in range(len(stream) + 1):
        splitter = LineSplitter()
        assert feed_chunks(splitter, [stream[:cut], stream[cut:]]) == expected, cut


def test_the_heartbeat_byte_is_a_line_of_its_own() -> None:
    """A bare 0x11 is a line by itself, with or without a line end, and does not stick to the next line."""
    assert LineSplitter().feed(b"\x11") == [b"\x11"]
    assert LineSplitter().feed(b'\x11{"a":1}\n\x11\x11') == [b"\x11", b'{"a":1}', b"\x11", b"\x11"]
    splitter = LineSplitter()
    assert splitter.feed(b'{"a":') == []
    assert splitter.feed(b"\x11") == [b'{"a":', b"\x11"]  # JSON never holds a raw 0x11: the line is cut


def test_many_small_lines_in_one_chunk() -> None:
    """A chunk of a hundred thousand short lines comes back as that many lines, in order."""
    stream = b"".join(b'{"n":%d}\r\n' % n for n in range(100_000))
    lines = LineSplitter().feed(stream)
    assert len(lines) == 100_000
    assert lines[0] == b'{"n":0}'
    assert lines[-1] == b'{"n":99999}'


# Without 0x11, the heartbeat byte, which is a line of its own wherever it stands (tested below).
line_text = st.binary(max_size=30).map(
    lambda b: b.replace(b"\n", b"").replace(b"\r", b"").replace(b"\x11", b"")
)
terminators = st.sampled_from([b"\n", b"\r\n", b"\r", b"\n\r", b"\r\r\n"])


@given(
    lines=st.lists(st.tuples(line_text, terminators), max_size=12),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
    limit=st.integers(min_value=1, max_value=40),
)
def test_any_chunking_gives_the_same_lines(
    lines: list[tuple[bytes, bytes]], cuts: list[int], limit: int
) -> None:
    """However a stream is cut into chunks, the lines (and oversize notices) are the same."""
    stream = b"".join(text + end for text, end in lines)
    whole = LineSplitter(limit).feed(stream)
    splitter = LineSplitter(limit)
    assert feed_chunks(splitter, split(stream, cuts)) == whole
    assert splitter.buffered_bytes == 0
    expected: list[bytes | Oversize] = []
    for text, _end in lines:
        if len(text) > limit:
            expected.append(Oversize(limit))
        elif text.strip(b" \t"):
            expected.append(text.strip(b" \t"))
    assert whole == expected


# --- oversize lines ------------------------------------------------------------------------------


def test_oversize_line_in_one_chunk() -> None:
    """A complete line longer than the limit gives one Oversize in its place; the next line is read."""
    splitter = LineSplitter(10)
    assert splitter.feed(b"a" * 11 + b"\r\nnext\n") == [Oversize(10), b"next"]


def test_oversize_line_is_reported_as_soon_as_it_passes_the_limit() -> None:
    """The Oversize comes when the unterminated line passes the limit, once; the rest is dropped."""
    splitter = LineSplitter(10)
    assert splitter.feed(b"a" * 10) == []
    assert splitter.feed(b"b") == [Oversize(10)]
    assert splitter.buffered_bytes == 0
    assert splitter.feed(b"c" * 100) == []
    assert splitter.buffered_bytes == 0
    assert splitter.feed(b"ccc\r\nnext\n") == [b"next"]


def test_oversize_line_with_lines_before_it() -> None:
    """Lines complete before an oversize line come back first, then the Oversize."""
    splitter = LineSplitter(10)
    assert splitter.feed(b"one\ntwo\n" + b"x" * 50) == [b"one", b"two", Oversize(10)]
    assert splitter.feed(b"x\nthree\n") == [b"three"]


def test_huge_stream_without_terminator_is_held_in_bounded_memory() -> None:
    """Ten MiB without a terminator gives one Oversize and never more than the limit buffered."""
    splitter = LineSplitter()
    chunk = b"z" * 65536
    events: list[bytes | Oversize] = []
    for _ in range(160):
        events.extend(splitter.feed(chunk))
        assert splitter.buffered_bytes <= MAX_LINE
    assert events == [Oversize(MAX_LINE)]
    assert splitter.feed(b"\n{}\n") == [b"{}"]


def test_huge_chunk_is_not_kept() -> None:
    """A single ten MiB chunk without a terminator is reported and not buffered."""
    splitter = LineSplitter()
    assert splitter.feed(b"z" * (10 << 20)) == [Oversize(MAX_LINE)]
    assert splitter.buffered_bytes == 0


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_line_of_exactly_the_limit(size: int) -> None:
    """A line of exactly `limit` bytes is returned, whole or fed in pieces."""
    line = b"q" * MAX_LINE
    assert LineSplitter().feed(line + b"\n") == [line]
    splitter = LineSplitter()
    chunks = [line[i : i + size] for i in range(0, len(line), size)]
    assert feed_chunks(splitter, chunks) == []
    assert splitter.buffered_bytes == MAX_LINE
    assert splitter.feed(b"\r\n") == [line]


def test_line_one_byte_over_the_limit() -> None:
    """A line of `limit` + 1 bytes is an Oversize, whole or fed in pieces."""
    line = b"q" * (MAX_LINE + 1)
    assert LineSplitter().feed(line + b"\n") == [Oversize(MAX_LINE)]
    splitter = LineSplitter()
    assert splitter.feed(line[:-1]) == []
    assert splitter.feed(line[-1:]) == [Oversize(MAX_LINE)]


def test_limit_must_be_positive() -> None:
    """A splitter with a limit below one byte is refused."""
    with pytest.raises(ValueError):
        LineSplitter(0)


# --- envelopes -----------------------------------------------------------------------------------


def test_parse_full_message() -> None:
    """A message gives its service, token, sign, parsed data, data as written and order_id."""
    line = (
        '{"service_name":"in_park", "token":"t0k", "sign":"ABC",'
        ' "data": {"order_id": "A1" ,  "car_number":"京A12345"}}'
    )
    parsed = envelope(line)
    assert parsed == Envelope(
        service="in_park",
        token="t0k",
        sign="ABC",
        data={"order_id": "A1", "car_number": "京A12345"},
        data_text='{"order_id": "A1" ,  "car_number":"京A12345"}',
        order_id="A1",
    )


def test_parse_message_without_header_members() -> None:
    """Absent token, sign and data give empty strings and None."""
    assert envelope('{"service_name":"login"}') == Envelope("login", "", "", None, "", "")


def test_null_data_token_and_sign_count_as_absent() -> None:
    """A null data, token or sign is taken as absent."""
    parsed = envelope('{"service_name":"x","token":null,"sign":null,"data":null}')
    assert parsed == Envelope("x", "", "", None, "", "")


def test_leading_byte_order_mark_is_allowed() -> None:
    """A UTF-8 byte order mark before the object is skipped."""
    parsed = parse_line(b'\xef\xbb\xbf{"service_name":"x","data":{"a":1}}')
    assert parsed.service == "x"
    assert parsed.data_text == '{"a":1}'


@pytest.mark.parametrize(
    ("data", "order_id"),
    [
        ('{"order_id":"A-1"}', "A-1"),
        ('{"order_id":123}', "123"),
        ('{"order_id":0}', "0"),
        ('{"order_id":""}', ""),
        ('{"order_id":null}', ""),
        ('{"order_id":true}', ""),
        ('{"order_id":1.5}', ""),
        ('{"order_id":["A"]}', ""),
        ("{}", ""),
    ],
)
def test_order_id(data: str, order_id: str) -> None:
    """order_id is data's order_id as text when it is a non-empty string or an integer, else ""."""
    assert envelope('{"service_name":"x","data":%s}' % data).order_id == order_id


def test_not_utf8() -> None:
    """A line that is not UTF-8 is a BadMessage with no service."""
    with pytest.raises(BadMessage) as caught:
        parse_line(b'{"service_name":"\xff"}')
    assert (caught.value.service, caught.value.reason) == ("", "not UTF-8 text")
    assert str(caught.value) == "not UTF-8 text"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("[1, 2]", "not a JSON object: does not begin with '{'"),
        ("hello", "not a JSON object: does not begin with '{'"),
        ("", "not a JSON object: empty"),
        ('{"service_name":"x"', "not a JSON object: expected ',' or '}' at character 19"),
        ('{"service_name":"x"} trailing', "not a JSON object: extra text after the message at character 20"),
        ('{"service_name":}', "not a JSON object: Expecting value at character 16"),
        ('{"service_name":"x","n":NaN}', "not a JSON object: n: NaN is not JSON"),
        ("{service_name:1}", "not a JSON object: expected a member name at character 1"),
    ],
)
def test_not_a_json_object(line: str, reason: str) -> None:
    """Text that is not one JSON object is a BadMessage saying so, with a short detail."""
    with pytest.raises(BadMessage) as caught:
        envelope(line)
    assert (caught.value.service, caught.value.reason) == ("", reason)


def test_detail_is_short() -> None:
    """The detail of a parse error is cut short, whatever the parser said."""
    with pytest.raises(BadMessage) as caught:
        envelope('{"service_name":"x","n":%s}' % ("9" * 5000))
    assert caught.value.reason.startswith("not a JSON object: ")
    assert len(caught.value.reason) <= len("not a JSON object: ") + 80


def test_nested_too_deeply() -> None:
    """Nesting deeper than the JSON rules allow (32) is a BadMessage, not a crash."""
    with pytest.raises(BadMessage) as caught:
        envelope('{"service_name":"x","data":%s}' % ("[" * 100_000))
    assert (caught.value.service, caught.value.reason) == (
        "",
        "not a JSON object: nested deeper than 32 levels",
    )


@pytest.mark.parametrize(
    "line",
    ["{}", '{"service_name":""}', '{"service_name":null}', '{"service_name":5}', '{"service_name":["x"]}'],
)
def test_service_name_required(line: str) -> None:
    """A message without a non-empty string service_name is a BadMessage with no service."""
    with pytest.raises(BadMessage) as caught:
        envelope(line)
    assert (caught.value.service, caught.value.reason) == ("", "service_name: required")


@pytest.mark.parametrize(
    ("member", "value"), [("token", "5"), ("token", "true"), ("sign", "{}"), ("sign", "[]")]
)
def test_token_and_sign_must_be_strings(member: str, value: str) -> None:
    """A token or sign that is not a string is a BadMessage naming the member and the service."""
    with pytest.raises(BadMessage) as caught:
        envelope('{"service_name":"in_park","%s":%s}' % (member, value))
    assert (caught.value.service, caught.value.reason) == ("in_park", f"{member}: must be a string")


@pytest.mark.parametrize("value", ["[]", '"x"', "5", "true"])
def test_data_must_be_an_object(value: str) -> None:
    """A data member that is present but not an object is a BadMessage naming the service."""
    with pytest.raises(BadMessage) as caught:
        envelope('{"service_name":"in_park","data":%s}' % value)
    assert (caught.value.service, caught.value.reason) == ("in_park", "data: must be a JSON object")


# --- signatures ----------------------------------------------------------------------------------


def md5_upper(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest().upper()


def test_sign_known_vector() -> None:
    """sign is the upper-case MD5 of the data text, "key=" and the secret."""
    data_text = '{"order_id":"A1","car_number":"京A12345"}'
    assert sign(data_text, "s3cret") == md5_upper(data_text + "key=s3cret")
    assert sign("", "s3cret") == md5_upper("key=s3cret")
    assert sign("{}", "k") == "B4893170FB6858C345877593E7DAF94F"  # md5sum of "{}key=k"


def signed(data: str | None, signature: str) -> Envelope:
    header = '{"service_name":"in_park","sign":"%s"' % signature
    return envelope(header + ("" if data is None else ',"data":' + data) + "}")


SPACED = '{ "order_id": "A1", "car_number": "京A12345" }'
COMPACT = '{"order_id":"A1","car_number":"京A12345"}'


def test_sign_ok_off_accepts_anything() -> None:
    """Mode "off" accepts a message with a wrong signature or none."""
    assert sign_ok(signed(SPACED, "WRONG"), "s", "off")
    assert sign_ok(signed(SPACED, ""), "s", "off")


def test_sign_ok_optional() -> None:
    """Mode "optional" accepts an unsigned message, checks a signed one."""
    assert sign_ok(signed(SPACED, ""), "s", "optional")
    assert sign_ok(signed(SPACED, md5_upper(SPACED + "key=s")), "s", "optional")
    assert not sign_ok(signed(SPACED, md5_upper(SPACED + "key=other")), "s", "optional")


@pytest.mark.parametrize("mode", ["required", "on"])
def test_sign_ok_required(mode: str) -> None:
    """Any other mode requires a signature matching the data as written or as the server re-serializes it."""
    assert not sign_ok(signed(SPACED, ""), "s", mode)
    assert sign_ok(signed(SPACED, md5_upper(SPACED + "key=s")), "s", mode)
    assert sign_ok(signed(SPACED, md5_upper(COMPACT + "key=s")), "s", mode)
    assert not sign_ok(signed(SPACED, md5_upper(SPACED + "key=t")), "s", mode)
    assert not sign_ok(signed(SPACED, md5_upper(SPACED + "s")), "s", mode)


def test_sign_ok_takes_upper_case_only() -> None:
    """The server compares the sign with its upper-case MD5 character for character: lower case is refused."""
    assert not sign_ok(signed(COMPACT, md5_upper(COMPACT + "key=s").lower()), "s", "required")
    assert not sign_ok(signed(COMPACT, " " + md5_upper(COMPACT + "key=s")), "s", "required")


@pytest.mark.parametrize(
    ("written", "server"),
    [
        # Members in their order, blanks gone, the numbers' text kept (fastjson reads BigDecimal).
        (
            '{ "total" : "0.0", "amount" : 12.50, "in_time" : 1577244491 }',
            '{"total":"0.0","amount":12.50,"in_time":1577244491}',
        ),
        (
            '{"b":1,"a":[1.0, 2E3, -0.0, 1e-7, true, false, null]}',
            '{"b":1,"a":[1.0,2E+3,0.0,1E-7,true,false,null]}',
        ),
        # Escapes undone but for those fastjson writes; its \\u escapes are upper case.
        (
            '{"car_number":"\\u4eacA12345","c":"a\\/b","d":"\\u007f\\u001f\\t"}',
            '{"car_number":"京A12345","c":"a/b","d":"\\u007F\\u001F\\t"}',
        ),
        ('{"o":{"z":1, "y":{}}, "empty_ plot":0}', '{"o":{"z":1,"y":{}},"empty_ plot":0}'),
    ],
)
def test_canonical_is_data_as_the_server_signs_it(written: str, server: str) -> None:
    """canonical re-serializes data as the ParkingOS server does before signing; a sign over it passes."""
    assert canonical(written) == server
    assert sign_ok(signed(written, md5_upper(server + "key=s")), "s", "required")


@pytest.mark.parametrize("text", ["", "{", "[1,", '{"a":NaN}', "[" * 100_000])
def test_canonical_of_no_json_is_none(text: str) -> None:
    """canonical gives None for text that is not JSON (or nested beyond what can be re-serialized)."""
    assert canonical(text) is None


def test_digest_ignores_blanks_but_not_values() -> None:
    """The repeat fingerprint is the same for the same data written with other blanks, not for other data."""
    assert digest(envelope_with(SPACED)) == digest(envelope_with(COMPACT))
    assert digest(envelope_with(COMPACT)) != digest(envelope_with(COMPACT.replace("A1", "A2")))
    assert len(digest(envelope_with(COMPACT))) == 8


def envelope_with(data: str) -> Envelope:
    return signed(data, "")


def test_message_without_data_signs_the_empty_text() -> None:
    """A message without data is signed over the empty text."""
    assert sign_ok(signed(None, md5_upper("key=s")), "s", "required")
    assert not sign_ok(signed(None, md5_upper("{}key=s")), "s", "required")


# --- answers -------------------------------------------------------------------------------------


def test_frames_are_written_as_the_server_writes_them() -> None:
    """A frame is "\\n" + text + "\\r" (the ParkingOS server's doBackMessage), or text + "\\n" for "lines"."""
    assert frame('{"a":1}') == frame('{"a":1}', CLOUD) == b'\n{"a":1}\r'
    assert frame('{"a":1}', LINES) == b'{"a":1}\n'
    assert frame("") == b"\n\r"


def test_answer_ok() -> None:
    """A positive answer is one compact frame, the server's members, state 1."""
    assert answer("in_park", True, "", "A1") == (
        b'\n{"service_name":"in_park","state":1,"errmsg":"","order_id":"A1"}\r'
    )
    assert answer("in_park", True, "", "A1", LINES) == (
        b'{"service_name":"in_park","state":1,"errmsg":"","order_id":"A1"}\n'
    )


def test_answer_refusal_keeps_chinese_unescaped() -> None:
    """A refusal has state 0 and its errmsg in UTF-8, quotes escaped."""
    frame_ = answer("out_park", False, '签名错误 "sign"', "")
    expected = '\n{"service_name":"out_park","state":0,"errmsg":"签名错误 \\"sign\\"","order_id":""}\r'
    assert frame_ == expected.encode()
    assert json.loads(frame_) == {
        "service_name": "out_park",
        "state": 0,
        "errmsg": '签名错误 "sign"',
        "order_id": "",
    }


def test_answer_with_lone_surrogate_is_still_json() -> None:
    """An order_id holding a lone surrogate (JSON allows one) is answered as JSON, not a crash."""
    frame_ = answer("in_park", True, "", "A\ud800")
    assert frame_ == b'\n{"service_name":"in_park","state":1,"errmsg":"","order_id":"A\\ud800"}\r'
    assert json.loads(frame_)["order_id"] == "A\ud800"


def test_repeat_answer_is_the_later_servers() -> None:
    """A repeat is answered state 0 "数据已处理过..." with the service, order_id and car_number."""
    assert json.loads(repeat_answer("out_park", "1131522704", "粤B1H7S0")) == {
        "state": 0,
        "errmsg": "数据已处理过...",
        "service_name": "out_park",
        "order_id": "1131522704",
        "car_number": "粤B1H7S0",
    }
    assert json.loads(repeat_answer("in_park", "302", "")) == {
        "state": 0,
        "errmsg": "数据已处理过...",
        "service_name": "in_park",
        "order_id": "302",
    }


def test_login_answers() -> None:
    """Login answers are the server's: the token when accepted, an errmsg when refused."""
    assert login_answer(True, "", "tok") == b'\n{"state":1,"token":"tok","service_name":"login"}\r'
    assert login_answer(False, "签名错误", "") == (
        '\n{"state":0,"errmsg":"签名错误","service_name":"login"}\r'.encode()
    )
    assert login_answer(True, "", "tok", LINES) == b'{"state":1,"token":"tok","service_name":"login"}\n'


def test_operate_liftrod() -> None:
    """A barrier command names the channel, an empty channel name, the operation, the park and its id."""
    assert operate_liftrod("3", 0, "24155", "f0") == (
        b'\n{"service_name":"operate_liftrod","channel_id":"3","channel_name":"","operate":0,'
        b'"park_id":"24155","liftrod_id":"f0"}\r'
    )
    assert json.loads(operate_liftrod("入口", 1, "P", "x", LINES))["channel_id"] == "入口"


def test_liftrod_reply_reads_the_members_inside_data() -> None:
    """The lot's answer is read from its data: state, channel_id, operate, liftrod_id, errmsg."""
    reply = liftrod_reply(
        envelope(
            '{"service_name":"operate_liftrod","state":0,"token":"t","sign":"S","data":'
            '{"data_target":"cloud","state":1,"channel_id":"out001","operate":0,'
            '"liftrod_id":"f05385f9","errmsg":""}}'
        )
    )
    assert (reply.state, reply.channel_id, reply.operate, reply.liftrod_id, reply.errmsg) == (
        1,
        "out001",
        0,
        "f05385f9",
        "",
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ('{"state":"1","channel_id":12,"operate":"0"}', (1, "12", 0, None, "")),
        ('{"errmsg":"卡杆"}', (None, None, None, None, "卡杆")),
        (
            '{"state":true,"channel_id":[1],"operate":1.5,"liftrod_id":{},"errmsg":3}',
            (None, None, None, None, ""),
        ),
    ],
)
def test_liftrod_reply_leaves_out_what_it_cannot_read(data: str, expected: tuple[object, ...]) -> None:
    """Numbers written as text are read; members of another kind count as absent."""
    reply = liftrod_reply(envelope('{"service_name":"operate_liftrod","data":' + data + "}"))
    assert (reply.state, reply.channel_id, reply.operate, reply.liftrod_id, reply.errmsg) == expected


# --- translation ---------------------------------------------------------------------------------

IN_PARK: dict[str, object] = {
    "order_id": "A1",
    "car_number": "京A12345",
    "in_time": IN_TIME,
    "in_channel_id": 3,
    "car_type": "小车",  # the vehicle's size: not carried
    "car_cost_type": 2,  # 月卡车
}

OUT_PARK: dict[str, object] = {
    "order_id": "A1",
    "car_number": "京A12345",
    "in_time": IN_TIME,
    "out_time": OUT_TIME,
    "in_channel_id": "3",
    "out_channel_id": 4,
    "car_type": "大车",
    "car_cost_type": "1",  # 临停车, written as text
    "amount_receivable": "12.50",
    "total": "10",
    "reduce_amount": " 2.5 ",
    "pay_type": "cash",
}

CAR_IN_SOURCES = {
    "recordCode": "order_id",
    "carNum": "car_number",
    "inCross": "in_channel_id",
    "inTime": "in_time",
    "inIdentity": "car_cost_type",
}
CAR_OUT_SOURCES = {
    "recordCode": "order_id",
    "carNum": "car_number",
    "inCross": "in_channel_id",
    "outCross": "out_channel_id",
    "inTime": "in_time",
    "outTime": "out_time",
    "inIdentity": "car_cost_type",
    "parkMinutes": "out_time",
    "payMoney": "amount_receivable",
    "incomeMoney": "total",
    "discountMoney": "reduce_amount",
    "paymentMode": "pay_type",
}


def car_in(**changes: object) -> Message:
    data = {**IN_PARK, **changes}
    return only(translate("in_park", {k: v for k, v in data.items() if v is not ...}, ZONE))


def car_out(service: str = "out_park", **changes: object) -> Message:
    data = {**OUT_PARK, **changes}
    return only(translate(service, {k: v for k, v in data.items() if v is not ...}, ZONE))


def test_in_park_makes_car_in() -> None:
    """in_park becomes one carIn with its members in order, and their sources."""
    message = car_in()
    assert message.code == "carIn"
    assert message.data == {
        "recordCode": "A1",
        "carNum": "京A12345",
        "inCross": "3",
        "inTime": IN_WIRE,
        "inIdentity": 1,
    }
    assert isinstance(message.data, dict)
    assert list(message.data) == ["recordCode", "carNum", "inCross", "inTime", "inIdentity"]
    assert dict(message.sources) == CAR_IN_SOURCES
    valid(message)


def test_in_park_with_only_required_members() -> None:
    """in_park with only order_id and car_number gives those alone: nothing says what kind of car it is."""
    message = only(translate("in_park", {"order_id": 7, "car_number": "沪B1"}, ZONE))
    assert message.data == {"recordCode": "7", "carNum": "沪B1"}
    valid(message)


def test_in_park_with_empty_plot_also_makes_free_space() -> None:
    """in_park with empty_plot is followed by a freeSpace of that count."""
    messages = translate("in_park", {**IN_PARK, "empty_plot": 17}, ZONE)
    assert messages is not None
    assert [m.code for m in messages] == ["carIn", "freeSpace"]
    assert messages[1] == Message("freeSpace", {"emptyNum": 17}, {"emptyNum": "empty_plot"})
    for message in messages:
        valid(message)


@pytest.mark.parametrize(("value", "count"), [(0, 0), ("12", 12), (" 5 ", 5), ("-1", -1), (-3, -3)])
def test_empty_plot_values(value: object, count: int) -> None:
    """empty_plot is taken as an integer or its digits; negatives are passed on for the rules to refuse."""
    messages = translate("in_park", {**IN_PARK, "empty_plot": value}, ZONE)
    assert messages is not None
    assert messages[1].data == {"emptyNum": count}


@pytest.mark.parametrize("value", [None, ""])
def test_empty_plot_absent(value: object) -> None:
    """A null or empty empty_plot makes no freeSpace."""
    assert len(translate("in_park", {**IN_PARK, "empty_plot": value}, ZONE) or ()) == 1


@pytest.mark.parametrize(
    ("car_cost_type", "identity"),
    [
        (1, 2),  # 临停车 -> 临时车
        (2, 1),  # 月卡车 -> 月租车
        (3, 5),  # 白名单车 -> 会员免费车
        (4, 2),  # 无牌车 -> 临时车
        (5, 5),  # 贵宾车 -> 会员免费车
        (6, 5),  # VIP -> 会员免费车
        (7, 5),  # 内部车 -> 会员免费车
        (8, 1),  # 月卡多位多车 -> 月租车
        (9, 3),  # 储值车 -> 储值车
        ("9", 3),
        (" 2 ", 1),
    ],
)
def test_car_cost_type(car_cost_type: object, identity: int) -> None:
    """Every car_cost_type maps to an inIdentity of the standard, in carIn and carOut alike."""
    message = car_in(car_cost_type=car_cost_type, car_type="军警车")
    assert isinstance(message.data, dict)
    assert message.data["inIdentity"] == identity
    valid(message)
    out = car_out(car_cost_type=car_cost_type)
    assert isinstance(out.data, dict)
    assert out.data["inIdentity"] == identity
    valid(out)


@pytest.mark.parametrize("car_cost_type", [0, 10, -1])
def test_an_undefined_car_cost_type_leaves_in_identity_out(car_cost_type: int) -> None:
    """A car_cost_type the SDK does not define says nothing the standard can carry: no inIdentity."""
    message = car_in(car_cost_type=car_cost_type)
    assert isinstance(message.data, dict)
    assert "inIdentity" not in message.data


@pytest.mark.parametrize("car_cost_type", ["abc", 1.5, True, [1], {}])
def test_a_car_cost_type_that_is_no_number_is_refused(car_cost_type: object) -> None:
    """A car_cost_type that is not a whole number is refused naming it."""
    with pytest.raises(Untranslatable) as caught:
        car_in(car_cost_type=car_cost_type)
    assert caught.value.field == "car_cost_type"
    assert caught.value.reason.startswith("not a whole number")


@pytest.mark.parametrize(
    ("car_type", "identity"),
    [
        ("月租车", 1),
        ("月卡车", 1),
        ("临时车", 2),
        ("临停车", 2),
        ("储值车", 3),
        ("军警车", 4),
        ("免费车", 5),
        ("会员免费车", 5),
        ("小车", None),
        ("大车", None),
        ("贵宾车", None),
        ("", None),
        (None, None),
        (1, None),
        (..., None),
    ],
)
def test_car_type_names_a_category_only_without_car_cost_type(car_type: object, identity: int | None) -> None:
    """Without car_cost_type, a category name in car_type gives inIdentity; a size or anything else none."""
    message = car_in(car_cost_type=..., car_type=car_type)
    assert isinstance(message.data, dict)
    assert message.data.get("inIdentity") == identity
    valid(message)
    out = car_out(car_cost_type=..., car_type=car_type)
    assert isinstance(out.data, dict)
    assert out.data.get("inIdentity") == identity


def test_in_time_in_the_zone() -> None:
    """in_time is written as a local time in the zone given."""
    utc = only(translate("in_park", IN_PARK, ZoneInfo("UTC")))
    assert isinstance(utc.data, dict)
    assert utc.data["inTime"] == "2023-11-14 22:13:20"


@pytest.mark.parametrize("value", [IN_TIME, str(IN_TIME), f"  {IN_TIME}\t", float(IN_TIME) + 0.9])
def test_unix_seconds_forms(value: object) -> None:
    """Unix seconds come as an int, a string of digits (blanks around allowed) or a float (truncated)."""
    message = car_in(in_time=value)
    assert isinstance(message.data, dict)
    assert message.data["inTime"] == IN_WIRE


@pytest.mark.parametrize("value", [None, "", ...])
def test_absent_in_time_is_left_out(value: object) -> None:
    """An absent, null or empty in_time leaves inTime out."""
    message = car_in(in_time=value)
    assert isinstance(message.data, dict)
    assert "inTime" not in message.data


@pytest.mark.parametrize("value", [None, "", ...])
def test_absent_channel_is_left_out(value: object) -> None:
    """An absent, null or empty channel id leaves its cross out."""
    message = car_out(in_channel_id=value, out_channel_id=value)
    assert isinstance(message.data, dict)
    assert "inCross" not in message.data
    assert "outCross" not in message.data
    valid(message)


def test_unlisted_legacy_members_are_not_copied() -> None:
    """Legacy members the standard has no place for are left out of the translation."""
    message = car_in(park_id="P1", in_uid="u", pic="...", empty_plot=...)
    assert isinstance(message.data, dict)
    assert set(message.data) == {"recordCode", "carNum", "inCross", "inTime", "inIdentity"}


@pytest.mark.parametrize("service", ["out_park", "upload_order"])
def test_out_makes_car_out_with_string_money(service: str) -> None:
    """out_park and upload_order become one carOut, members in order, money from strings."""
    message = car_out(service)
    assert message.code == "carOut"
    assert message.data == {
        "recordCode": "A1",
        "carNum": "京A12345",
        "inCross": "3",
        "outCross": "4",
        "inTime": IN_WIRE,
        "outTime": OUT_WIRE,
        "inIdentity": 2,  # car_cost_type "1", 临停车
        "parkMinutes": 122,
        "payMoney": 12.5,
        "incomeMoney": 10.0,
        "discountMoney": 2.5,
        "paymentMode": 1,
    }
    assert isinstance(message.data, dict)
    assert list(message.data) == list(CAR_OUT_SOURCES)
    assert dict(message.sources) == CAR_OUT_SOURCES
    valid(message)


@pytest.mark.parametrize("service", ["out_park", "upload_order"])
def test_out_with_numeric_money(service: str) -> None:
    """Money given as numbers is carried as floats."""
    message = car_out(service, amount_receivable=12, total=9.5, reduce_amount=0)
    assert isinstance(message.data, dict)
    amounts = (message.data["payMoney"], message.data["incomeMoney"], message.data["discountMoney"])
    assert amounts == (12.0, 9.5, 0.0)
    assert all(type(amount) is float for amount in amounts)
    valid(message)


@pytest.mark.parametrize("service", ["out_park", "upload_order"])
@pytest.mark.parametrize("missing", [None, "", ...])
def test_out_with_missing_money(service: str, missing: object) -> None:
    """Absent, null or empty money members leave their fields out."""
    message = car_out(service, amount_receivable=missing, total=missing, reduce_amount=missing)
    assert isinstance(message.data, dict)
    assert not {"payMoney", "incomeMoney", "discountMoney"} & set(message.data)
    valid(message)


@pytest.mark.parametrize(
    ("text", "amount"),
    [("12.50", 12.5), (" 3 ", 3.0), ("0", 0.0), ("1e2", 100.0), ("0.1", 0.1), ("-1", -1.0)],
)
def test_money_text(text: str, amount: float) -> None:
    """Money written as decimal text is read exactly as that number."""
    message = car_out(total=text)
    assert isinstance(message.data, dict)
    assert message.data["incomeMoney"] == amount


@pytest.mark.parametrize(
    ("pay_type", "mode"),
    [
        ("cash", 1),  # 现金
        ("wallet", 9),  # 账户余额
        ("sweepcode", 0),  # WeChat or Alipay: 未知
        ("scancode", 0),
        ("auth_code", 0),
        ("monthuser", 8),  # 免费
        ("free", 8),
        ("escape", 0),  # nothing paid: 未知
        ("etc_pay", 7),  # 交通卡
        ("etc", 7),
        (" cash ", 1),
        # "free 和 无效值为免费" (SDK documentation 2.2): any other value means free.
        ("alipay", 8),
        ("CASH", 8),
        (3, 8),
        ([1], 8),
    ],
)
@pytest.mark.parametrize("service", ["out_park", "upload_order"])
def test_pay_type(service: str, pay_type: object, mode: int) -> None:
    """Every pay_type maps to a paymentMode of the standard; a value the SDK does not define means free."""
    message = car_out(service, pay_type=pay_type)
    assert isinstance(message.data, dict)
    assert message.data["paymentMode"] == mode
    valid(message)


@pytest.mark.parametrize("pay_type", ["", None, ...])
def test_no_pay_type_leaves_payment_mode_out(pay_type: object) -> None:
    """Without pay_type the exit says nothing of how it was paid: no paymentMode."""
    message = car_out(pay_type=pay_type)
    assert isinstance(message.data, dict)
    assert "paymentMode" not in message.data


@pytest.mark.parametrize(("seconds", "minutes"), [(0, 0), (59, 0), (60, 1), (119, 1), (120, 2), (3599, 59)])
def test_park_minutes_are_whole_minutes(seconds: int, minutes: int) -> None:
    """parkMinutes is the floor of the seconds between in_time and out_time over 60."""
    message = car_out(out_time=IN_TIME + seconds)
    assert isinstance(message.data, dict)
    assert message.data["parkMinutes"] == minutes


@pytest.mark.parametrize("missing", ["in_time", "out_time"])
def test_park_minutes_need_both_times(missing: str) -> None:
    """Without in_time or out_time, parkMinutes is left out along with the missing time."""
    message = car_out("out_park", **{missing: ...})
    assert isinstance(message.data, dict)
    assert "parkMinutes" not in message.data
    assert ("inTime" in message.data) == (missing != "in_time")
    assert ("outTime" in message.data) == (missing != "out_time")
    valid(message)


@pytest.mark.parametrize("service", ["out_park", "upload_order"])
def test_out_with_empty_plot_also_makes_free_space(service: str) -> None:
    """out_park and upload_order with empty_plot are followed by a freeSpace."""
    messages = translate(service, {**OUT_PARK, "empty_plot": "40"}, ZONE)
    assert messages is not None
    assert [m.code for m in messages] == ["carOut", "freeSpace"]
    assert messages[1].data == {"emptyNum": 40}
    for message in messages:
        valid(message)


def test_out_with_only_required_members() -> None:
    """out_park with only order_id and car_number gives those alone."""
    message = only(translate("out_park", {"order_id": "B", "car_number": "粤C1"}, ZONE))
    assert message.data == {"recordCode": "B", "carNum": "粤C1"}
    valid(message)


@pytest.mark.parametrize(
    ("service", "changes", "field", "reason"),
    [
        ("in_park", {"order_id": ...}, "order_id", "required"),
        ("in_park", {"order_id": None}, "order_id", "required"),
        ("out_park", {"order_id": ""}, "order_id", "required"),
        ("out_park", {"order_id": True}, "order_id", "must be a string or an integer, not a boolean"),
        ("in_park", {"order_id": 1.5}, "order_id", "must be a string or an integer, not a number"),
        ("in_park", {"car_number": ...}, "car_number", "required"),
        ("upload_order", {"car_number": ""}, "car_number", "required"),
        ("in_park", {"car_number": 12345}, "car_number", "must be a string, not a number"),
        ("in_park", {"in_time": "abc"}, "in_time", "not unix seconds: 'abc'"),
        ("in_park", {"in_time": -1}, "in_time", "not unix seconds: -1"),
        ("in_park", {"in_time": "-1"}, "in_time", "not unix seconds: '-1'"),
        ("in_park", {"in_time": -0.5}, "in_time", "not unix seconds: -0.5"),
        ("in_park", {"in_time": True}, "in_time", "not unix seconds: True"),
        ("in_park", {"in_time": "1.5"}, "in_time", "not unix seconds: '1.5'"),
        ("in_park", {"in_time": float("nan")}, "in_time", "not unix seconds: nan"),
        ("in_park", {"in_time": [1]}, "in_time", "not unix seconds: [1]"),
        ("in_park", {"in_time": 10**15}, "in_time", "not unix seconds: 1000000000000000"),
        ("out_park", {"out_time": "tomorrow"}, "out_time", "not unix seconds: 'tomorrow'"),
        ("out_park", {"out_time": IN_TIME - 1}, "out_time", "before in_time"),
        (
            "in_park",
            {"in_channel_id": True},
            "in_channel_id",
            "must be a string or an integer, not a boolean",
        ),
        ("in_park", {"in_channel_id": [3]}, "in_channel_id", "must be a string or an integer, not a list"),
        (
            "out_park",
            {"out_channel_id": {}},
            "out_channel_id",
            "must be a string or an integer, not an object",
        ),
        ("out_park", {"amount_receivable": "abc"}, "amount_receivable", "not an amount in yuan: 'abc'"),
        ("out_park", {"total": True}, "total", "not an amount in yuan: True"),
        ("out_park", {"total": "NaN"}, "total", "not an amount in yuan: 'NaN'"),
        ("out_park", {"total": "inf"}, "total", "not an amount in yuan: 'inf'"),
        ("out_park", {"total": "1e999"}, "total", "not an amount in yuan: '1e999'"),
        ("out_park", {"total": float("inf")}, "total", "not an amount in yuan: inf"),
        ("out_park", {"total": "1_000"}, "total", "not an amount in yuan: '1_000'"),
        ("upload_order", {"reduce_amount": "1.2.3"}, "reduce_amount", "not an amount in yuan: '1.2.3'"),
        ("upload_order", {"reduce_amount": [1]}, "reduce_amount", "not an amount in yuan: [1]"),
        ("in_park", {"empty_plot": "abc"}, "empty_plot", "not a whole number: 'abc'"),
        ("in_park", {"empty_plot": 1.5}, "empty_plot", "not a whole number: 1.5"),
        ("out_park", {"empty_plot": True}, "empty_plot", "not a whole number: True"),
        ("out_park", {"empty_plot": "--1"}, "empty_plot", "not a whole number: '--1'"),
    ],
)
def test_untranslatable(service: str, changes: Mapping[str, object], field: str, reason: str) -> None:
    """A legacy member that cannot be carried over raises Untranslatable naming it and why."""
    base = IN_PARK if service == "in_park" else OUT_PARK
    data = {k: v for k, v in {**base, **changes}.items() if v is not ...}
    with pytest.raises(Untranslatable) as caught:
        translate(service, data, ZONE)
    assert (caught.value.field, caught.value.reason) == (field, reason)
    assert str(caught.value) == f"data.{field}: {reason}"


@pytest.mark.parametrize("service", ["login", "0x11", "price_sync", "in_parks", "IN_PARK", ""])
def test_other_services_are_not_translated(service: str) -> None:
    """Services other than in_park, out_park and upload_order have no translation."""
    assert service not in TRANSLATED
    assert translate(service, IN_PARK, ZONE) is None


def test_translated_services() -> None:
    """The services translated are exactly in_park, out_park and upload_order."""
    assert TRANSLATED == ("in_park", "out_park", "upload_order")


plates = st.text(alphabet="京沪粤ABCDEFG0123456789", min_size=1, max_size=10)
order_ids = st.integers(min_value=0, max_value=10**15) | st.text(
    alphabet="0123456789abcdef-", min_size=1, max_size=20
)
seconds = st.integers(min_value=0, max_value=4_000_000_000)
channels = st.integers(min_value=0, max_value=999) | st.text(alphabet="0123456789AB入口", max_size=10)
amounts = st.integers(min_value=0, max_value=100_000).flatmap(
    lambda fen: st.sampled_from([fen / 100, str(fen / 100), "%d.%02d" % divmod(fen, 100), fen // 100])
)
optional = st.none() | st.just("")


@given(
    service=st.sampled_from(TRANSLATED),
    order_id=order_ids,
    car_number=plates,
    times=st.tuples(seconds, seconds).map(sorted),
    in_channel=channels | optional,
    out_channel=channels | optional,
    car_type=st.sampled_from(
        ["月租车", "临时车", "储值车", "军警车", "免费车", "会员免费车", "小车", "其他"]
    ),
    car_cost_type=st.integers(min_value=0, max_value=10) | st.integers(0, 10).map(str) | optional,
    money=st.tuples(amounts | optional, amounts | optional, amounts | optional),
    pay_type=st.sampled_from(
        ["cash", "wallet", "monthuser", "sweepcode", "scancode", "free", "escape", "etc_pay", "card", ""]
    ),
    empty_plot=st.integers(min_value=0, max_value=10_000).map(str) | optional,
)
def test_translations_pass_the_catalog(
    service: str,
    order_id: int | str,
    car_number: str,
    times: list[int],
    in_channel: object,
    out_channel: object,
    car_type: str,
    car_cost_type: object,
    money: tuple[object, object, object],
    pay_type: str,
    empty_plot: object,
) -> None:
    """Whatever reasonable legacy message is translated, the catalog accepts every message made."""
    data: dict[str, object] = {
        "order_id": order_id,
        "car_number": car_number,
        "in_time": times[0],
        "out_time": times[1],
        "in_channel_id": in_channel,
        "out_channel_id": out_channel,
        "car_type": car_type,
        "car_cost_type": car_cost_type,
        "amount_receivable": money[0],
        "total": money[1],
        "reduce_amount": money[2],
        "pay_type": pay_type,
        "empty_plot": empty_plot,
    }
    messages = translate(service, data, ZONE)
    assert messages is not None
    assert len(messages) == (1 if empty_plot in (None, "") else 2)
    for message in messages:
        valid(message)
        assert isinstance(message.data, dict)
        assert set(message.data) <= set(message.sources)


# --- the shapes of a real SDK 2.1.0.0 ------------------------------------------------------------
# The members and kinds of values of lines a real SDK 2.1.0.0 sent (captured in daiybh/Park_Cloud,
# json_test.go), with values of our own.

SDK_IN_PARK: dict[str, object] = {
    "car_number": "京N8D2K1",
    "in_time": IN_TIME,
    "order_id": "4711",
    "empty_plot": 120,
    "park_id": "30001",
}
SDK_OUT_PARK: dict[str, object] = {
    "car_number": "京N8D2K1",
    "in_time": IN_TIME,
    "out_time": IN_TIME + 35,
    "total": "0.0",
    "order_id": "4711",
    "empty_ plot": 121,
    "park_id": "30001",
    "pay_type": "cash",
    "auth_code": "",
}


def test_an_sdk_2_1_in_park_without_car_type_or_channel() -> None:
    """An in_park without car_type, car_cost_type or in_channel_id: a carIn of what it has, a freeSpace."""
    messages = translate("in_park", SDK_IN_PARK, ZONE)
    assert messages is not None
    car_in_, free_space = messages
    assert car_in_.data == {"recordCode": "4711", "carNum": "京N8D2K1", "inTime": IN_WIRE}
    assert free_space == Message("freeSpace", {"emptyNum": 120}, {"emptyNum": "empty_plot"})
    for message in messages:
        valid(message)


def test_an_sdk_2_1_out_park_with_a_blank_in_empty_plot() -> None:
    """An out_park with total "0.0" and "empty_ plot" (sic): a carOut paid 0.0 in cash and a freeSpace."""
    messages = translate("out_park", SDK_OUT_PARK, ZONE)
    assert messages is not None
    car_out_, free_space = messages
    assert car_out_.data == {
        "recordCode": "4711",
        "carNum": "京N8D2K1",
        "inTime": IN_WIRE,
        "outTime": "2023-11-15 06:13:55",
        "parkMinutes": 0,
        "incomeMoney": 0.0,
        "paymentMode": 1,
    }
    assert free_space == Message("freeSpace", {"emptyNum": 121}, {"emptyNum": "empty_ plot"})
    for message in messages:
        valid(message)


def test_empty_plot_spelt_right_wins_over_the_blank() -> None:
    """When empty_plot and "empty_ plot" are both given empty_plot counts; a bad "empty_ plot" is named so."""
    messages = translate("out_park", {**SDK_OUT_PARK, "empty_plot": 7}, ZONE)
    assert messages is not None
    assert messages[1].data == {"emptyNum": 7}
    with pytest.raises(Untranslatable) as caught:
        translate("out_park", {**SDK_OUT_PARK, "empty_ plot": "many"}, ZONE)
    assert caught.value.field == "empty_ plot"


@pytest.mark.parametrize(
    ("text", "amount"), [("0.0", 0.0), ("0", 0.0), ("6", 6.0), ("0.01", 0.01), (6.5, 6.5)]
)
def test_amounts_as_the_sdk_writes_them(text: object, amount: float) -> None:
    """The SDK writes amounts as strings ("0.0", "6"); each becomes the number in yuan."""
    message = car_out(amount_receivable=text, total=text, reduce_amount=text)
    assert isinstance(message.data, dict)
    assert (message.data["payMoney"], message.data["incomeMoney"], message.data["discountMoney"]) == (
        amount,
    ) * 3


@given(
    texts=st.lists(st.dictionaries(st.sampled_from(["a", "车", "b c"]), st.text(max_size=8)), min_size=1),
    cloud=st.lists(st.booleans(), min_size=1),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
)
def test_frames_of_both_framings_mixed_and_split_anywhere(
    texts: list[dict[str, str]], cloud: list[bool], cuts: list[int]
) -> None:
    """Frames written the cloud's way or as lines, mixed and cut anywhere, give back each JSON text."""
    lines = [json.dumps(text, ensure_ascii=False).encode() for text in texts]
    stream = b"".join(
        frame(line.decode(), CLOUD if cloud[index % len(cloud)] else LINES)
        for index, line in enumerate(lines)
    )
    assert feed_chunks(LineSplitter(), split(stream, cuts)) == lines
