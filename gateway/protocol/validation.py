"""Checking a message's `data` against the catalog's fields, on the hot path of every uplink.

Lenient where nothing is lost, strict otherwise: lot software often writes numbers
as strings or strings as numbers, so "5" is taken for an Int field and 12 for a
String one, but 5.5 for an Int or "abc" for a Float is refused. The result is the
normalised copy of `data` - or `data` itself when nothing needed normalising - with
members the catalog does not know kept untouched, in their places.

Default values (B.2.3.5): null means absent; "" is allowed for any String field,
including one with a date-time format or an enumeration; 0 is allowed for an Int
field with an enumeration that lacks it (lots write 0 for "not set"). A required
field that is absent, null or "" is an error; a required Int enumeration does not
take 0 unless it lists it.

Each tuple of fields is compiled once into a name -> check table, kept as long as
the tuple lives (the catalog's tuples live for the process).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime

from attrs import frozen

from gateway.protocol.catalog import Field, FieldType

__all__ = ["FieldError", "validate"]


@frozen
class FieldError(Exception):
    """A member of `data` is not what its interface allows; `path` names it."""

    path: str
    reason: str

    def message(self) -> str:
        """The error as one line for `resultMessage` and logs."""
        return f"{self.path}: {self.reason}"

    def __str__(self) -> str:
        return self.message()


# (value, prefix) -> the normalised value, or the same object when it is fine as
# it is. `prefix` is the path of the object holding the value ("data",
# "data[2]", "data.couponList[0]"); the path is only built when there is an error.
_Check = Callable[[object, str], object]


class _Schema:
    """A tuple of fields compiled for checking objects."""

    __slots__ = ("checks", "fields", "required")

    def __init__(self, fields: tuple[Field, ...]) -> None:
        self.fields = fields  # keeps the tuple alive, so its id stays its own
        self.checks: dict[str, _Check] = {field.name: _compile(field) for field in fields}
        self.required = tuple(field.name for field in fields if field.required)


_SCHEMAS: dict[int, _Schema] = {}
_SCHEMAS_MAX = 4096


def _schema(fields: tuple[Field, ...]) -> _Schema:
    # Keyed by identity: hashing a tuple of attrs values on every call would cost
    # more than checking the message. Catalog tuples are few and permanent; the
    # bound only matters to callers building field tuples on the fly.
    schema = _SCHEMAS.get(id(fields))
    if schema is None or schema.fields is not fields:
        if len(_SCHEMAS) >= _SCHEMAS_MAX:
            _SCHEMAS.clear()
        schema = _SCHEMAS[id(fields)] = _Schema(fields)
    return schema


def validate(fields: tuple[Field, ...], data: object) -> object:
    """Validate `data` (a dict, or a list of dicts) against `fields` and return the normalised
    copy (or the same object when nothing changed). Raises FieldError naming the first bad field.

    "First" is per object: a missing required field, in catalog order, before the members
    present, in their order.
    """
    schema = _schema(fields)
    if isinstance(data, dict):
        return _check_object(schema, data, "data")
    if isinstance(data, list):
        return _check_objects(schema, data, "data")
    raise FieldError("data", "must be an object or a list of objects")


def _check_object(schema: _Schema, obj: dict[str, object], prefix: str) -> dict[str, object]:
    for name in schema.required:
        value = obj.get(name)
        if value is None or value == "":
            raise FieldError(f"{prefix}.{name}", "required")
    checks = schema.checks
    out: dict[str, object] | None = None
    for key, value in obj.items():
        if value is None:
            continue
        check = checks.get(key)
        if check is None:
            continue
        new = check(value, prefix)
        if new is not value:
            if out is None:
                out = dict(obj)
            out[key] = new
    return obj if out is None else out


def _check_objects(schema: _Schema, items: list[object], path: str) -> list[object]:
    out: list[object] | None = None
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise FieldError(f"{path}[{index}]", "must be an object")
        new = _check_object(schema, item, f"{path}[{index}]")
        if new is not item:
            if out is None:
                out = list(items)
            out[index] = new
    return items if out is None else out


def _show(value: object) -> str:
    """A value as an error message quotes it: repr, cut short."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return "a very long number"
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value: object) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is True or value is False:
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _is_wire_time(text: str) -> bool:
    """Whether `text` is exactly yyyy-MM-dd HH:mm:ss and a real date and time."""
    if (
        len(text) != 19
        or text[4] != "-"
        or text[7] != "-"
        or text[10] != " "
        or text[13] != ":"
        or text[16] != ":"
        or not text.isascii()
    ):
        return False
    # With the shape fixed, fromisoformat (in C) accepts exactly the two-digit
    # fields strptime(text, "%Y-%m-%d %H:%M:%S") would, at a twentieth of the
    # cost; tests/protocol/test_validation.py checks that against strptime.
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _is_integer_text(text: str) -> bool:
    """Whether `text` is an optionally negative run of ASCII digits, nothing else."""
    if not text.isascii():
        return False
    if text[:1] == "-":
        text = text[1:]
    return text.isdigit()


_FLOAT_CHARACTERS = frozenset("0123456789+-.eE")


