"""Fixtures shared by the tests: journals in a temporary directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.journal.helpers import Harness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """Make Harnesses (in tmp_path unless given a path); close their journals afterwards."""
    made: list[Harness] = []

    def make(path: Path | None = None, **options: Any) -> Harness:
        made.append(Harness(path or tmp_path / "journal", **options))
        return made[-1]

    yield make
    for each in made:
        if not each.journal._closed:
            each.close()


@pytest.fixture
def h(harness: Callable[..., Harness]) -> Harness:
    """A journal with default options in tmp_path/journal."""
    return harness()
