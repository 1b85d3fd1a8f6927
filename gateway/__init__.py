"""cpmi-gateway: a T/CPMI 002-2018 bridge between parking-lot systems and an operator cloud."""

from importlib import metadata

try:
    __version__ = metadata.version("cpmi-gateway")
except metadata.PackageNotFoundError:  # run from a checkout that is not installed
    __version__ = "unknown"
