"""Dialects: the lot software the gateway speaks to, as plugins (see `interface`).

The built-in ones live in this package (`standard`, `bolink`). A vendor ships
its own in a distribution of its own that declares it as an entry point of the
group ``cpmi_gateway.dialects`` (``acme = acme_dialect:acme``): installed
metadata, read without writing anything, found wherever the distribution is
importable (a normal, editable or ``--target`` install).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from importlib import metadata

from twisted.logger import Logger

from gateway.dialects.interface import IDialect

__all__ = ["ENTRY_POINT_GROUP", "DialectConflict", "installed"]

ENTRY_POINT_GROUP = "cpmi_gateway.dialects"
"""The entry-point group a third-party dialect is declared in."""

log = Logger()


class DialectConflict(Exception):
    """Two installed plugins give their dialect the same name."""


def _where(dialect: IDialect) -> str:
    return f"{type(dialect).__module__}.{type(dialect).__qualname__}"


def built_in() -> tuple[IDialect, ...]:
    """The dialects of this package: the standard itself and bolink."""
    from gateway.dialects.bolink import bolink
    from gateway.dialects.standard import standard

    return (standard, bolink)


def third_party() -> Iterable[IDialect]:
    """The dialects other distributions declare; one that fails to load is logged and left out."""
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            dialect = entry.load()
        except Exception:
            log.failure("dialect plugin {entry} failed to load", entry=entry.value)
            continue
        if not IDialect.providedBy(dialect):
            log.error("dialect plugin {entry} does not provide IDialect", entry=entry.value)
            continue
        yield dialect


@functools.cache
def installed() -> Mapping[str, IDialect]:
    """Every installed dialect by name: this package's and those declared by installed distributions.

    Raises DialectConflict when two plugins claim one name.
    """
    found: dict[str, IDialect] = {}
    for dialect in (*built_in(), *third_party()):
        name = dialect.name
        if name in found and found[name] is not dialect:
            raise DialectConflict(
                f"{name!r} is provided both by {_where(found[name])} and by {_where(dialect)}"
            )
        found[name] = dialect
    return found