def _compile(field: Field) -> _Check:
    """The check of one field, specialised to its type."""
    if field.type is FieldType.STRING:
        return _string_check(field)
    if field.type is FieldType.INT:
        return _int_check(field)
    if field.type is FieldType.FLOAT:
        return _float_check(field)
    if field.type is FieldType.BOOLEAN:
        return _boolean_check(field)
    if field.type is FieldType.LIST:
        return _list_check(field)
    return _object_check(field)


def _enum_reason(allowed: tuple[int, ...] | tuple[str, ...]) -> str:
    return "not one of " + ", ".join(str(value) for value in allowed)


def _string_check(field: Field) -> _Check:
    name = field.name
    max_length = field.max_length
    allowed = frozenset(field.enum) if field.enum is not None else None
    enum_reason = _enum_reason(field.enum) if field.enum is not None else ""
    wire_time = field.datetime

    def check(value: object, prefix: str) -> object:
        if isinstance(value, str):
            text = value
        elif isinstance(value, bool):
            raise FieldError(f"{prefix}.{name}", "must be a string, not a boolean")
        elif isinstance(value, int):
            try:
                text = str(value)
            except ValueError:  # more digits than Python will print
                raise FieldError(f"{prefix}.{name}", "number too long") from None
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise FieldError(f"{prefix}.{name}", f"not a finite number: {_show(value)}")
            text = repr(value)
        else:
            raise FieldError(f"{prefix}.{name}", f"must be a string, not {_kind(value)}")
        if not text:
            return value  # the default value (B.2.3.5)
        # The format first: "not a time" says more than "too long" about a time.
        if wire_time and not _is_wire_time(text):
            raise FieldError(f"{prefix}.{name}", f"not a yyyy-MM-dd HH:mm:ss time: {_show(text)}")
        if max_length is not None and len(text) > max_length:
            raise FieldError(f"{prefix}.{name}", f"longer than {max_length} characters")
        if allowed is not None and text not in allowed:
            raise FieldError(f"{prefix}.{name}", f"{enum_reason}: {_show(text)}")
        return text

    return check


def _int_check(field: Field) -> _Check:
    name = field.name
    allowed = frozenset(field.enum) if field.enum is not None else None
    enum_reason = _enum_reason(field.enum) if field.enum is not None else ""
    if allowed is not None and not field.required:
        allowed = allowed | {0}  # the default value (B.2.3.5)

    def check(value: object, prefix: str) -> object:
        number: int
        if isinstance(value, bool):
            raise FieldError(f"{prefix}.{name}", "must be an integer, not a boolean")
        if isinstance(value, int):
            number = value
        elif isinstance(value, str):
            if not _is_integer_text(value):
                raise FieldError(f"{prefix}.{name}", f"not an integer: {_show(value)}")
            try:
                number = int(value)
            except ValueError:  # more digits than Python will read
                raise FieldError(f"{prefix}.{name}", "number too long") from None
        elif isinstance(value, float):
            if not value.is_integer():
                raise FieldError(f"{prefix}.{name}", f"not an integer: {_show(value)}")
            number = int(value)
        else:
            raise FieldError(f"{prefix}.{name}", f"must be an integer, not {_kind(value)}")
        if allowed is not None and number not in allowed:
            raise FieldError(f"{prefix}.{name}", f"{enum_reason}: {_show(number)}")
        return number

    return check


def _float_check(field: Field) -> _Check:
    name = field.name

    def check(value: object, prefix: str) -> object:
        if isinstance(value, bool):
            raise FieldError(f"{prefix}.{name}", "must be a number, not a boolean")
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise FieldError(f"{prefix}.{name}", f"not a finite number: {_show(value)}")
            return value
        if isinstance(value, str):
            if value and _FLOAT_CHARACTERS.issuperset(value):
                try:
                    number = float(value)
                except ValueError:
                    pass
                else:
                    if math.isfinite(number):
                        return number
            raise FieldError(f"{prefix}.{name}", f"not a number: {_show(value)}")
        raise FieldError(f"{prefix}.{name}", f"must be a number, not {_kind(value)}")

    return check


_BOOLEAN_TEXT = {"true": True, "false": False, "1": True, "0": False}


def _boolean_check(field: Field) -> _Check:
    name = field.name

    def check(value: object, prefix: str) -> object:
        if value is True or value is False:
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
            return value == 1
        if isinstance(value, str):
            answer = _BOOLEAN_TEXT.get(value.lower())
            if answer is not None:
                return answer
        raise FieldError(f"{prefix}.{name}", f"not true, false, 0 or 1: {_show(value)}")

    return check


def _list_check(field: Field) -> _Check:
    name = field.name
    schema = _Schema(field.items) if field.items else None

    def check(value: object, prefix: str) -> object:
        if not isinstance(value, list):
            raise FieldError(f"{prefix}.{name}", f"must be a list, not {_kind(value)}")
        if schema is None:
            return value
        return _check_objects(schema, value, f"{prefix}.{name}")

    return check


def _object_check(field: Field) -> _Check:
    name = field.name
    schema = _Schema(field.items)

    def check(value: object, prefix: str) -> object:
        if not isinstance(value, dict):
            raise FieldError(f"{prefix}.{name}", f"must be an object, not {_kind(value)}")
        return _check_object(schema, value, f"{prefix}.{name}")

    return check
