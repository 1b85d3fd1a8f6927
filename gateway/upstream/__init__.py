"""The t002 sink: the gateway as each of its lots towards an upstream T/CPMI 002 platform."""
