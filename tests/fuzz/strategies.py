"""Hypothesis strategies for hostile input: JSON-ish text built from the pieces attacks are made of."""

from __future__ import annotations

import json

from hypothesis import strategies as st

# Pieces of the protocol and of known attacks: brackets for depth, escapes for
# the redaction walk, numbers at and past the limits, the framing bytes,
# header names and a byte order mark.
FRAGMENTS = [
    "{",
    "}",
    "[",
    "]",
    '"',
    ":",
    ",",
    "\\",
    "\\u",
    "\\u0024",
    "\\ud800",
    "1e999",
    "-1e999",
    "1e-999",
    "NaN",
    "Infinity",
    "-Infinity",
    "9223372036854775808",
    "9223372036854775807",
    "-9223372036854775809",
    "9" * 30,
    "0",
    "-0.5",
    "1.5e308",
    "null",
    "true",
    '"code"',
    '"oprNum"',
    '"token"',
    '"signature"',
    '"data"',
    '"resultCode"',
    '"parkUserPwd"',
    '"carIn"',
    '"heartbeat"',
    " ",
    "\n",
    "\ufeff",
    "$",
    "#",
    "*",
    "中",
    "A" * 40,
]

hostile_text = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=60).map("".join)
"""Text that is sometimes JSON, often nearly so, and often hostile."""

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from([10**30, -(10**30), 2**63, -(2**63), 2**63 + 1]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=40), children, max_size=4)
    ),
    max_leaves=25,
)
"""Values `json.dumps` writes, NaN, Infinity and integers of any size among them."""


def deep(depth: int, inner: str = "1") -> str:
    """`inner` inside `depth` arrays."""
    return "[" * depth + inner + "]" * depth


@st.composite
def envelopes(draw: st.DrawFn) -> str:
    """A request envelope whose header members and data may each break a rule."""
    header = st.one_of(
        st.text(max_size=12),
        st.text(min_size=30, max_size=120),
        st.integers(),
        st.none(),
        json_values,
    )
    envelope = {
        name: draw(header)
        for name in draw(st.sets(st.sampled_from(["token", "code", "oprNum", "signature"])))
    }
    envelope["data"] = draw(json_values | st.integers(30, 40).map(lambda depth: json.loads(deep(depth))))
    return json.dumps(envelope, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 1])))
