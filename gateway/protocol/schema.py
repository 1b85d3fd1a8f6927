"""JSON Schemas (draft 2020-12) of each interface's `data`, and the interface reference, from the catalog.

The schemas describe what `gateway.protocol.validation.validate` accepts, leniencies
included: an Int field takes the text of an integer, a String field takes a number,
a Boolean takes 0, 1 and their text, null means absent, and "" (String) or 0 (Int
enumeration) is the default value of an optional field. The canonical form comes first
in each field's `anyOf` and is named in its `description`.

Patterns are ECMA-262 regular expressions, as JSON Schema specifies: `$` is the end of
the text and `[0-9]` is written out because Python's `\\d` also matches non-ASCII
digits. (Python's `re`, which the `jsonschema` package uses, lets `$` match before a
final newline: there "1\\n" would pass a pattern the gateway's checks do not.) They use
no lookaround, so RE2-based validators take them too.

Where the two cannot agree is said in `LIMITS`, which every schema's description
carries: JSON Schema judges numbers by value, the validator by how JSON wrote them.

`python -m gateway.protocol.schema docs/interfaces.md` rewrites the interface reference.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.protocol.catalog import INTERFACES, Field, FieldType, Interface

__all__ = [
    "DRAFT",
    "LIMITS",
    "WIRE_TIME_PATTERN",
    "all_schemas",
    "interface_schema",
    "interfaces_markdown",
    "main",
]

DRAFT = "https://json-schema.org/draft/2020-12/schema"

_TIME_NOTE = "yyyy-MM-dd HH:mm:ss"
_ZONE_NOTE = "yyyy-MM-dd HH:mm:ss, gateway's zone"

# yyyy-MM-dd HH:mm:ss naming a real date and time, as `_is_wire_time` in validation
# wants it: years 0001-9999, the days each month has, 29 February in leap years only.
_YEAR = "(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
_LEAP_YEAR = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][48]|[13579][26]|[2468]0)00)"
_MONTH_DAY = (
    "(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    "|02-(?:0[1-9]|1[0-9]|2[0-8]))"
)
_CLOCK = "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
_WIRE_TIME = f"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29) {_CLOCK}"
WIRE_TIME_PATTERN = f"^{_WIRE_TIME}$"
_WIRE_TIME_LENGTH = 19

# The text validation takes for an Int (an optionally negative run of ASCII digits),
# a Float (what float() reads from the characters 0-9 + - . e E) and a Boolean.
_INTEGER_TEXT = "-?[0-9]+"
_FLOAT_TEXT = "^[+-]?(?:[0-9]+\\.?[0-9]*|\\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_BOOLEAN_TEXT = "^(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|0|1)$"

# The longest repr() of a finite float, "-1.2345678901234567e-300": a String field
# at least this long takes any number, written any way.
_FLOAT_TEXT_MAX = 24

LIMITS = (
    "Where this schema and the gateway differ (JSON Schema sees a number's value, the "
    "gateway how JSON wrote it): a number with a fraction or exponent in a String field "
    'is taken as Python writes it (1.0 as "1.0", 1e3 as "1000.0"), so one with an integral '
    "value is judged here as that integer, and a fractional one is allowed here only where "
    f"the field's maximum length is at least {_FLOAT_TEXT_MAX}; 0.0 and 1.0 are not "
    "Booleans; numbers and numeric text beyond a double's range (1e400) and integer text "
    "of more than 4300 digits are refused."
)

_DIRECTIONS = ("request", "response")

Schema = dict[str, object]


def interface_schema(interface: Interface, direction: str = "request") -> Schema:
    """JSON Schema (draft 2020-12) of the interface's `data` for `direction` in ("request", "response")."""
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be 'request' or 'response', not {direction!r}")
    fields = interface.request if direction == "request" else interface.response
    return {
        "$schema": DRAFT,
        "$id": f"urn:cpmi:t002:{interface.code}:{direction}",
        "title": f"{interface.number} {interface.code} {interface.title} ({interface.table})",
        "description": (
            f"The `data` of a {interface.code} {direction}: one object, or a list of them "
            f"(possibly empty). Members not listed are kept as they are. {LIMITS}"
        ),
        # validate() takes a dict, or a list whose items are all dicts (an empty list too).
        "oneOf": [_object_schema(fields), {"type": "array", "items": _object_schema(fields)}],
    }


def all_schemas() -> dict[str, Schema]:
    """The request schema of every interface, by code, in Table-1 order."""
    return {interface.code: interface_schema(interface) for interface in INTERFACES}


def _object_schema(fields: tuple[Field, ...]) -> Schema:
    schema: Schema = {
        "type": "object",
        "properties": {field.name: _field_schema(field) for field in fields},
    }
    required = [field.name for field in fields if field.required]
    if required:
        schema["required"] = required
    schema["additionalProperties"] = True
    return schema


