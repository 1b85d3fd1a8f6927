"""Finding the installed dialects: the built-in ones, and two plugins claiming one name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import gateway.dialects
from gateway import config
from gateway.dialects import DialectConflict, installed
from gateway.dialects.bolink import BolinkDialect, bolink
from gateway.dialects.interface import IDialect
from gateway.dialects.standard import standard


@pytest.fixture
def fresh() -> Iterator[None]:
    """installed() is cached: each test here starts and ends with an empty cache."""
    installed.cache_clear()
    yield
    installed.cache_clear()


def test_the_built_in_dialects_are_found(fresh: None) -> None:
    """standard and bolink are found without any installed metadata, and provide IDialect."""
    found = installed()
    assert found["standard"] is standard and found["bolink"] is bolink
    assert all(IDialect.providedBy(dialect) for dialect in found.values())


def test_two_plugins_with_one_name_conflict(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second plugin named like an installed one is refused, naming both classes."""

    class Impostor(BolinkDialect):
        pass

    monkeypatch.setattr(gateway.dialects, "third_party", lambda: [Impostor()])
    with pytest.raises(DialectConflict) as caught:
        installed()
    message = str(caught.value)
    assert "'bolink'" in message and "BolinkDialect" in message and "Impostor" in message
    with pytest.raises(config.ConfigError, match=r"^dialects: 'bolink' is provided both by"):
        config.parse({})
