"""One forwarding engine in the service tree: it resumes where its progress records left off."""

from __future__ import annotations

from twisted.application.service import Service

from gateway.forwarding.engine import ForwardingEngine
from gateway.forwarding.progress import Progress

__all__ = ["ForwardingService"]


class ForwardingService(Service):
    """Runs ``engine`` while the service runs; ``progress`` is filled by the start-up replay first."""

    def __init__(self, engine: ForwardingEngine, progress: Progress | None = None) -> None:
        self.engine = engine
        self.progress = progress if progress is not None else Progress(engine.progress)
        self.setName(f"forwarding {engine.progress}".strip())

    def startService(self) -> None:
        super().startService()
        self.engine.start(self.progress.through)

    def stopService(self) -> None:
        super().stopService()
        self.engine.stop()
