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
    as it is (a log event may hold a structure that contains itself). The walk
    keeps its own stack, so no depth of nesting makes it raise RecursionError.
    A container with a hidden member anywhere below is copied (a dict stays a
    dict, a list or tuple becomes a list); the rest is shared.
    """
    if (max_depth is not None and max_depth <= 0) or not isinstance(value, _CONTAINERS):
        return value
    root = _Walk(value, max_depth)
    stack = [root]
    while stack:
        walk = stack[-1]
        entries, index = walk.entries, walk.index
        if index == len(entries):
            stack.pop()
            if stack:
                stack[-1].replace(walk.result())
            continue
        key, item = entries[index]
        if walk.mapping and hides(key, item):
            walk.replace(REDACTED)
        elif isinstance(item, _CONTAINERS) and (walk.below is None or walk.below > 0):
            stack.append(_Walk(item, walk.below))
        else:
            walk.index = index + 1
    return root.result()


_CONTAINERS = (Mapping, list, tuple)


class _Walk:
    """One container being redacted: its entries, the next one to look at, what changed."""

    __slots__ = ("below", "changed", "entries", "index", "mapping", "value")

    def __init__(self, value: Any, depth: int | None) -> None:
        self.value = value
        self.mapping = isinstance(value, Mapping)
        self.entries: list[tuple[Any, object]] = list(value.items() if self.mapping else enumerate(value))
        self.index = 0
        self.changed: dict[Any, object] | None = None
        self.below = None if depth is None else depth - 1

    def replace(self, new: object) -> None:
        """The entry at `index` becomes `new` (when it is another object); move to the next."""
        key, old = self.entries[self.index]
        if new is not old:
            if self.changed is None:
                self.changed = {}
            self.changed[key] = new
        self.index += 1

    def result(self) -> object:
        if self.changed is None:
            return self.value
        if self.mapping:
            return {**self.value, **self.changed}
        changed = self.changed
        return [changed.get(index, item) for index, item in enumerate(self.value)]
