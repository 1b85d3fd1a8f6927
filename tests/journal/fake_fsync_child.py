"""
The journal's fsync helper with a fault, for tests: ``python fake_fsync_child.py FAULT [N|SECONDS]``.

Runs the real helper (``gateway/journal/fsync_child.py``, loaded from its file
so that nothing else of the gateway is imported) with ``os.fsync`` replaced:

- ``eio N``: the N-th fsync (1-based) fails with EIO; the others run;
- ``slow SECONDS``: every fsync waits that long first;
- ``die N``: the N-th fsync runs, then the helper exits at once, unanswered;
- ``noready``: exits before saying it is ready;
- ``deaf``: says it is ready, then never reads nor ends (only a kill stops it).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

HELPER = Path(__file__).resolve().parents[2] / "gateway" / "journal" / "fsync_child.py"


def main() -> int:
    fault = sys.argv[1]
    arg = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    if fault == "noready":
        return 3
    spec = importlib.util.spec_from_file_location("fsync_child", HELPER)
    assert spec is not None and spec.loader is not None
    child = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(child)
    real_fsync = os.fsync
    calls = [0]

    def fsync(fd: int) -> None:
        calls[0] += 1
        if fault == "eio" and calls[0] == arg:
            raise OSError(5, "Input/output error")
        if fault == "slow":
            time.sleep(arg)
        real_fsync(fd)
        if fault == "die" and calls[0] == arg:
            os._exit(4)

    os.fsync = fsync
    if fault == "deaf":
        os.write(child.SOCKET_FD, child.HELLO)
        while True:
            time.sleep(60)
    result: int = child.main()
    return result


if __name__ == "__main__":
    sys.exit(main())
