"""The garbage collector for a long-running gateway: what start-up built is set aside.

CPython's full collections walk every container object in the process. Most
of a gateway's are built at start-up (modules, the interface catalog, the
configuration, what the journal's replay restored) and live until it stops;
walking them on every full pass was most of the uplink's p99. Freezing them
once the gateway runs leaves the collector the objects made since.
"""

from __future__ import annotations

import gc

__all__ = ["settle_start_up_heap"]


def settle_start_up_heap() -> int:
    """Collect start-up's garbage, then freeze what is left; the number of objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