def _field_schema(field: Field) -> Schema:
    if field.type is FieldType.STRING:
        branches, note = _string_branches(field)
    elif field.type is FieldType.INT:
        branches, note = _int_branches(field)
    elif field.type is FieldType.FLOAT:
        branches = [{"type": "number"}, {"type": "string", "pattern": _FLOAT_TEXT}]
        note = "Canonical: a number; its text is taken too"
    elif field.type is FieldType.BOOLEAN:
        branches = [
            {"type": "boolean"},
            {"type": "integer", "enum": [0, 1]},
            {"type": "string", "pattern": _BOOLEAN_TEXT},
        ]
        note = 'Canonical: true or false; 0, 1, "0", "1", "true" and "false" (any case) are taken too'
    elif field.type is FieldType.LIST:
        branch: Schema = {"type": "array"}
        if field.items:
            branch["items"] = _object_schema(field.items)
        branches = [branch]
        note = "A list of objects" if field.items else "A list"
    else:
        branches = [_object_schema(field.items)]
        note = "An object"
    if field.required:
        note += "; required"
    else:
        branches.append({"type": "null"})
        note += "; null means absent"
    if field.datetime:
        parts = [_ZONE_NOTE, field.description if field.description != _TIME_NOTE else "", note]
    else:
        parts = [field.description, note]
    schema: Schema = {
        "title": field.title,
        "description": ". ".join(part for part in parts if part) + ".",
    }
    schema.update(_any_of(branches))
    return schema


def _any_of(branches: list[Schema]) -> Schema:
    """One schema from alternatives: a `type` list when they differ only in type."""
    if len(branches) == 1:
        return branches[0]
    if all(set(branch) == {"type"} for branch in branches):
        return {"type": [branch["type"] for branch in branches]}
    return {"anyOf": branches}


def _string_branches(field: Field) -> tuple[list[Schema], str]:
    """A String field: its text, and the numbers whose text it takes."""
    max_length = field.max_length
    text: Schema = {"type": "string"}
    if field.datetime:
        # A real wire time is 19 characters; saying so also keeps "...\n" out where
        # a Python `$` would let it in.
        length = _WIRE_TIME_LENGTH if max_length is None else min(max_length, _WIRE_TIME_LENGTH)
        pattern = _WIRE_TIME if field.required else f"(?:{_WIRE_TIME})?"
        text["pattern"] = f"^{pattern}$"
        text["maxLength"] = length
        note = "A real date and time"
    else:
        if field.required:
            text["minLength"] = 1
        if max_length is not None:
            text["maxLength"] = max_length
        note = "Canonical: a string" + (f" of at most {max_length} characters" if max_length else "")
    codes: list[str] = []
    if field.enum is not None:
        codes = [str(code) for code in field.enum]
        text["enum"] = codes if field.required else ["", *codes]
        note = "Canonical: one of " + _list_codes(field.enum)
    branches = [text]
    if field.datetime:
        pass  # no number's text is a wire time
    elif field.enum is not None:
        # A code that is the text of an integer may come as that integer.
        numbers = [
            int(code)
            for code in codes
            if _is_canonical_integer(code) and (max_length is None or len(code) <= max_length)
        ]
        if numbers:
            branches.append({"type": "integer", "enum": numbers})
            note += "; the integers " + _list_codes(tuple(numbers)) + " are taken as their text"
    elif max_length is None:
        branches.append({"type": "number"})
        note += "; a number is taken as its text"
    else:
        # str(n) has at most max_length characters.
        branches.append(
            {
                "type": "integer",
                "minimum": -(10 ** (max_length - 1) - 1),
                "maximum": 10**max_length - 1,
            }
        )
        if max_length >= _FLOAT_TEXT_MAX:
            branches.append({"type": "number", "not": {"type": "integer"}})
            note += "; a number is taken as its text, which must fit too"
        else:
            note += "; an integer is taken as its text, which must fit too"
    if not field.required:
        note += '; "" means not set'
    return branches, note


def _is_canonical_integer(text: str) -> bool:
    """Whether `text` is exactly what str() writes for some int."""
    try:
        return str(int(text)) == text
    except ValueError:
        return False


def _int_branches(field: Field) -> tuple[list[Schema], str]:
    """An Int field: the integer, and the text of one."""
    if field.enum is None:
        return (
            [{"type": "integer"}, {"type": "string", "pattern": f"^{_INTEGER_TEXT}$"}],
            "Canonical: an integer; its text is taken too",
        )
    codes = [int(code) for code in field.enum]
    note = "Canonical: one of " + _list_codes(tuple(codes))
    if not field.required and 0 not in codes:
        # validation lets 0 through an optional enumeration: lots write it for "not set".
        codes = [0, *codes]
        note += "; 0 means not set"
    # The text of each code, leading zeros and a minus on zero allowed, as int() reads it.
    texts = "|".join("-?0+" if code == 0 else ("-" if code < 0 else "") + f"0*{abs(code)}" for code in codes)
    return (
        [{"type": "integer", "enum": codes}, {"type": "string", "pattern": f"^(?:{texts})$"}],
        note + "; the text of a code is taken too",
    )


