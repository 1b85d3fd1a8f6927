"""What the gateway knows of each park from what it reported: its total spaces (for 9105)."""

from __future__ import annotations


def park_total(data: object) -> int | None:
    """The `totalNum` a stored `parkEnv` message reports (the last of a list), or None."""
    found = None
    for item in data if isinstance(data, list) else [data]:
        total = item.get("totalNum") if isinstance(item, dict) else None
        if isinstance(total, int) and not isinstance(total, bool):
            found = total
    return found


class ParkTotals:
    """The last `totalNum` each park reported with `parkEnv`."""

    def __init__(self) -> None:
        self._totals: dict[str, int] = {}

    def observe(self, park: str, data: object) -> None:
        """Note a stored `parkEnv` message."""
        total = park_total(data)
        if total is not None:
            self._totals[park] = total

    def set(self, park: str, total: int) -> None:
        """Set the park's total (read back at start-up)."""
        self._totals[park] = total

    def total(self, park: str) -> int | None:
        """The park's last known total, or None."""
        return self._totals.get(park)
