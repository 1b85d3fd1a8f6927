"""Validation of `data` against catalog fields: coercions, limits, paths and default values."""

from __future__ import annotations

import copy
import math
import re
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.catalog import INTERFACES, Field, FieldType, Interface, lookup
from gateway.protocol.validation import FieldError, validate
from tests.protocol.samples import RESPONSE_SAMPLES, SAMPLES


def _interface(code: str) -> Interface:
    interface = lookup(code)
    assert interface is not None
    return interface


CAR_IN = _interface("carIn").request
CAR_OUT = _interface("carOut").request
CAR_IMAGE = _interface("carImage").request
PARK_ENV = _interface("parkEnv").request
FEE_QUERY = _interface("feeQuery").request
BLACKLIST = _interface("blacklist").request
GATE_OPEN = _interface("gateOpen").request


def _base_car_in(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {"recordCode": "R1", "carNum": "京A12345"}
    data.update(changes)
    return data


def _member(data: object, name: str) -> object:
    """The member `name` of a validated object."""
    assert isinstance(data, dict)
    return data[name]


def _error(fields: tuple[Field, ...], data: object) -> FieldError:
    with pytest.raises(FieldError) as caught:
        validate(fields, data)
    return caught.value


# --- the samples -----------------------------------------------------------


@pytest.mark.parametrize("interface", INTERFACES, ids=lambda i: i.code)
def test_every_interface_has_a_request_sample(interface: Interface) -> None:
    """samples.SAMPLES holds a request `data` for every interface (heartbeat's is {})."""
    assert interface.code in SAMPLES
    if not interface.request:
        assert SAMPLES[interface.code] == {}


@pytest.mark.parametrize("code", sorted(SAMPLES))
def test_request_samples_validate_unchanged(code: str) -> None:
    """Each request sample validates against its interface's request and comes back as it is."""
    sample = SAMPLES[code]
    before = copy.deepcopy(sample)
    assert validate(_interface(code).request, sample) is sample
    assert sample == before


@pytest.mark.parametrize("interface", INTERFACES, ids=lambda i: i.code)
def test_every_response_has_a_sample(interface: Interface) -> None:
    """samples.RESPONSE_SAMPLES answers exactly the interfaces whose table has response fields."""
    assert (interface.code in RESPONSE_SAMPLES) == bool(interface.response)


@pytest.mark.parametrize("code", sorted(RESPONSE_SAMPLES))
def test_response_samples_validate_unchanged(code: str) -> None:
    """Each response sample validates against its interface's response as it is."""
    sample = RESPONSE_SAMPLES[code]
    assert validate(_interface(code).response, sample) is sample


@pytest.mark.parametrize("code", sorted(SAMPLES))
def test_samples_use_only_catalog_fields(code: str) -> None:
    """The samples carry no member their interface does not define (unknown keys are tested
    separately), so they show the catalog as it is."""
    sample = SAMPLES[code]
    names = {field.name for field in _interface(code).request}
    for item in sample if isinstance(sample, list) else [sample]:
        assert set(item) <= names


def test_string_samples_normalise_to_the_samples() -> None:
    """A carOut written with every number as a string normalises to the typed sample."""
    sample = SAMPLES["carOut"]
    assert isinstance(sample, dict)
    as_text = {key: str(value) if isinstance(value, int | float) else value for key, value in sample.items()}
    assert validate(CAR_OUT, as_text) == sample


# --- coercions -------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected", [(5, 5), ("5", 5), ("-3", -3), ("007", 7), (5.0, 5), (0, 0), (-2.0, -2)]
)
def test_int_accepts_lossless_forms(value: object, expected: int) -> None:
    """An Int field takes an int, the text of an integer, or a float with no fraction, as int."""
    result = validate(PARK_ENV, {"totalNum": value})
    assert result == {"totalNum": expected}
    assert type(_member(result, "totalNum")) is int


@pytest.mark.parametrize(
    "value",
    [True, False, 5.5, "5.5", "abc", " 7 ", "7 ", "+7", "1_000", "", "-", "٣", "1e3",
     math.inf, math.nan, [], {}, [5]],
)  # fmt: skip
def test_int_rejects_lossy_forms(value: object) -> None:
    """An Int field refuses booleans, fractions, padded or non-ASCII text and non-numbers."""
    assert _error(PARK_ENV, {"totalNum": value}).path == "data.totalNum"


