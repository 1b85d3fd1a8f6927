"""The distribution ships every package of the gateway and the twistd plugin."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).parent.parent


def listed_packages() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return {line.strip() for line in parser["options"]["packages"].splitlines() if line.strip()}


def test_every_gateway_package_is_listed() -> None:
    """Each folder of gateway/ with an __init__.py is in setup.cfg's packages."""
    found = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "gateway").rglob("__init__.py")
    }
    assert found <= listed_packages(), sorted(found - listed_packages())


def test_plugin_package_is_listed_and_has_no_init() -> None:
    """twisted.plugins is listed, and has no __init__.py that would shadow Twisted's own."""
    assert "twisted.plugins" in listed_packages()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "__init__.py").exists()
