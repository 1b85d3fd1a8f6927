"""Where forwarding stands: moved to :mod:`gateway.forwarding.progress`; this name stays for cpmictl."""

from gateway.forwarding.progress import Progress

__all__ = ["Progress"]
