"""The T/CPMI 002-2018 conformance kit: `cpmictl conformance platform` and `cpmictl conformance lot`."""
