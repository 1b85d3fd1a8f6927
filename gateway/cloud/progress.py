"""Where forwarding stands: moved to :mod:`gateway.forwarding.progress`; this name stays for cpmictl."""

from gateway.forwarding.progress import FORWARDED_RECORD, REJECTED_RECORD, Progress

__all__ = ["FORWARDED_RECORD", "REJECTED_RECORD", "Progress"]
