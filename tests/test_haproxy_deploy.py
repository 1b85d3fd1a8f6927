"""What deploy/ ships for several gateways: the balancer's configuration and the units per instance."""

from __future__ import annotations

import configparser
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SINGLE = ROOT / "conf" / "cpmi-gateway.service"


def read_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def backends(text: str) -> dict[str, list[str]]:
    """haproxy.cfg's backend sections: their lines, comments dropped."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not raw.startswith((" ", "\t")) and line:
            kind, _, name = line.partition(" ")
            current = sections.setdefault(name, []) if kind == "backend" else None
        elif current is not None and line:
            current.append(line)
    return sections


def test_both_backends_balance_by_source_consistently_proxy_v2_and_check_readyz() -> None:
    """Uplink and downlink: mode tcp, balance source, consistent hashing, send-proxy-v2, /readyz checks."""
    text = (DEPLOY / "haproxy.cfg").read_text()
    assert re.search(r"^defaults\n(    .*\n)*    mode tcp\n", text, re.MULTILINE)
    found = backends(text)
    assert set(found) == {"gateways_uplink", "gateways_downlink"}
    servers = {}
    for name, lines in found.items():
        assert {"balance source", "hash-type consistent", "option httpchk GET /readyz"} <= set(lines), name
        [default] = [line for line in lines if line.startswith("default-server")]
        assert {"send-proxy-v2", "check"} <= set(default.split())
        servers[name] = [line.split() for line in lines if line.startswith("server ")]
    # The same gateway has the same name and id in both: a lot's uplink and downlink hash alike.
    ids = {
        name: [(s[1], s[s.index("id") + 1], s[s.index("port") + 1]) for s in rows]
        for name, rows in servers.items()
    }
    assert ids["gateways_uplink"] == ids["gateways_downlink"]


def test_the_instance_ports_of_the_unit_are_the_balancers_servers() -> None:
    """Instance N listens on 1808N, 1900N and 1818N, as the unit says and haproxy.cfg's server lines use."""
    unit = (DEPLOY / "cpmi-gateway@.service").read_text()
    assert 'uplink = "haproxy:tcp:1808N:interface=127.0.0.1"' in unit
    assert 'downlink = "haproxy:tcp:1900N:interface=127.0.0.1"' in unit
    assert 'api = "tcp:1818N:interface=127.0.0.1"' in unit
    found = backends((DEPLOY / "haproxy.cfg").read_text())
    for backend, base in (("gateways_uplink", 18080), ("gateways_downlink", 19000)):
        for line in (line.split() for line in found[backend] if line.startswith("server ")):
            number = int(line[1].removeprefix("gw"))
            assert line[2] == f"127.0.0.1:{base + number}" and line[line.index("port") + 1] == str(
                18180 + number
            )


def test_each_instance_runs_on_its_own_config_and_state_hardened_as_the_single_gateway() -> None:
    """cpmi-gateway@N: gateway-N.toml, /var/lib/cpmi-gateway/N; otherwise the single unit's settings."""
    single = read_unit(SINGLE)["Service"]
    instance = read_unit(DEPLOY / "cpmi-gateway@.service")["Service"]
    argv = shlex.split(instance["ExecStart"])
    assert argv[:-1] == shlex.split(single["ExecStart"])[:-1]
    assert argv[-1] == "/etc/cpmi-gateway/gateway-%i.toml"
    assert instance["WorkingDirectory"] == "/var/lib/cpmi-gateway/%i"
    assert instance["StateDirectory"] == "cpmi-gateway/%i"
    assert instance["ReadWritePaths"] == "/var/lib/cpmi-gateway/%i"
    differ = {"ExecStart", "ExecReload", "WorkingDirectory", "StateDirectory", "ReadWritePaths"}
    for key, value in single.items():
        if key not in differ:
            assert instance.get(key) == value, key
    assert read_unit(DEPLOY / "cpmi-gateway@.service")["Install"]["WantedBy"] == "multi-user.target"


def test_each_instance_is_backed_up_on_its_own() -> None:
    """cpmi-gateway-backup@N backs up instance N's journal to /srv/cpmi-backup/N, every minute."""
    single = read_unit(DEPLOY / "cpmi-gateway-backup.service")["Service"]
    service = read_unit(DEPLOY / "cpmi-gateway-backup@.service")["Service"]
    argv = shlex.split(service["ExecStart"])
    shipped = tomllib.loads((ROOT / "conf" / "gateway.toml").read_text())["journal"]["path"]
    assert argv[:3] == shlex.split(single["ExecStart"])[:3]
    assert PurePosixPath(argv[3]) == PurePosixPath("/var/lib/cpmi-gateway/%i") / shipped
    assert argv[4] == "/srv/cpmi-backup/%i/journal"
    assert service["ExecStartPre"] == single["ExecStartPre"]
    assert service["ReadWritePaths"] == "/srv/cpmi-backup/%i"
    timer = read_unit(DEPLOY / "cpmi-gateway-backup@.timer")["Timer"]
    assert timer["Unit"] == "cpmi-gateway-backup@%i.service" and timer["OnCalendar"] == "minutely"
