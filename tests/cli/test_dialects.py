"""cpmictl dialects: what is installed, and a conflict reported as one line."""

from __future__ import annotations

import json

import pytest

from gateway.cli import dialects as command
from gateway.cli.main import main
from gateway.dialects import DialectConflict


def test_lists_the_built_in_dialects_with_their_listeners(capsys: pytest.CaptureFixture[str]) -> None:
    """Each installed dialect is a line: name, the [listen] keys it needs, its summary, its module."""
    assert main(["dialects"]) == 0
    lines = capsys.readouterr().out.splitlines()
    by_name = {line.split("\t")[0]: line.split("\t") for line in lines}
    assert by_name["bolink"][1] == "[listen] bolink"
    assert by_name["bolink"][3] == "(gateway.dialects.bolink)"
    assert by_name["standard"][1] == "[listen] uplink, [listen] downlink"


def test_json_gives_one_object_per_dialect(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one JSON object per dialect, sorted by name."""
    assert main(["dialects", "--json"]) == 0
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    names = [entry["name"] for entry in entries]
    assert names == sorted(names) and {"bolink", "standard"} <= set(names)
    assert next(e for e in entries if e["name"] == "bolink")["listeners"] == ["bolink"]


def test_two_plugins_claiming_one_name_is_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """When two installed plugins claim one name, the command says which and exits 1."""

    def conflicting() -> None:
        raise DialectConflict("'bolink' is provided both by a.A and by b.B")

    monkeypatch.setattr(command, "installed", conflicting)
    assert main(["dialects"]) == 1
    assert capsys.readouterr().err == "cpmictl dialects: 'bolink' is provided both by a.A and by b.B\n"
