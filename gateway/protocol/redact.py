"""Secrets never reach the journal or the log: `parkUserPwd` is replaced wherever it stands."""

from __future__ import annotations

REDACTED = "***"
SECRET_FIELDS = frozenset({"parkUserPwd", "upstream_password", "secret"})


def may_hold_secrets(text: str) -> bool:
    """Whether JSON `text` may name a secret field: a cheap test before walking its value.

    Escaped names (a key written with \\u escapes) count as possible secrets too.
    """
    return "\\u" in text or any(name in text for name in SECRET_FIELDS)


def redact(value: object) -> object:
    """`value` with every secret field's value replaced; the same object when there is none."""
    if isinstance(value, dict):
        changed = None
        for key, item in value.items():
            new = REDACTED if key in SECRET_FIELDS and item not in ("", None) else redact(item)
            if new is not item:
                if changed is None:
                    changed = dict(value)
                changed[key] = new
        return value if changed is None else changed
    if isinstance(value, list):
        items = [redact(item) for item in value]
        if any(new is not old for new, old in zip(items, value, strict=True)):
            return items
    return value
