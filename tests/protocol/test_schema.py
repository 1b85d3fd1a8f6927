"""The JSON Schemas of the interfaces' `data`: well formed, true to the samples, in step with
the validator, and the generated interface reference up to date."""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.protocol.catalog import INTERFACES, Field, FieldType, Interface, lookup
from gateway.protocol.schema import (
    DRAFT,
    LIMITS,
    WIRE_TIME_PATTERN,
    all_schemas,
    interface_schema,
    interfaces_markdown,
    main,
)
from gateway.protocol.validation import FieldError, validate
from tests.protocol.samples import RESPONSE_SAMPLES, SAMPLES

try:
    import jsonschema
    import jsonschema.validators
except ImportError:  # not a dependency of the project; the hand checks still run
    jsonschema = None

ROOT = Path(__file__).parent.parent.parent
DIRECTIONS = ("request", "response")

needs_jsonschema = pytest.mark.skipif(
    jsonschema is None,
    reason="jsonschema is not installed (it is not a dependency); the hand checks cover the rest",
)


def _interface(code: str) -> Interface:
    interface = lookup(code)
    assert interface is not None
    return interface


def _fields(interface: Interface, direction: str) -> tuple[Field, ...]:
    return interface.request if direction == "request" else interface.response


# --- a JSON Schema validator with ECMA-262 patterns -------------------------
#
# JSON Schema patterns are ECMA-262: `$` is the end of the text. jsonschema runs them
# with Python's re.search, whose `$` also matches before a final newline; the checks
# below read `$` as `\Z`, which is what the schemas mean.


def _python_regex(pattern: str) -> str:
    assert pattern.startswith("^") and pattern.endswith("$"), pattern
    return pattern[:-1] + r"\Z"


