"""A lot system's side of T/CPMI 002-2018, reusable: the HTTP `uplink` and the TCP `downlink`.

The HTTP client, the clock and the TCP endpoint are passed in, so the same
classes run a simulator on a real reactor, a test on `Clock`/`StubTreq`/iosim,
a conformance kit against any gateway, and the gateway's own upstream side.
Envelopes are built and read by `gateway.protocol.envelope`, as the gateway does.
"""
