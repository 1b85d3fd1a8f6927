"""`cpmictl log` with the gateway's configuration: DIR from journal.path, the sink for stats,
help for every argument, and progress bars only on a terminal (issue 21, items 6, 7 and 8)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli.main import build_parser, main
from tests.cli.test_log import car_in, run
from tests.journal.helpers import Harness

LOG_ONLY = """
[journal]
path = "{journal}"
[cloud]
sink = "log-only"
"""
CLOUDEVENTS = """
[journal]
path = "{journal}"
[cloud]
sink = "cloudevents"
url = "https://cloud.example/events"
"""


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Harness]:
    """A journal of three carIn records, none forwarded."""
    h = Harness(tmp_path / "journal")
    for n in range(1, 4):
        car_in(h, "P001", n)
    yield h
    h.close()


def config(tmp_path: Path, text: str, journal: Harness) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(text.format(journal=journal.path))
    return str(path)


def test_stats_on_the_log_only_sink_reports_no_backlog(
    journal: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the log-only sink the journal is the sink: stats says so and counts nothing as not forwarded."""
    code, out, err = run(capsys, "stats", "--config", config(tmp_path, LOG_ONLY, journal))
    assert (code, err) == (0, "")
    assert "forwarding: none, the sink is log-only: the journal is the sink (3 events)" in out
    assert "not forwarded" not in out and "backlog" not in out


def test_stats_on_a_forwarding_sink_reports_the_backlog(
    journal: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a sink that forwards, the same journal has 3 events not forwarded."""
    code, out, _ = run(capsys, "stats", "--config", config(tmp_path, CLOUDEVENTS, journal))
    assert code == 0
    assert "backlog: 3 events not forwarded" in out


def test_stats_of_another_journal_does_not_take_the_configs_sink(
    journal: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A DIR that is not the configuration's journal is not said to be on its sink."""
    other = tmp_path / "other"
    other.mkdir()
    text = LOG_ONLY.replace("{journal}", str(other))
    (tmp_path / "gateway.toml").write_text(text)
    code, out, _ = run(capsys, "stats", "--config", str(tmp_path / "gateway.toml"), str(journal.path))
    assert code == 0
    assert "backlog: 3 events not forwarded" in out


def test_dir_comes_from_the_environments_config(
    journal: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without DIR or --config, $CPMI_GATEWAY_CONFIG names the configuration whose journal is read."""
    monkeypatch.setenv("CPMI_GATEWAY_CONFIG", config(tmp_path, LOG_ONLY, journal))
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "tail", "--json")
    assert (code, err) == (0, "")
    assert len(out.splitlines()) == 3
    code, out, _ = run(capsys, "show", "2")
    assert code == 0 and '"recordCode": "R2"' in out


def test_without_dir_or_config_says_what_to_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No DIR and no configuration to be found: one line, exit 2."""
    monkeypatch.delenv("CPMI_GATEWAY_CONFIG", raising=False)
    monkeypatch.setattr("gateway.config.SYSTEM_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "verify")
    assert code == 2 and out == ""
    assert err == "cpmictl log verify: give DIR, the journal directory, or --config (no conf/gateway.toml)\n"


def test_a_broken_config_named_with_config_is_one_line(
    journal: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--config naming a broken file: its one-line error, exit 2, even with DIR given."""
    (tmp_path / "bad.toml").write_text("[journal]\nfsync = 3\n")
    code, _, err = run(capsys, "stats", "--config", str(tmp_path / "bad.toml"), str(journal.path))
    assert code == 2
    assert err.startswith("cpmictl log stats: journal.fsync: ") and err.count("\n") == 1


def subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every (name, parser) below `parser`, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield name, child
                yield from ((f"{name} {sub}", grand) for sub, grand in subcommands(child))


def test_every_argument_of_cpmictl_has_help() -> None:
    """Every positional and option of every cpmictl command says what it is in --help."""
    missing = [
        f"{name}: {action.dest}"
        for name, parser in subcommands(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("argv", "defaults"),
    [
        (["lot", "simulate"], ["(default 10)", "(default 30)", "(default 60)", "(default 1)"]),
        (["conformance", "platform"], ["--wait", "(default: none;"]),
        (["log", "replay"], ["(100)", "--no-progress", "journal.path"]),
    ],
)
def test_help_shows_the_defaults(
    capsys: pytest.CaptureFixture[str], argv: list[str], defaults: list[str]
) -> None:
    """--help gives the defaults the docs give (rate, heartbeat, summary-every, time-scale, wait)."""
    assert main([*argv, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for default in defaults:
        assert default in out


@pytest.mark.parametrize("verb", ["verify", "export", "backup"])
def test_progress_only_on_a_terminal_and_stdout_unchanged(
    journal: Harness,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    verb: str,
) -> None:
    """On a terminal a bar is drawn on stderr; off one, or with --no-progress, none; stdout is the same."""
    extra = [str(tmp_path / "copy-{}")] if verb == "backup" else []

    def once(tty: bool, *options: str) -> tuple[str, str]:
        monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
        args = [a.format(len(calls)) for a in extra]
        calls.append(1)
        code, out, err = run(capsys, verb, *options, str(journal.path), *args)
        assert code == 0, err
        return out.replace(str(tmp_path / f"copy-{len(calls) - 1}"), "COPY"), err

    calls: list[int] = []
    plain_out, plain_err = once(False)
    bar_out, bar_err = once(True)
    quiet_out, quiet_err = once(True, "--no-progress")
    assert plain_out == bar_out == quiet_out
    assert "\r" not in plain_err and "\r" not in quiet_err
    assert f"\r{verb}:" in bar_err


def test_config_check_finds_the_configuration_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """cpmictl config check without FILE checks $CPMI_GATEWAY_CONFIG's file, as the gateway would read it."""
    path = tmp_path / "env.toml"
    path.write_text('[gateway]\nid = "gw-env"\n[journal]\npath = "' + str(tmp_path / "j") + '"\n')
    monkeypatch.setenv("CPMI_GATEWAY_CONFIG", str(path))
    assert main(["config", "check"]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: ok: gateway gw-env, ")
