"""Dialects: the lot software the gateway speaks to, as plugins (see `interface`).

The built-in ones live in this package (`standard`, `bolink`); a vendor ships
its own as a plugin in its package's ``twisted/plugins/``. Both are found
with ``twisted.plugin.getPlugins``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from twisted.plugin import getPlugins

from gateway.dialects.interface import IDialect

__all__ = ["DialectConflict", "installed"]


class DialectConflict(Exception):
    """Two installed plugins give their dialect the same name."""


def _where(dialect: IDialect) -> str:
    return f"{type(dialect).__module__}.{type(dialect).__qualname__}"


@functools.cache
def installed() -> Mapping[str, IDialect]:
    """Every installed dialect by name: this package's and those of any package's ``twisted/plugins``.

    Raises DialectConflict when two plugins claim one name. A plugin module
    that fails to import is logged by Twisted and left out.
    """
    import gateway.dialects

    found: dict[str, IDialect] = {}
    for dialect in (*getPlugins(IDialect, gateway.dialects), *getPlugins(IDialect)):
        name = dialect.name
        if name in found and found[name] is not dialect:
            raise DialectConflict(
                f"{name!r} is provided both by {_where(found[name])} and by {_where(dialect)}"
            )
        found[name] = dialect
    return found
