"""Secrets never reach the journal or the log: `parkUserPwd` is replaced wherever it stands."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

REDACTED = "***"
SECRET_FIELDS = frozenset({"parkUserPwd", "upstream_password", "secret"})


def may_hold_secrets(text: str) -> bool:
    """Whether JSON `text` may name a secret field: a cheap test before walking its value.

    Escaped names (a key written with \\u escapes) count as possible secrets too.
    """
    return "\\u" in text or any(name in text for name in SECRET_FIELDS)


def _secret_field(name: object, value: object) -> bool:
    """The standard's secret fields, when they hold something."""
    return name in SECRET_FIELDS and value not in ("", None)


def redact(
    value: object,
    hides: Callable[[object, object], bool] = _secret_field,
    max_depth: int | None = None,
) -> object:
    """`value` with every member `hides` (name, value) picks replaced; the same object when there is none.

    Walks dicts (mappings), lists and tuples; by default it hides the
    standard's secret fields. With `max_depth`, what is nested deeper is left
    as it is (a log event may hold a structure that contains itself).
    """
    if max_depth is not None and max_depth <= 0:
        return value
    deeper = None if max_depth is None else max_depth - 1
    if isinstance(value, Mapping):
        changed: dict[Any, object] | None = None
        for key, item in value.items():
            new = REDACTED if hides(key, item) else redact(item, hides, deeper)
            if new is not item:
                if changed is None:
                    changed = dict(value)
                changed[key] = new
        return value if changed is None else changed
    if isinstance(value, list | tuple):
        items = [redact(item, hides, deeper) for item in value]
        if any(new is not old for new, old in zip(items, value, strict=True)):
            return items
    return value
