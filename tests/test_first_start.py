"""A first start: the API token file, the configuration found without --config, and failed starts
that leave nothing behind (issue 21, items 3, 4 and 5)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.error import CannotListenError
from twisted.web.server import Site

from gateway import config, tap
from gateway.firststart import Fresh, create_token_file
from tests.test_tap import SHIPPED, MemoryReactor, stop, write_config

ROOT = Path(__file__).parent.parent


def test_shipped_config_names_a_token_file_not_a_token() -> None:
    """The shipped config holds no token (the same on every install) but a file made at first start."""
    settings = config.parse(
        config.tomllib.loads(SHIPPED.replace('"var/api-token"', '"/nonexistent/api-token"'))
    )
    assert settings.cloud.api_token == ""
    assert settings.cloud.api_token_file == "/nonexistent/api-token"
    assert settings.api_clients == ()


def api(reactor: MemoryReactor) -> StubTreq:
    """A client of the API site the gateway listens with on port 8081."""
    [site] = [port[1] for port in reactor.tcpServers if port[0] == 8081]
    assert isinstance(site, Site)
    return StubTreq(site.resource)


def parks_status(client: StubTreq, token: str) -> int:
    response = client.get("http://gw/v1/parks", headers={"Authorization": f"Bearer {token}"})
    status: int = client.flush() or response.result.code  # type: ignore[attr-defined]
    return status


def started(config_path: str) -> tuple[Any, MemoryReactor]:
    options = tap.Options()
    options.parseOptions(["--config", config_path])
    reactor = MemoryReactor()
    service = tap.makeService(options, reactor)
    service.startService()
    return service, reactor


def test_first_start_creates_the_api_token_file_and_serves_it(tmp_path: Path) -> None:
    """The first start writes a random token (mode 0600) that GET /v1/parks takes; a second start keeps it."""
    path = write_config(tmp_path)
    service, reactor = started(path)
    token_file = tmp_path / "api-token"
    try:
        token = token_file.read_text().strip()
        assert len(token) >= 40
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        client = api(reactor)
        assert parks_status(client, token) == 200
        assert parks_status(client, token[:-1]) == 401
    finally:
        stop(service, reactor)
    again, reactor = started(path)
    try:
        assert token_file.read_text().strip() == token
        assert parks_status(api(reactor), token) == 200
    finally:
        stop(again, reactor)
    other = tmp_path / "other"
    other.mkdir()
    assert create_token_file(str(other / "api-token")) != token  # a new one per install


def test_token_and_token_file_together_is_a_config_error(tmp_path: Path) -> None:
    """api_token and api_token_file both set: one line naming the key."""
    text = SHIPPED.replace('api_token_file = "var/api-token"', 'api_token = "x"\napi_token_file = "t"')
    with pytest.raises(config.ConfigError, match=r"^cloud.api_token_file: set either"):
        config.parse(config.tomllib.loads(text))


class BusyReactor(MemoryReactor):
    """A memory reactor on which one TCP port is taken."""

    def __init__(self, busy: int) -> None:
        super().__init__()
        self.busy = busy

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port == self.busy:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)


def created_by_start(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in ("gateway.toml", "file"))


@pytest.mark.parametrize(("port", "key"), [(8080, "uplink"), (9000, "downlink"), (8081, "api")])
def test_busy_port_is_one_line_exit_1_and_nothing_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], port: int, key: str
) -> None:
    """A port already taken stops the start with one line naming its key; no key, journal or token stays."""
    options = tap.Options()
    options.parseOptions(["--config", write_config(tmp_path)])
    reactor = BusyReactor(port)
    service = tap.makeService(options, reactor)
    assert created_by_start(tmp_path) == ["api-token", "gateway.key", "journal"]
    with pytest.raises(SystemExit) as exited:
        service.privilegedStartService()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    endpoint = f"tcp:{port}" + (":interface=127.0.0.1" if port == 8081 else "")
    assert err == f"cpmi-gateway: listen.{key}: cannot listen on {endpoint}: Address already in use\n"
    assert created_by_start(tmp_path) == []


def test_busy_port_under_twist_is_one_line_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Started without privilegedStartService (twist), a busy port also ends in one line and nothing left."""
    options = tap.Options()
    options.parseOptions(["--config", write_config(tmp_path)])
    service = tap.makeService(options, BusyReactor(9000))
    with pytest.raises(SystemExit):
        service.startService()
    assert capsys.readouterr().err.startswith("cpmi-gateway: listen.downlink: cannot listen on tcp:9000: ")
    assert created_by_start(tmp_path) == []


