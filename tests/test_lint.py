"""The code type-checks (mypy, strict on definitions) and passes ruff."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_mypy_is_clean() -> None:
    """mypy with the project's settings reports nothing."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    """ruff with the project's settings reports nothing."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "gateway", "tests", "twisted", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
