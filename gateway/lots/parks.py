"""What the gateway knows of each park from what it reported: its total spaces (for 9105)."""

from __future__ import annotations


class ParkTotals:
    """The last `totalNum` each park reported with `parkEnv`."""

    def __init__(self) -> None:
        self._totals: dict[str, int] = {}

    def observe(self, park: str, data: object) -> None:
        """Note a stored `parkEnv` message."""
        items = data if isinstance(data, list) else [data]
        for item in items:
            total = item.get("totalNum") if isinstance(item, dict) else None
            if isinstance(total, int) and not isinstance(total, bool):
                self._totals[park] = total

    def total(self, park: str) -> int | None:
        """The park's last known total, or None."""
        return self._totals.get(park)
