"""The protocol of T/CPMI 002-2018 without I/O: catalog, envelopes, results, signatures, validation."""
