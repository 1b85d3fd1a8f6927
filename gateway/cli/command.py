"""What a ``cpmictl`` command group is: the words ``gateway.cli.main`` and every group share.

A command group is a module under ``gateway.cli`` that exposes

    def add_parser(subparsers: Subparsers) -> None

which adds its sub-command(s) and sets ``handler`` -- a :data:`Handler` returning
the exit code -- with ``set_defaults``. The groups import these words from here,
never from ``gateway.cli.main``, which imports the groups.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    # For annotations only (argparse's class is not subscriptable at run time):
    # groups import it under TYPE_CHECKING too.
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["CommandGroup", "Handler"]

Handler = Callable[[argparse.Namespace], int]


class CommandGroup(Protocol):
    """A module that adds one or more sub-commands to ``cpmictl``."""

    def add_parser(self, subparsers: Subparsers) -> None:
        """Add the group's sub-commands, each with a ``handler`` default."""
