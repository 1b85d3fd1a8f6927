"""What a lot still has to upload, and in which order: new messages, retries and backfills (no I/O).

The standard's rules (§5.1.2, 5.1.4, 5.2.4-5.2.6):

- an upload that fails is sent again after 10 minutes, until it succeeds; it
  keeps its oprNum, so a gateway that did store it answers from its repeat
  cache instead of storing it twice (B.2.3.6);
- an exit that could not be uploaded goes as a `backfill` (补报账单) once
  communication is back, the newest first, each failed backfill again 10
  minutes later.

`UploadQueue.take` gives the next upload to send: a due backfill (newest exit
first) when the lot is online, else the oldest due retry, else the oldest new
message. The 10 minutes are `retry_interval`, which a simulator divides by its
time scale.
"""

from __future__ import annotations

from collections import deque

from attrs import define

from gateway.simulator.traffic import Exit

__all__ = ["RETRY_INTERVAL", "Upload", "UploadQueue"]

RETRY_INTERVAL = 600.0
"""§5.1.2, 5.1.4, 5.2.6: 上传失败后应间隔 10 分钟后重复上传."""


@define(eq=False)
class Upload:
    """One message to upload: its interface, data and oprNum, kept across its retries."""

    code: str
    data: object
    opr: str
    record: str = ""
    exit: Exit | None = None
    attempts: int = 0
    due: float = 0.0

    @property
    def out_time(self) -> float:
        """When the car left, for an exit's upload (carOut or backfill); else 0."""
        return self.exit.out_time if self.exit is not None else 0.0


class UploadQueue:
    """One lot's pending uploads: new (in order), retries (when due) and backfills (newest first)."""

    def __init__(self, retry_interval: float = RETRY_INTERVAL) -> None:
        if retry_interval <= 0:
            raise ValueError("retry_interval must be positive")
        self.retry_interval = retry_interval
        self._new: deque[Upload] = deque()
        self._retries: deque[Upload] = deque()
        self._backfills: list[Upload] = []

    def __len__(self) -> int:
        return len(self._new) + len(self._retries) + len(self._backfills)

    @property
    def backfills(self) -> int:
        """How many backfills wait."""
        return len(self._backfills)

    @property
    def retries(self) -> int:
        """How many failed uploads wait for their retry."""
        return len(self._retries)

    def push(self, upload: Upload) -> None:
        """A new message, sent after those before it."""
        self._new.append(upload)

    def push_backfill(self, upload: Upload, now: float) -> None:
        """An exit to backfill, due at once (once the lot is online)."""
        upload.due = now
        self._backfills.append(upload)

    def failed(self, upload: Upload, now: float) -> None:
        """`upload` failed at `now`: due again `retry_interval` later, same oprNum."""
        upload.due = now + self.retry_interval
        if upload.code == "backfill":
            self._backfills.append(upload)
        else:
            self._retries.append(upload)

    def take(self, now: float, online: bool) -> Upload | None:
        """The next upload to send at `now`, out of the queue; None when nothing is due."""
        if online and self._backfills:
            due = [upload for upload in self._backfills if upload.due <= now]
            if due:
                newest = max(due, key=lambda upload: upload.out_time)
                self._backfills.remove(newest)
                return newest
        if self._retries and self._retries[0].due <= now:
            return self._retries.popleft()
        if self._new:
            return self._new.popleft()
        return None

    def next_due(self, online: bool) -> float | None:
        """When the earliest waiting retry (or, online, backfill) is due; None when none waits."""
        times = [self._retries[0].due] if self._retries else []
        if online and self._backfills:
            times.append(min(upload.due for upload in self._backfills))
        return min(times) if times else None

    def drop_failed(self, record: str, code: str) -> list[Upload]:
        """Take out the failed uploads of `code` about `record` (a carIn the backfill now carries)."""
        dropped = [upload for upload in self._retries if upload.record == record and upload.code == code]
        for upload in dropped:
            self._retries.remove(upload)
        return dropped
