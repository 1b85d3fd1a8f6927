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
        ".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "gateway").rglob("__init__.py")
    }
    assert found <= listed_packages(), sorted(found - listed_packages())


def test_plugin_package_is_listed_and_has_no_init() -> None:
    """twisted.plugins is listed, and has no __init__.py that would shadow Twisted's own."""
    assert "twisted.plugins" in listed_packages()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "__init__.py").exists()


def metadata() -> configparser.SectionProxy:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser["metadata"]


def test_license_author_home_page_and_changelog() -> None:
    """The MIT LICENSE file setup.cfg names, a home page, an author and a CHANGELOG with this version."""
    assert metadata()["license"] == "MIT" and metadata()["license_files"] == "LICENSE"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    assert metadata()["url"].startswith("https://") and metadata()["author"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {metadata()['version']}\n" in changelog and "## Unreleased\n" in changelog


def test_the_example_config_is_package_data_and_the_shipped_one() -> None:
    """gateway/example.toml, which cpmictl init copies from, is package data and is conf/gateway.toml."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    assert "example.toml" in parser["options.package_data"]["gateway"].split(",")
    example = ROOT / "gateway" / "example.toml"
    assert example.resolve() == (ROOT / "conf" / "gateway.toml").resolve()


def test_editable_installs_put_the_root_on_sys_path() -> None:
    """package_dir is the root: setuptools then makes an editable install a .pth of the checkout, where
    Twisted finds twisted/plugins (an import hook would hide it); tests/test_readme.py checks it for real."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    assert parser["options"]["package_dir"].split() == ["=", "."]
    assert any(line.strip().startswith("tqdm") for line in parser["options"]["install_requires"].splitlines())