def _make_validator_class() -> Any:
    if jsonschema is None:
        return None

    def pattern(validator: Any, regex: str, instance: object, schema: object) -> Iterator[Any]:
        if isinstance(instance, str) and not re.search(_python_regex(regex), instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {regex!r}")

    return jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": pattern})


ECMA_VALIDATOR = _make_validator_class()


def _schema_validator(code: str, direction: str = "request") -> Any:
    return ECMA_VALIDATOR(interface_schema(_interface(code), direction))


# --- shape -----------------------------------------------------------------


def test_every_interface_has_a_request_schema() -> None:
    """all_schemas() gives a request schema for each of the 31 interfaces, by code, in Table-1
    order, each naming the draft, its URN and its interface."""
    schemas = all_schemas()
    assert list(schemas) == [interface.code for interface in INTERFACES]
    for interface in INTERFACES:
        schema = schemas[interface.code]
        assert schema["$schema"] == DRAFT
        assert schema["$id"] == f"urn:cpmi:t002:{interface.code}:request"
        assert schema["title"] == (
            f"{interface.number} {interface.code} {interface.title} ({interface.table})"
        )
        assert schema == interface_schema(interface, "request")


@pytest.mark.parametrize("interface", INTERFACES, ids=lambda i: i.code)
def test_response_schemas(interface: Interface) -> None:
    """Each interface has a response schema too (fieldless where its table gives none),
    and its description says where schema and gateway differ."""
    schema = interface_schema(interface, "response")
    assert schema["$id"] == f"urn:cpmi:t002:{interface.code}:response"
    description = schema["description"]
    assert isinstance(description, str)
    assert LIMITS in description


def test_direction_is_request_or_response() -> None:
    """Any other direction is a ValueError, not a silently empty schema."""
    with pytest.raises(ValueError, match="direction"):
        interface_schema(INTERFACES[0], "reply")


def _object_schemas(schema: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The object schema of `data`, as given alone and as the list's items."""
    alone, listed = schema["oneOf"]
    assert listed["type"] == "array"
    return alone, listed["items"]


def _field_pairs(
    fields: tuple[Field, ...], properties: dict[str, Any], path: str
) -> Iterator[tuple[str, Field, dict[str, Any]]]:
    """Each catalog field with its property schema, nested ones included."""
    assert list(properties) == [field.name for field in fields], path
    for field in fields:
        prop = properties[field.name]
        yield f"{path}.{field.name}", field, prop
        if field.items:
            branches = prop.get("anyOf", [prop])
            (item,) = [branch for branch in branches if branch.get("type") in ("array", "object")]
            nested = item["items"] if item["type"] == "array" else item
            yield from _field_pairs(field.items, nested["properties"], f"{path}.{field.name}")


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("interface", INTERFACES, ids=lambda i: i.code)
def test_schema_mirrors_the_catalog(interface: Interface, direction: str) -> None:
    """Every catalog field, nested ones too, is a property titled as the catalog titles it;
    required ones are listed as required; unknown members are allowed; a list of objects is
    as good as one object."""
    schema = interface_schema(interface, direction)
    fields = _fields(interface, direction)
    alone, listed = _object_schemas(schema)
    assert alone == listed
    assert alone["additionalProperties"] is True
    assert alone.get("required", []) == [field.name for field in fields if field.required]
    for path, field, prop in _field_pairs(fields, alone["properties"], "data"):
        assert prop["title"] == field.title, path
        assert prop["description"], path
        if field.datetime:
            assert prop["description"].startswith("yyyy-MM-dd HH:mm:ss, gateway's zone"), path


def test_canonical_type_comes_first() -> None:
    """Each field's first alternative is its canonical type: Int an integer, Float a number,
    Boolean a boolean, String a string."""
    first = {
        FieldType.STRING: "string",
        FieldType.INT: "integer",
        FieldType.FLOAT: "number",
        FieldType.BOOLEAN: "boolean",
        FieldType.LIST: "array",
        FieldType.OBJECT: "object",
    }
    for interface in INTERFACES:
        for direction in DIRECTIONS:
            alone, _ = _object_schemas(interface_schema(interface, direction))
            for path, field, prop in _field_pairs(_fields(interface, direction), alone["properties"], ""):
                if "anyOf" in prop:
                    kind = prop["anyOf"][0]["type"]
                else:
                    kind = prop["type"][0] if isinstance(prop["type"], list) else prop["type"]
                assert kind == first[field.type], (interface.code, path)


_KEYWORDS = {
    "$schema", "$id", "title", "description", "type", "anyOf", "oneOf", "not", "enum",
    "pattern", "minLength", "maxLength", "minimum", "maximum", "properties", "required",
    "additionalProperties", "items",
}  # fmt: skip
_TYPES = {"null", "boolean", "object", "array", "number", "integer", "string"}


def _check_structure(schema: object, path: str) -> None:
    """A small structural check of the keywords the schemas use (no jsonschema needed)."""
    assert isinstance(schema, dict), path
    assert set(schema) <= _KEYWORDS, (path, set(schema) - _KEYWORDS)
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert kinds and set(kinds) <= _TYPES and len(set(kinds)) == len(kinds), path
    for keyword in ("anyOf", "oneOf"):
        if keyword in schema:
            assert isinstance(schema[keyword], list) and schema[keyword], path
            for index, branch in enumerate(schema[keyword]):
                _check_structure(branch, f"{path}/{keyword}/{index}")
    for keyword in ("not", "items"):
        if keyword in schema:
            _check_structure(schema[keyword], f"{path}/{keyword}")
    if "properties" in schema:
        for name, prop in schema["properties"].items():
            _check_structure(prop, f"{path}/properties/{name}")
    if "required" in schema:
        assert set(schema["required"]) <= set(schema.get("properties", {})), path
        assert len(set(schema["required"])) == len(schema["required"]), path
    if "enum" in schema:
        values = schema["enum"]
        assert values and len({json.dumps(value) for value in values}) == len(values), path
    if "pattern" in schema:
        re.compile(_python_regex(schema["pattern"]))
        # No lookaround or backreferences: RE2-based validators must take them too.
        assert "(?=" not in schema["pattern"] and "(?!" not in schema["pattern"], path
        assert "\\d" not in schema["pattern"], path  # Python's \d is not ECMA's
    for low, high in (("minLength", "maxLength"), ("minimum", "maximum")):
        if low in schema and high in schema:
            assert schema[low] <= schema[high], path
    for keyword in ("title", "description"):
        if keyword in schema:
            assert isinstance(schema[keyword], str) and schema[keyword], path


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("interface", INTERFACES, ids=lambda i: i.code)
def test_schemas_are_well_formed(interface: Interface, direction: str) -> None:
    """Each schema uses only known keywords in their documented shapes, survives a JSON
    round trip unchanged, and its patterns compile."""
    schema = interface_schema(interface, direction)
    _check_structure(schema, interface.code)
    assert json.loads(json.dumps(schema, ensure_ascii=False)) == schema


@needs_jsonschema
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("interface", INTERFACES, ids=lambda i: i.code)
def test_schemas_are_valid_draft_2020_12(interface: Interface, direction: str) -> None:
    """Each schema is valid against the draft 2020-12 metaschema."""
    jsonschema.Draft202012Validator.check_schema(interface_schema(interface, direction))


# --- the samples -----------------------------------------------------------


def _sample_cases() -> list[tuple[str, str, object]]:
    cases: list[tuple[str, str, object]] = []
    for direction, samples in (("request", SAMPLES), ("response", RESPONSE_SAMPLES)):
        cases.extend((code, direction, sample) for code, sample in samples.items())
    return cases


@needs_jsonschema
@pytest.mark.parametrize("code, direction, sample", _sample_cases())
def test_samples_are_valid(code: str, direction: str, sample: object) -> None:
    """Every request and response sample is valid against its schema."""
    errors = list(_schema_validator(code, direction).iter_errors(sample))
    assert not errors, [error.message for error in errors]


def _check_members_by_hand(fields: tuple[Field, ...], schema: dict[str, Any], data: object) -> None:
    items = data if isinstance(data, list) else [data]
    for item in items:
        assert isinstance(item, dict)
        assert set(schema.get("required", [])) <= set(item)
        assert set(item) <= set(schema["properties"])
        for field in fields:
            if field.items and item.get(field.name):
                prop = schema["properties"][field.name]
                nested = next(branch for branch in prop["anyOf"] if branch.get("type") == "array")
                _check_members_by_hand(field.items, nested["items"], item[field.name])


@pytest.mark.parametrize("code, direction, sample", _sample_cases())
def test_samples_have_the_schema_members(code: str, direction: str, sample: object) -> None:
    """Checked by hand (no jsonschema): each sample carries its schema's required members
    and only members its schema lists, nested lists included."""
    interface = _interface(code)
    alone, _ = _object_schemas(interface_schema(interface, direction))
    _check_members_by_hand(_fields(interface, direction), alone, sample)


# --- agreement with the validator ------------------------------------------


def _gateway_accepts(fields: tuple[Field, ...], data: object) -> bool:
    try:
        validate(fields, data)
    except FieldError:
        return False
    return True


@needs_jsonschema
@pytest.mark.parametrize(
    "data",
    [{}, [], [{}], "x", 5, None, [5], [[]], [{"recordCode": "R1", "carNum": "A"}, "x"]],
    ids=repr,
)
def test_top_level_shapes_agree(data: object) -> None:
    """`data` as an object, a list of objects (an empty one too) or anything else is judged
    alike by the schema and the gateway (heartbeat has no fields, carIn requires two)."""
    for code in ("heartbeat", "carIn"):
        fields = _interface(code).request
        assert _schema_validator(code).is_valid(data) == _gateway_accepts(fields, data), code


_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_FLOAT_REPR_MAX = 24


def _documented_gap(field: Field, value: object) -> bool:
    """Whether `value` for `field` is one of the cases LIMITS names, where the schema cannot
    see what the gateway sees."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return True  # not JSON; the gateway's parser refuses NaN, and 1e400 is in LIMITS
        if field.type is FieldType.BOOLEAN and value.is_integer():
            return True  # 1.0 is 1 to JSON Schema, not a Boolean to the gateway
        if field.type is FieldType.STRING and not field.datetime:
            if (field.enum is not None or field.max_length is not None) and value.is_integer():
                return True  # judged by value here, by repr() ("1.0", "1e+30") there
            if field.max_length is not None and field.max_length < _FLOAT_REPR_MAX:
                return True  # a fraction's repr() may or may not fit: refused here
    if field.type is FieldType.FLOAT and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value):
        return not math.isfinite(float(value))  # "1e400"
    return False


_TEXTS = [
    "", "x", "true", "false", "True", "FALSE", "tRuE", "0", "1", "00", "007", "-0", "-1",
    "+1", "1.0", "1.", ".5", "-.5", "1e3", "1E+3", "1e", "e3", ".", "-", "+", "1.5.5", " 1",
    "1 ", "1\n", "\n", "yes", "on", "inf", "nan", "1e400", "-1e400", "1_0", "٣", "１",
    "2026-11-24 08:30:00", "2026-11-24 08:30:00\n", "2026-11-24T08:30:00", "2026-02-29 00:00:00",
    "2024-02-29 23:59:59", "1900-02-29 12:00:00", "2000-02-29 12:00:00", "0000-01-01 00:00:00",
    "2026-11-24 24:00:00", "2026-11-24 8:30:00", "２０２６-11-24 08:30:00",
]  # fmt: skip


def _wire_like() -> st.SearchStrategy[str]:
    """yyyy-MM-dd HH:mm:ss shapes with each number a little out of range now and then."""
    return st.builds(
        "{:04d}-{:02d}-{:02d} {:02d}:{:02d}:{:02d}".format,
        st.integers(0, 9999),
        st.integers(0, 13),
        st.integers(0, 32),
        st.integers(0, 24),
        st.integers(0, 60),
        st.integers(0, 60),
    )


def _values(field: Field, sample_item: dict[str, object] | None) -> st.SearchStrategy[object]:
    """Values to put in `field`: right, wrong and borderline, of every JSON type."""
    options: list[st.SearchStrategy[object]] = [
        st.none(),
        st.booleans(),
        st.sampled_from(_TEXTS),
        st.text(max_size=30),
        st.text(alphabet="0123456789+-.eE", max_size=8),
        st.from_regex(r"-?[0-9]{1,30}", fullmatch=True),
        st.integers(),
        st.integers(-(10**30), 10**30),
        st.floats(allow_nan=False, allow_infinity=False),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.sampled_from([0.0, 1.0, -1.0, 0.5, 12.5, 1e16, 1e30, 1e300]),
        _wire_like(),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    ]
    if field.max_length is not None:
        n = field.max_length
        options.append(st.text(min_size=max(n - 1, 0), max_size=n + 1))
        options.append(st.sampled_from([10**n - 1, 10**n, -(10 ** (n - 1) - 1), -(10 ** (n - 1))]))
    if field.enum is not None:
        codes: list[object] = [*field.enum]
        codes += [str(code) for code in field.enum] + [int(code) for code in field.enum]
        codes += [f"0{code}" for code in field.enum] + [f"-{code}" for code in field.enum]
        codes += [float(code) for code in field.enum] + [max(int(code) for code in field.enum) + 1]
        options.append(st.sampled_from(codes))
    if field.items and sample_item is not None:
        options.append(st.lists(st.just(sample_item), max_size=2))
        options.append(st.lists(st.sampled_from([sample_item, {}, 5, "x", []]), max_size=3))
    return st.one_of(options)


_ABSENT = object()

# The interfaces the property covers: report, command and sync, with nested lists.
_AGREEMENT_CODES = ("carIn", "carOut", "backfill", "feeQuery", "monthCard")


def _agreement_cases() -> list[tuple[str, str | None, Field]]:
    cases: list[tuple[str, str | None, Field]] = []
    for code in _AGREEMENT_CODES:
        for field in _interface(code).request:
            cases.append((code, None, field))
            for item in field.items:
                cases.append((code, field.name, item))
    return cases


def _put(code: str, outer: str | None, field: Field, value: object) -> object:
    """The code's sample with `field` (inside the first item of `outer`) set to `value`."""
    data = copy.deepcopy(SAMPLES[code])
    assert isinstance(data, dict)
    target = data
    if outer is not None:
        items = data[outer]
        assert isinstance(items, list) and isinstance(items[0], dict)
        target = items[0]
    if value is _ABSENT:
        target.pop(field.name, None)
    else:
        target[field.name] = value
    return data


def _nested_sample(code: str, field: Field) -> dict[str, object] | None:
    sample = SAMPLES[code]
    assert isinstance(sample, dict)
    items = sample.get(field.name)
    return copy.deepcopy(items[0]) if isinstance(items, list) and items else None


@needs_jsonschema
@pytest.mark.parametrize(
    "code, outer, field",
    _agreement_cases(),
    ids=[f"{code}.{outer + '[].' if outer else ''}{field.name}" for code, outer, field in _agreement_cases()],
)
def test_schema_agrees_with_the_validator(code: str, outer: str | None, field: Field) -> None:
    """For any value of a field (absent, null, of any JSON type, borderline), the message is
    valid against the schema exactly when validate() accepts it, outside the cases LIMITS
    documents."""
    is_valid = _schema_validator(code).is_valid
    fields = _interface(code).request
    values = st.one_of(st.just(_ABSENT), _values(field, _nested_sample(code, field)))

    # The property is given inside the parametrized test: pytest-twisted rewraps a
    # @given test once per parameter, which breaks on the second one.
    @settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(value=values)
    def agree(value: object) -> None:
        if value is not _ABSENT and _documented_gap(field, value):
            return
        message = _put(code, outer, field, value)
        assert is_valid(message) == _gateway_accepts(fields, message), value

    agree()


def _is_real_wire_time(text: str) -> bool:
    try:
        datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return False
    return len(text) == 19 and text.isascii()


def test_wire_time_pattern_knows_the_calendar() -> None:
    """The wire-time pattern takes 29 February exactly in leap years, the last day of every
    month and no day after it, for every year 0001-9999; year 0000 is no year."""
    pattern = re.compile(_python_regex(WIRE_TIME_PATTERN))
    for year in range(10000):
        for month, day in ((2, 28), (2, 29), (2, 30), (4, 30), (4, 31), (12, 31), (12, 32)):
            text = f"{year:04d}-{month:02d}-{day:02d} 12:00:00"
            assert bool(pattern.search(text)) == _is_real_wire_time(text), text


@given(text=st.one_of(_wire_like(), st.text(alphabet="0123456789-: ", min_size=17, max_size=21)))
def test_wire_time_pattern_is_the_validators(text: str) -> None:
    """The wire-time pattern matches exactly the texts strptime reads as yyyy-MM-dd HH:mm:ss."""
    assert bool(re.search(_python_regex(WIRE_TIME_PATTERN), text)) == _is_real_wire_time(text)


@given(number=st.floats(allow_nan=False, allow_infinity=False))
def test_float_text_is_at_most_24_characters(number: float) -> None:
    """repr() of a finite float has at most 24 characters, so a String field that long takes
    any number (what the schema assumes)."""
    assert len(repr(number)) <= _FLOAT_REPR_MAX


def test_required_fields_refuse_null_and_empty_text() -> None:
    """A required String has no null and no "" alternative; an optional one has both."""
    alone, _ = _object_schemas(interface_schema(_interface("carIn")))
    record = alone["properties"]["recordCode"]["anyOf"]
    assert {"type": "null"} not in record
    assert record[0]["minLength"] == 1
    crossing = alone["properties"]["inCross"]["anyOf"]
    assert {"type": "null"} in crossing
    assert "minLength" not in crossing[0]


def test_optional_enumerations_take_their_defaults() -> None:
    """An optional Int enumeration lists 0 and an optional String enumeration lists "",
    as the validator lets them through."""
    alone, _ = _object_schemas(interface_schema(_interface("carIn")))
    assert alone["properties"]["inIdentity"]["anyOf"][0]["enum"] == [0, 1, 2, 3, 4, 5]
    blacklist, _ = _object_schemas(interface_schema(_interface("blacklist")))
    assert blacklist["properties"]["carType"]["anyOf"][0]["enum"] == ["", "1", "2", "3", "4"]


# --- the interface reference -----------------------------------------------


def test_docs_are_up_to_date() -> None:
    """docs/interfaces.md is exactly what the catalog generates (run
    `python -m gateway.protocol.schema docs/interfaces.md` after changing the catalog)."""
    committed = (ROOT / "docs" / "interfaces.md").read_text(encoding="utf-8")
    assert committed == interfaces_markdown()


def test_reference_lists_every_interface_and_field() -> None:
    """The reference has a heading per interface and a row per field, nested ones as
    `list[].member`."""
    text = interfaces_markdown()
    for interface in INTERFACES:
        assert f"\n## {interface.number}. {interface.code} — {interface.title} ({interface.table})\n" in text
    assert "| `couponList[].usercouponId` |" in text
    assert "| `paymentRecordList[].payStatus` |" in text


def test_main_writes_the_reference(tmp_path: Path) -> None:
    """`python -m gateway.protocol.schema PATH` writes the reference to PATH."""
    target = tmp_path / "interfaces.md"
    assert main([str(target)]) == 0
    assert target.read_text(encoding="utf-8") == interfaces_markdown()


def test_main_wants_one_path(capsys: pytest.CaptureFixture[str]) -> None:
    """Without exactly one path the entry point prints its usage and returns 2."""
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err