@pytest.mark.parametrize(
    "value, expected",
    [(12.5, 12.5), (12, 12), ("12.50", 12.5), ("12", 12.0), ("-0.5", -0.5), ("1e2", 100.0)],
)
def test_float_accepts_numbers_and_numeric_text(value: object, expected: float) -> None:
    """A Float field takes ints and floats as they are, and numeric text as a float."""
    result = validate(CAR_OUT, _base_car_in(payMoney=value))
    assert _member(result, "payMoney") == expected
    if isinstance(value, str):
        assert type(_member(result, "payMoney")) is float
    else:
        assert _member(result, "payMoney") is value


@pytest.mark.parametrize(
    "value",
    [True, False, math.nan, math.inf, -math.inf, "nan", "inf", "Infinity", "abc", "", " 1",
     "1 ", "1_0", "1e400", "１２", [], {}],
)  # fmt: skip
def test_float_rejects_non_numbers(value: object) -> None:
    """A Float field refuses booleans, NaN and infinities, and text that is not a plain number."""
    error = _error(CAR_OUT, _base_car_in(payMoney=value))
    assert error.path == "data.payMoney"


@pytest.mark.parametrize(
    "value, expected",
    [(True, True), (False, False), (1, True), (0, False), ("true", True), ("false", False),
     ("1", True), ("0", False), ("True", True), ("FALSE", False)],
)  # fmt: skip
def test_boolean_accepts_its_spellings(value: object, expected: bool) -> None:
    """A Boolean field takes true/false, 0/1 and their text, as a bool."""
    result = validate(GATE_OPEN, {"barCode": "G1", "isOpen": value})
    assert _member(result, "isOpen") is expected


@pytest.mark.parametrize("value", [2, -1, 1.0, 0.0, "yes", "on", "", " 1", [], {}])
def test_boolean_rejects_others(value: object) -> None:
    """A Boolean field refuses other numbers and words."""
    assert _error(GATE_OPEN, {"barCode": "G1", "isOpen": value}).path == "data.isOpen"


@pytest.mark.parametrize("value, expected", [(12, "12"), (-3, "-3"), (12.5, "12.5"), ("x", "x")])
def test_string_accepts_numbers_as_text(value: object, expected: str) -> None:
    """A String field takes text, and numbers converted to their text (lot software does this)."""
    assert _member(validate(CAR_IN, _base_car_in(inCross=value)), "inCross") == expected


@pytest.mark.parametrize("value", [True, False, [], {}, ["a"], {"a": 1}, math.nan, math.inf])
def test_string_rejects_others(value: object) -> None:
    """A String field refuses booleans, lists, objects and non-finite numbers."""
    assert _error(CAR_IN, _base_car_in(inCross=value)).path == "data.inCross"


# --- lengths, enumerations, times ------------------------------------------


def test_length_limit() -> None:
    """A String longer than its maximum is refused, naming the limit; the maximum itself passes."""
    assert validate(CAR_IN, _base_car_in(recordCode="R" * 20))
    error = _error(CAR_IN, _base_car_in(recordCode="R" * 21))
    assert (error.path, error.reason) == ("data.recordCode", "longer than 20 characters")


def test_length_counts_characters() -> None:
    """Lengths count characters, not bytes: fifty Chinese characters fit carNum's 50."""
    assert validate(CAR_IN, _base_car_in(carNum="京" * 50))
    assert _error(CAR_IN, _base_car_in(carNum="京" * 51)).reason == "longer than 50 characters"


def test_length_applies_to_converted_numbers() -> None:
    """A number given for a String field is measured as its text."""
    error = _error(CAR_IN, _base_car_in(inCross=10**20))
    assert (error.path, error.reason) == ("data.inCross", "longer than 20 characters")


def test_enum_rejects_other_values() -> None:
    """A value outside an enumeration is refused, listing the allowed values."""
    error = _error(CAR_IN, _base_car_in(inIdentity=6))
    assert error.path == "data.inIdentity"
    assert error.reason.startswith("not one of 1, 2, 3, 4, 5")


def test_enum_checks_the_coerced_value() -> None:
    """Enumerations are checked after coercion: "3" is 3, and "9" is refused."""
    assert _member(validate(CAR_IN, _base_car_in(inIdentity="3")), "inIdentity") == 3
    assert _error(CAR_IN, _base_car_in(inIdentity="9")).path == "data.inIdentity"


