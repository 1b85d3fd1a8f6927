"""The journal's fsync helper with `os.fsync` doing nothing (`bench.nodisk`): argv[1] is its script."""

import os
import runpy
import sys


def _no_fsync(fd: int) -> None:
    """Sync nothing."""


os.fsync = _no_fsync
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
