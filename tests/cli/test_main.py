"""Tests for the ``cpmictl`` entry point: usage, version and dispatch."""

from __future__ import annotations

import pytest

from gateway.cli.main import distribution_version, main


def test_no_arguments_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """cpmictl with no arguments prints usage on stderr and exits 2."""
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: cpmictl")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """cpmictl --version prints the distribution version and exits 0."""
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out == f"cpmictl {distribution_version()}\n"


def test_version_is_a_string() -> None:
    """distribution_version gives a non-empty string even when not installed."""
    assert distribution_version()


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown command is a usage error, exit 2."""
    assert main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """cpmictl --help exits 0 and lists passwd, keygen and pubkey."""
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("passwd", "keygen", "pubkey"):
        assert command in out


def test_argv_defaults_to_sys_argv(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """main() without argv reads the command line from sys.argv, as the console script does."""
    monkeypatch.setattr("sys.argv", ["cpmictl", "--version"])
    assert main() == 0
    assert capsys.readouterr().out.startswith("cpmictl ")
