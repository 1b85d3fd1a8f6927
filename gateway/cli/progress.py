"""Progress bars for long ``cpmictl`` work, through tqdm, on a terminal only.

tqdm is small, has no dependencies, is widely used and kept, and draws on
standard error, so what a command prints on standard output (JSON Lines,
summaries that scripts read) stays as it was. A bar is drawn only when
standard error is a terminal and ``--no-progress`` was not given; otherwise
the bar is tqdm's disabled one, which does nothing.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from tqdm import tqdm

__all__ = ["add_option", "bar", "shown"]


def add_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--no-progress`` to `parser`."""
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="draw no progress bar (one is drawn on standard error only when it is a terminal)",
    )


def shown(args: argparse.Namespace | None, stream: TextIO | None = None) -> bool:
    """Whether a bar is drawn: `stream` (standard error) is a terminal and no --no-progress."""
    if args is not None and getattr(args, "no_progress", False):
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed, or no file at all
        return False


def bar(
    args: argparse.Namespace | None,
    *,
    total: float | None,
    description: str,
    unit: str = "B",
    stream: TextIO | None = None,
) -> tqdm:
    """A bar over `total` `unit`s (bytes by default, scaled: KB, MB), or a disabled one (see `shown`)."""
    stream = sys.stderr if stream is None else stream
    return tqdm(
        total=total,
        desc=description,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1024 if unit == "B" else 1000,
        file=stream,
        disable=not shown(args, stream),
        leave=False,
        dynamic_ncols=True,
    )
