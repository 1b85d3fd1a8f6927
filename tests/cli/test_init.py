"""`cpmictl init DIR`: a ready gateway directory from the example shipped in the package (CONTRACT §7)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nacl.pwhash
import pytest
from treq.testing import StubTreq
from twisted.web.server import Site

from gateway import config, tap
from gateway.cli import init
from gateway.cli.main import main
from tests.test_tap import MemoryReactor, stop

ROOT = Path(__file__).parents[2]


def run_init(capsys: pytest.CaptureFixture[str], directory: Path) -> tuple[int, dict[str, str], str]:
    """Run `cpmictl init DIR`; its exit code, its `name: value` lines, its stderr."""
    code = main(["init", str(directory)])
    out, err = capsys.readouterr()
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    return code, lines, err


def test_the_example_is_the_shipped_config() -> None:
    """The package's example configuration is conf/gateway.toml, read through importlib.resources."""
    assert init.example_config() == (ROOT / "conf" / "gateway.toml").read_text(encoding="utf-8")


def test_init_writes_a_ready_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """DIR gets gateway.toml (journal and key inside DIR, the example's ports) and the key (0600);
    the API token is printed once on a line of its own, only its SHA-256 is in the file."""
    directory = tmp_path / "gw"
    code, lines, err = run_init(capsys, directory)
    assert (code, err) == (0, "")
    token = lines["api token"]
    text = (directory / "gateway.toml").read_text()
    assert token not in text
    settings = config.load(str(directory / "gateway.toml"))
    assert settings.gateway.signing_key == str(directory / "gateway.key")
    assert settings.journal.path == str(directory / "journal")
    assert (settings.listen.uplink, settings.listen.downlink, settings.listen.api) == (
        "tcp:8080",
        "tcp:9000",
        "tcp:8081:interface=127.0.0.1",
    )
    assert settings.cloud.api_token == "" and settings.cloud.api_token_file == ""
    [admin] = settings.api_clients
    assert admin.name == "admin" and set(admin.roles) == set(config.ROLES)
    assert stat.S_IMODE((directory / "gateway.key").stat().st_mode) == 0o600
    assert not (directory / "journal").exists()
    # The first lot: the example's, with a new password printed once.
    [lot] = settings.lots
    password = lines["first lot"].rsplit("password ", 1)[1]
    assert password not in text and password != "demo-password"
    assert nacl.pwhash.verify(lot.password.encode(), password.encode())


def test_init_twice_refuses_and_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A DIR that holds a gateway.toml is left alone: exit 1, one line."""
    directory = tmp_path / "gw"
    assert run_init(capsys, directory)[0] == 0
    before = (directory / "gateway.toml").read_text(), (directory / "gateway.key").read_text()
    assert main(["init", str(directory)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists; not overwritten" in err
    assert ((directory / "gateway.toml").read_text(), (directory / "gateway.key").read_text()) == before


def test_two_inits_make_two_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each directory gets its own token and lot password."""
    _, first, _ = run_init(capsys, tmp_path / "a")
    _, second, _ = run_init(capsys, tmp_path / "b")
    assert first["api token"] != second["api token"]
    assert first["first lot"] != second["first lot"]


def test_the_gateway_serves_parks_to_the_printed_token_from_any_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway started on DIR/gateway.toml from elsewhere answers GET /v1/parks to the printed token."""
    directory = tmp_path / "gw"
    _, lines, _ = run_init(capsys, directory)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    options = tap.Options()
    options.parseOptions(["--config", str(directory / "gateway.toml")])
    reactor = MemoryReactor()
    service = tap.makeService(options, reactor)
    service.startService()
    try:
        [site] = [port[1] for port in reactor.tcpServers if port[0] == 8081]
        assert isinstance(site, Site)
        client = StubTreq(site.resource)
        for token, status in ((lines["api token"], 200), ("wrong", 401)):
            response = client.get("http://gw/v1/parks", headers={"Authorization": f"Bearer {token}"})
            client.flush()
            assert response.result.code == status  # type: ignore[attr-defined]
    finally:
        stop(service, reactor)
    assert os.listdir(elsewhere) == []
    assert (directory / "journal").is_dir()
