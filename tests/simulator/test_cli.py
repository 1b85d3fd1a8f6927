"""`cpmictl lot simulate`: its options and the errors it reports before running anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli.arguments import parse_downlink, uplink_url
from gateway.cli.main import main


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    """`lot simulate --help` exits 0 and names the issue's options."""
    assert main(["lot", "simulate", "--help"]) == 0
    out = capsys.readouterr().out
    options = ("--uplink", "--downlink", "--credentials", "--lots", "--duration", "--rate", "--time-scale")
    for option in (*options, "--soak"):
        assert option in out


def test_uplink_url_gets_the_uplink_path_when_it_has_none() -> None:
    """A bare gateway address posts to /uplink; a URL with a path is kept."""
    assert uplink_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080/uplink"
    assert uplink_url("http://gw/") == "http://gw/uplink"
    assert uplink_url("https://gw/t002/uplink") == "https://gw/t002/uplink"
    with pytest.raises(ValueError):
        uplink_url("127.0.0.1:8080")


def test_downlink_is_host_and_port() -> None:
    """--downlink is HOST:PORT, an IPv6 host in brackets."""
    assert parse_downlink("127.0.0.1:9000") == ("127.0.0.1", 9000)
    assert parse_downlink("[::1]:9000") == ("::1", 9000)
    for text in ("9000", "gw:", "gw:x", "gw:70000"):
        with pytest.raises(ValueError):
            parse_downlink(text)


def test_missing_credentials_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A credentials file that cannot be read fails the command: exit 1, one line on stderr."""
    missing = str(tmp_path / "none.csv")
    assert main(["lot", "simulate", "--uplink", "http://gw", "--credentials", missing]) == 1
    assert "none.csv" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--lots", "3"], "has only 2 lots"),
        (["--downlink", "gw"], "HOST:PORT"),
        (["--heartbeat", "90"], "at most 60"),
        (["--timezone", "Mars/Olympus"], "unknown zone"),
        (["--rate", "-1"], "must not be negative"),
        (["--duration", "0"], "must be positive"),
    ],
)
def test_usage_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    """Options that cannot be right are usage errors: exit 2, saying why."""
    path = tmp_path / "lots.csv"
    path.write_text("P001,lot001,pw\nP002,lot002,pw\n")
    assert main(["lot", "simulate", "--uplink", "http://gw", "--credentials", str(path), *options]) == 2
    assert message in capsys.readouterr().err
