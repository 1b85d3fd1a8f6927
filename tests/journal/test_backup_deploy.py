"""The systemd service and timer that run the incremental backup every minute (deploy/)."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "deploy" / "cpmi-gateway-backup.service"
TIMER = ROOT / "deploy" / "cpmi-gateway-backup.timer"
GATEWAY_UNIT = ROOT / "conf" / "cpmi-gateway.service"


def read_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def test_the_service_backs_up_the_shipped_journal_onto_a_mounted_disk() -> None:
    """ExecStart backs up the journal the shipped unit and config write, into DEST under a checked mount."""
    service = read_unit(SERVICE)["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].startswith("/") and argv[0].endswith("/cpmictl")
    assert argv[1:3] == ["log", "backup"]
    journal, dest = PurePosixPath(argv[3]), PurePosixPath(argv[4])
    working = PurePosixPath(read_unit(GATEWAY_UNIT)["Service"]["WorkingDirectory"])
    shipped = tomllib.loads((ROOT / "conf" / "gateway.toml").read_text())["journal"]["path"]
    assert journal == working / shipped
    # No backup onto the gateway's own disk: the run fails unless DEST's disk is mounted.
    check = shlex.split(service["ExecStartPre"])
    assert check[0].endswith("/mountpoint") and check[1] == "-q"
    mount = PurePosixPath(check[2])
    assert mount in dest.parents
    assert not str(dest).startswith(str(working))
    assert service["ReadWritePaths"] == str(mount)
    assert service["ReadOnlyPaths"] == str(working)
    assert (service["Type"], service["User"]) == ("oneshot", "cpmi-gateway")


def test_the_timer_runs_it_every_minute() -> None:
    """The timer starts the backup service every minute, and is wanted by timers.target."""
    timer = read_unit(TIMER)
    assert timer["Timer"]["OnCalendar"] == "minutely"
    assert timer["Timer"]["Unit"] == SERVICE.name
    assert timer["Install"]["WantedBy"] == "timers.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_units() -> None:
    """systemd-analyze verify finds nothing wrong but, here, cpmictl not being installed where it will be."""
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(SERVICE), str(TIMER)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "/usr/local/bin/cpmictl is not executable" not in line
    ]
    assert problems == []
