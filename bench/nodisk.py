"""For `bench.uplink --no-disk` only: a durable gateway whose journal's fsync helper syncs nothing.

Everything else of fsync "always" stays: each batch is written, handed to the
helper process, and answered only once the helper has answered. Compared with
the same gateway with fsync "never", it tells what waiting for the commit costs
the gateway apart from what the disk costs. Never a way to run a gateway: it
acknowledges records that are not on disk.

Loaded by the gateway's twistd process before it starts (`PRELUDE`), it points
`Journal.open`'s default helper command at this folder's `nodisk_child.py`,
which runs the real helper's script with `os.fsync` doing nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

PRELUDE = "import bench.nodisk; bench.nodisk.install(); "


def install() -> None:
    """Make every journal opened from now on use the helper that syncs nothing."""
    from gateway.journal.fsync_process import CHILD_ARGV
    from gateway.journal.writer import Journal

    child = str(Path(__file__).with_name("nodisk_child.py"))
    defaults = Journal.open.__func__.__kwdefaults__  # type: ignore[attr-defined]
    defaults["fsync_helper"] = (sys.executable, "-I", "-S", child, CHILD_ARGV[-1])
