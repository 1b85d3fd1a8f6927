"""`cpmictl conformance platform`: the kit acts as a lot against a T/CPMI 002 platform.

`PlatformRun` runs the checks of `checks.platform_checks()` in order, one row
each: login and tokens, signatures, every uplink (valid, then invalid), repeats,
then on the TCP downlink the binds, framing and escaping, the idle timers, and
every downlink interface, triggered through the command API (CONTRACT §6) when
one is given, otherwise by a human operator told what to trigger. The lot's
side of the protocol is the simulator's (`gateway.lotclient`), its
answers to downlinks the simulator's `LotModel`.

The HTTP client, the clock and the TCP endpoint are passed in. The checks come
in groups, one module each (``uplink``, ``tcp``, ``downlink``), over the state
they share (``session``); ``run`` orders them.
"""

from gateway.conformance.platform.run import PlatformRun, plan
from gateway.conformance.platform.session import PlatformTarget

__all__ = ["PlatformRun", "PlatformTarget", "plan"]