def test_unwritable_journal_leaves_no_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A journal that cannot be made: one line naming journal.path, and the new key is taken back."""
    (tmp_path / "file").write_text("")
    text = SHIPPED.replace('"var/journal"', f'"{tmp_path / "file" / "journal"}"')
    options = tap.Options()
    options.parseOptions(["--config", write_config(tmp_path, text)])
    with pytest.raises(SystemExit):
        tap.makeService(options, MemoryReactor())
    err = capsys.readouterr().err
    assert err.startswith("cpmi-gateway: journal.path: ") and err.count("\n") == 1, err
    assert "Not a directory" in err
    assert created_by_start(tmp_path) == []


def test_bad_key_file_leaves_no_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A key file that is no key: one line naming gateway.signing_key; no journal or token; the file kept."""
    key = tmp_path / "gateway.key"
    key.write_text("garbage\n")
    key.chmod(0o600)
    options = tap.Options()
    options.parseOptions(["--config", write_config(tmp_path)])
    with pytest.raises(SystemExit):
        tap.makeService(options, MemoryReactor())
    err = capsys.readouterr().err
    assert err.startswith("cpmi-gateway: gateway.signing_key: ") and err.count("\n") == 1, err
    assert "not an Ed25519 key file" in err
    assert created_by_start(tmp_path) == ["gateway.key"]
    assert key.read_text() == "garbage\n"


def test_fresh_undoes_only_what_did_not_exist(tmp_path: Path) -> None:
    """Fresh takes back the outermost new directory of each path, never what existed before."""
    (tmp_path / "kept").mkdir()
    fresh = Fresh.before([str(tmp_path / "kept" / "key"), str(tmp_path / "new" / "deep" / "journal"), ""])
    (tmp_path / "kept" / "key").write_text("k")
    (tmp_path / "new" / "deep" / "journal").mkdir(parents=True)
    (tmp_path / "kept" / "other").write_text("o")
    fresh.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["other"]


def test_config_is_found_without_config_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config, else $CPMI_GATEWAY_CONFIG, else /etc/cpmi-gateway/gateway.toml if there, else conf/..."""
    assert config.find_config("given.toml", {"CPMI_GATEWAY_CONFIG": "env.toml"}) == "given.toml"
    assert config.find_config(None, {"CPMI_GATEWAY_CONFIG": "env.toml"}) == "env.toml"
    monkeypatch.setattr(config, "SYSTEM_CONFIG", str(tmp_path / "etc.toml"))
    assert config.find_config(None, {}) == "conf/gateway.toml"
    (tmp_path / "etc.toml").write_text("")
    assert config.find_config(None, {}) == str(tmp_path / "etc.toml")
    monkeypatch.setenv("CPMI_GATEWAY_CONFIG", "from-env.toml")
    options = tap.Options()
    options.parseOptions([])
    assert options["config"] == "from-env.toml"


def test_plugin_version_option(capsys: pytest.CaptureFixture[str]) -> None:
    """twistd cpmi-gateway --version prints the gateway's version, not only Twisted's."""
    from gateway import __version__

    with pytest.raises(SystemExit) as exited:
        tap.Options().parseOptions(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"cpmi-gateway {__version__} (Twisted ")


def test_twistd_on_a_busy_port_prints_one_line(tmp_path: Path) -> None:
    """Under twistd itself, a port in use ends with exit 1 and one line on stderr, no traceback or files."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = SHIPPED.replace('uplink = "tcp:8080"', f'uplink = "tcp:{port}:interface=127.0.0.1"')
        text = text.replace('downlink = "tcp:9000"', 'downlink = "tcp:0:interface=127.0.0.1"')
        text = text.replace('api = "tcp:8081:interface=127.0.0.1"', 'api = "tcp:0:interface=127.0.0.1"')
        path = write_config(tmp_path, text)
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
                "-n",
                "--pidfile=",
                "cpmi-gateway",
                "--config",
                path,
            ],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    endpoint = f"tcp:{port}:interface=127.0.0.1"
    assert lines == [f"cpmi-gateway: listen.uplink: cannot listen on {endpoint}: Address already in use"]
    assert "Traceback" not in result.stdout
    assert created_by_start(tmp_path) == []