def test_enum_accepts_the_int_default() -> None:
    """0, the default of an Int (B.2.3.5), passes an optional enumeration that lacks it."""
    assert validate(CAR_IN, _base_car_in(inIdentity=0)) == _base_car_in(inIdentity=0)


def test_string_enum() -> None:
    """A String enumeration takes its codes as text or number, and "" as the default."""
    assert validate(BLACKLIST, {"carNum": "京A1", "carType": 2}) == {"carNum": "京A1", "carType": "2"}
    assert validate(BLACKLIST, {"carNum": "京A1", "carType": ""})
    error = _error(BLACKLIST, {"carNum": "京A1", "carType": "5"})
    assert error.path == "data.carType"
    assert error.reason.startswith("not one of 1, 2, 3, 4")


@pytest.mark.parametrize("value", ["2026-11-24 08:30:00", "2024-02-29 23:59:59", ""])
def test_datetime_accepts_real_times(value: str) -> None:
    """A time field takes real yyyy-MM-dd HH:mm:ss times, and "" as the default."""
    assert validate(CAR_IN, _base_car_in(inTime=value))


@pytest.mark.parametrize(
    "value",
    ["2024/01/01", "2024/01/01 08:30:00", "2026-11-24T08:30:00", "2026-11-24 08:30",
     "2026-11-24 8:30:00", "2026-11-24 08:30:00.5", "2026-02-30 00:00:00",
     "2023-02-29 00:00:00", "2026-11-24 24:00:00", "2026-11-24 23:59:60",
     "0000-01-01 00:00:00", "２０２６-11-24 08:30:00", " 2026-11-24 08:30:0"],
)  # fmt: skip
def test_datetime_rejects_others(value: str) -> None:
    """A time field refuses other layouts and impossible dates, quoting the value."""
    error = _error(CAR_IN, _base_car_in(inTime=value))
    assert error.path == "data.inTime"
    assert error.reason.startswith("not a yyyy-MM-dd HH:mm:ss time")


_STRPTIME_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\Z", re.ASCII)


def _strptime_accepts(text: str) -> bool:
    if not _STRPTIME_SHAPE.match(text):
        return False
    try:
        datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return False
    return True