def _list_codes(codes: tuple[int, ...] | tuple[str, ...]) -> str:
    """Codes for people: runs of three or more consecutive integers as a range."""
    if not all(isinstance(code, int) for code in codes):
        return ", ".join(f'"{code}"' for code in codes)
    numbers = [int(code) for code in codes]
    parts: list[str] = []
    start = 0
    while start < len(numbers):
        end = start
        while end + 1 < len(numbers) and numbers[end + 1] == numbers[end] + 1:
            end += 1
        if end - start >= 2:
            parts.append(f"{numbers[start]}–{numbers[end]}")
        else:
            parts.extend(str(number) for number in numbers[start : end + 1])
        start = end + 1
    return ", ".join(parts)


# --- the interface reference ------------------------------------------------

_INTRO = """\
# Interfaces of T/CPMI 002-2018

The 31 interfaces the gateway carries, with the members of each message's `data`
(附录B tables B.5-B.35, types and lengths from 附录C). This page is generated from
`gateway/protocol/catalog.py`, the same table the validator and the JSON Schemas
(`GET /v1/schemas/{code}.json`) read; do not edit it by hand but run
`python -m gateway.protocol.schema docs/interfaces.md` (a test checks it is up to date).

How to read the tables:

- `data` is one object or a list of them. Members not listed are kept and forwarded
  as they are.
- *Required* members must be present and neither null nor `""`. Every other member may
  be absent or null, or hold its default value: `""` for a String, `0` for an Int with
  an enumeration.
- *Length* is a maximum, in characters. Times are `yyyy-MM-dd HH:mm:ss` in the
  gateway's zone and must name a real date and time.
- Lot software often mixes types, so the gateway takes the text of an integer for an
  Int, the text of a number for a Float, a number for a String (as its text), and
  `0`, `1`, `"true"` or `"false"` for a Boolean; it forwards the canonical form.
- Directions: *up* is lot to platform, *down* platform to lot; the class and the
  deadline are CONTRACT §3's.
"""

_TYPE_NAMES = {
    FieldType.STRING: "String",
    FieldType.INT: "Int",
    FieldType.FLOAT: "Float",
    FieldType.BOOLEAN: "Boolean",
    FieldType.OBJECT: "Object",
    FieldType.LIST: "List",
}


def interfaces_markdown() -> str:
    """The text of docs/interfaces.md: an introduction, then each interface and its fields."""
    sections = [_INTRO]
    for interface in INTERFACES:
        sections.append(_interface_markdown(interface))
    return "\n".join(sections)


def _interface_markdown(interface: Interface) -> str:
    lines = [
        f"## {interface.number}. {interface.code} — {interface.title} ({interface.table})",
        "",
        f"Direction: {_directions(interface)} · deadline: {_deadline(interface.deadline)}",
        "",
    ]
    lines.extend(_fields_markdown("Request", interface.request))
    if interface.response:
        lines.extend(_fields_markdown("Response", interface.response))
    return "\n".join(lines)


def _directions(interface: Interface) -> str:
    parts = []
    if interface.uplink is not None:
        parts.append(f"up ({interface.uplink.value})")
    if interface.downlink is not None:
        parts.append(f"down ({interface.downlink.value})")
    return " / ".join(parts)


def _deadline(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _fields_markdown(heading: str, fields: tuple[Field, ...]) -> list[str]:
    if not fields:
        return [f"{heading} `data`: no members (`{{}}`).", ""]
    lines = [
        f"{heading} `data`:",
        "",
        "| Member | Type | Length | Enumeration | Required | Title / description |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines.extend(_field_rows(fields, ""))
    lines.append("")
    return lines


def _field_rows(fields: tuple[Field, ...], prefix: str) -> list[str]:
    rows = []
    for field in fields:
        kind = _TYPE_NAMES[field.type] + (" (time)" if field.datetime else "")
        length = "" if field.max_length is None else str(field.max_length)
        codes = "" if field.enum is None else _list_codes(field.enum)
        text = field.title + (f" — {field.description}" if field.description else "")
        cells = [f"`{prefix}{field.name}`", kind, length, codes, "yes" if field.required else "", text]
        rows.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
        if field.items:
            suffix = "[]." if field.type is FieldType.LIST else "."
            rows.extend(_field_rows(field.items, f"{prefix}{field.name}{suffix}"))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def main(argv: list[str] | None = None) -> int:
    """`python -m gateway.protocol.schema PATH`: write the interface reference to PATH."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m gateway.protocol.schema docs/interfaces.md", file=sys.stderr)
        return 2
    Path(args[0]).write_text(interfaces_markdown(), encoding="utf-8", newline="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
