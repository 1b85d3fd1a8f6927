"""gateway.cli.progress: a bar only on a terminal, and never with --no-progress (issue 21, item 7)."""

from __future__ import annotations

import argparse
import io

from gateway.cli import progress


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    progress.add_option(parser)
    return parser.parse_args(argv)


def test_shown_only_on_a_terminal_without_no_progress() -> None:
    """A terminal draws; a pipe or file does not; --no-progress silences a terminal too."""
    assert progress.shown(parsed(), Terminal())
    assert not progress.shown(parsed(), io.StringIO())
    assert not progress.shown(parsed("--no-progress"), Terminal())


def test_a_disabled_bar_writes_nothing() -> None:
    """Off a terminal the bar takes its updates and writes not a byte."""
    stream = io.StringIO()
    bar = progress.bar(parsed(), total=100, description="verify", stream=stream)
    bar.update(50)
    bar.close()
    assert stream.getvalue() == ""
    shown = Terminal()
    bar = progress.bar(parsed(), total=2048, description="verify", stream=shown)
    bar.update(1024)
    bar.close()
    assert shown.getvalue().startswith("\rverify:")