_TIME_LIKE = st.one_of(
    st.datetimes().map(lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S")),
    st.text(alphabet="0123456789-: T+.Z٣", min_size=17, max_size=21),
    st.builds(
        lambda text, index, char: text[:index] + char + text[index + 1 :],
        st.just("2026-11-24 08:30:00"),
        st.integers(0, 18),
        st.sampled_from("0123456789-: T+.,Z_a٣９"),
    ),
)


@given(_TIME_LIKE)
def test_datetime_agrees_with_strptime(text: str) -> None:
    """The time check accepts exactly the two-digit-field texts datetime.strptime accepts."""
    expected = _strptime_accepts(text)
    try:
        validate(CAR_IN, _base_car_in(inTime=text))
    except FieldError:
        assert not expected or text == ""
    else:
        assert expected or text == ""


# --- required, null, unknown keys --------------------------------------------


@pytest.mark.parametrize("data", [{}, {"totalNum": None}, {"totalNum": ""}])
def test_required_missing(data: dict[str, object]) -> None:
    """A required field that is absent, null or "" is refused as required."""
    error = _error(PARK_ENV, data)
    assert (error.path, error.reason) == ("data.totalNum", "required")


def test_required_zero_is_a_value() -> None:
    """0 is a value, not an absence: a required count of 0 passes."""
    assert validate(PARK_ENV, {"totalNum": 0}) == {"totalNum": 0}


def test_null_is_absent() -> None:
    """null in an optional field is the default value: kept as it is, not checked."""
    data = _base_car_in(inTime=None, inIdentity=None, carColor=None)
    assert validate(CAR_IN, data) is data


def test_unknown_keys_kept_in_order() -> None:
    """Members the catalog does not know are kept untouched and every member keeps its place,
    also when a known member is normalised."""
    data = {
        "vendorA": {"x": [1, 2]},
        "recordCode": "R1",
        "zzz": "1",
        "carNum": "京A12345",
        "inIdentity": "2",
        "aaa": None,
        "inCross": 7,
        "extra": 5.5,
    }
    result = validate(CAR_IN, data)
    assert isinstance(result, dict)
    assert list(result) == list(data)
    assert result["vendorA"] is data["vendorA"]
    assert result == {**data, "inIdentity": 2, "inCross": "7"}


def test_no_copy_when_nothing_changes() -> None:
    """validate returns the very object it was given when nothing needed normalising."""
    data = _base_car_in(inIdentity=2, inTime="2026-11-24 08:30:00")
    assert validate(CAR_IN, data) is data
    items = [data, _base_car_in()]
    assert validate(CAR_IN, items) is items


def test_input_not_mutated() -> None:
    """Normalising makes a copy: the caller's data is left as it was."""
    data = _base_car_in(inIdentity="2")
    nested = {"recordCode": "R1", "couponList": [{"couponType": "3"}]}
    assert validate(CAR_IN, data) == _base_car_in(inIdentity=2)
    assert data == _base_car_in(inIdentity="2")
    result = validate(FEE_QUERY, nested)
    assert result == {"recordCode": "R1", "couponList": [{"couponType": 3}]}
    assert nested == {"recordCode": "R1", "couponList": [{"couponType": "3"}]}


# --- shapes and paths ---------------------------------------------------------


@pytest.mark.parametrize("data", ["abc", 5, None, True, 1.5])
def test_data_must_be_objects(data: object) -> None:
    """`data` that is neither an object nor a list is refused at "data"."""
    error = _error(CAR_IN, data)
    assert (error.path, error.reason) == ("data", "must be an object or a list of objects")


def test_list_items_must_be_objects() -> None:
    """A list `data` holding something other than an object is refused at that index."""
    error = _error(CAR_IN, [_base_car_in(), "x"])
    assert (error.path, error.reason) == ("data[1]", "must be an object")


def test_list_data_paths_name_the_index() -> None:
    """Each object of a list `data` is validated, and an error names its index."""
    sample = SAMPLES["carImage"]
    assert isinstance(sample, list)
    images = [*sample, {"recordCode": "R1", "imageType": 9}]
    error = _error(CAR_IMAGE, images)
    assert error.path == "data[2].imageType"
    assert error.reason.startswith("not one of 1, 2, 3, 4")


def test_list_data_normalised_per_item() -> None:
    """Only the items of a list that change are copied; the others are the same objects."""
    first = {"recordCode": "R1", "imageType": 1}
    second = {"recordCode": "R1", "imageType": "2"}
    result = validate(CAR_IMAGE, [first, second])
    assert isinstance(result, list)
    assert result[0] is first
    assert result[1] == {"recordCode": "R1", "imageType": 2}


def test_empty_list_data() -> None:
    """An empty list `data` holds no bad object."""
    data: list[object] = []
    assert validate(CAR_IN, data) is data


def test_nested_list_paths() -> None:
    """Members of a nested list are validated with the list's items; errors name the index."""
    data = {"recordCode": "R1", "couponList": [{"couponType": 0}, {"couponType": 2}]}
    error = _error(FEE_QUERY, data)
    assert error.path == "data.couponList[1].couponType"
    assert error.reason.startswith("not one of 0, 1, 3, 4")


def test_nested_list_paths_under_list_data() -> None:
    """In a list `data`, nested paths start with the item's index."""
    data = [{"recordCode": "R1"}, {"recordCode": "R2", "couponList": [{"endDate": "x"}]}]
    assert _error(FEE_QUERY, data).path == "data[1].couponList[0].endDate"


def test_nested_list_must_be_a_list_of_objects() -> None:
    """A nested list given as something else, or holding non-objects, is refused."""
    error = _error(FEE_QUERY, {"recordCode": "R1", "couponList": {"couponType": 0}})
    assert (error.path, error.reason) == ("data.couponList", "must be a list, not an object")
    error = _error(FEE_QUERY, {"recordCode": "R1", "couponList": [{}, 3]})
    assert (error.path, error.reason) == ("data.couponList[1]", "must be an object")


def test_nested_unknown_members_kept() -> None:
    """Unknown members of nested objects are kept as they are."""
    data = {"recordCode": "R1", "couponList": [{"couponType": 1, "vendorNote": [1, {"a": 2}]}]}
    assert validate(FEE_QUERY, data) is data


def test_list_without_items_takes_any_list() -> None:
    """A List field that names no members takes any list as it is."""
    fields = (Field("tags", FieldType.LIST, "标签"),)
    data = {"tags": [1, "a", None, {"b": 2}]}
    assert validate(fields, data) is data


def test_object_fields() -> None:
    """An Object field is validated with its items, with paths through its name."""
    fields = (
        Field(
            "detail",
            FieldType.OBJECT,
            "明细",
            items=(Field("amount", FieldType.FLOAT, "金额", required=True),),
        ),
    )
    assert validate(fields, {"detail": {"amount": "1.5"}}) == {"detail": {"amount": 1.5}}
    assert _error(fields, {"detail": {}}).path == "data.detail.amount"
    assert _error(fields, {"detail": [1]}).reason == "must be an object, not a list"


def test_required_in_list_items_names_the_index() -> None:
    """A required member missing from the second object of a list `data` is named at data[1]."""
    error = _error(CAR_IN, [_base_car_in(), {"recordCode": "R2"}])
    assert (error.path, error.reason) == ("data[1].carNum", "required")


def test_first_bad_field_is_named() -> None:
    """With several bad members, the error names the first one in the message."""
    error = _error(CAR_IN, _base_car_in(inIdentity=9, inTime="x"))
    assert error.path == "data.inIdentity"


def test_field_error_message() -> None:
    """FieldError is an Exception whose message() and str() read "path: reason"."""
    error = FieldError("data.inTime", "required")
    assert isinstance(error, Exception)
    assert error.message() == "data.inTime: required"
    assert str(error) == "data.inTime: required"


def test_long_values_are_shortened_in_messages() -> None:
    """Error messages quote a bad value, cut short so a picture cannot flood a log."""
    error = _error(CAR_IN, _base_car_in(inTime="9" * 10_000))
    assert len(error.message()) < 120


def test_huge_numbers_are_refused_as_field_errors() -> None:
    """Numbers too long for Python to convert are refused as field errors, not crashes."""
    digits = "9" * 5000
    assert _error(PARK_ENV, {"totalNum": digits}).path == "data.totalNum"
    assert _error(CAR_IN, _base_car_in(inCross=int(digits[:4000]) * 10**1500)).path == ("data.inCross")


# --- properties -------------------------------------------------------------

_JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_CAR_OUT_NAMES = {field.name for field in CAR_OUT}


@given(st.dictionaries(st.text(max_size=12).filter(lambda key: key not in _CAR_OUT_NAMES), _JSON, max_size=8))
def test_unknown_members_pass_untouched(extra: dict[str, object]) -> None:
    """Any members the catalog does not know come back as they were, in their order."""
    data = {"recordCode": "R1", "carNum": "京A12345", **extra}
    result = validate(CAR_OUT, data)
    assert result is data
    assert list(result) == list(data)


_LIMITED_STRINGS = [
    (interface.request, field)
    for interface in INTERFACES
    for field in interface.request
    if field.type is FieldType.STRING and field.max_length is not None
]


@given(st.sampled_from(_LIMITED_STRINGS), st.text(max_size=300))
def test_any_text_in_a_limited_string(pair: tuple[tuple[Field, ...], Field], text: str) -> None:
    """Any text in a length-limited String field is returned or refused naming that field."""
    fields, field = pair
    # "1" satisfies every other required field, String or Int.
    others = {f.name: "1" for f in fields if f.required and f.name != field.name}
    try:
        result = validate(fields, {**others, field.name: text})
    except FieldError as error:
        assert error.path == f"data.{field.name}"
    else:
        assert _member(result, field.name) == text
        assert len(text) <= (field.max_length or 0)


_ANY_FIELD = [
    (interface.code, direction, field)
    for interface in INTERFACES
    for direction, fields in (("request", interface.request), ("response", interface.response))
    for field in fields
]


@given(st.sampled_from(_ANY_FIELD), _JSON, st.booleans())
def test_any_value_anywhere(target: tuple[str, str, Field], value: object, from_sample: bool) -> None:
    """Any JSON value in any field of any interface is accepted or refused with a FieldError;
    validate raises nothing else."""
    code, direction, field = target
    interface = _interface(code)
    fields = interface.request if direction == "request" else interface.response
    base: object = (SAMPLES if direction == "request" else RESPONSE_SAMPLES).get(code, {})
    if not from_sample or not isinstance(base, dict):
        base = {}
    assert isinstance(base, dict)
    data = {**base, field.name: value}
    try:
        validate(fields, data)
    except FieldError as error:
        assert error.path.startswith("data")
        assert error.message() == f"{error.path}: {error.reason}"


@given(_JSON)
def test_any_data(data: object) -> None:
    """Any JSON value as `data` is accepted or refused with a FieldError."""
    for interface in (_interface("carOut"), _interface("feeQuery"), _interface("backfill")):
        try:
            validate(interface.request, data)
        except FieldError:
            pass
