"""
A third-party dialect, installed the way its vendor ships it, is found, configured and served.

`vendor/` is the package `acme-dialect`: the `acme` dialect, declared as an entry
point of the group `cpmi_gateway.dialects`. It is installed with pip into a temporary directory; the
tests run Python with that directory on PYTHONPATH (and from a directory that is
not the repository, so that nothing depends on where they are started), and
finally the real gateway under `python -m twisted`. The kit's `DialectRig` tests
the same dialect in memory, as a vendor's own tests would.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from twisted.python.failure import Failure

from gateway.dialects.interface import Unsupported
from gateway.dialects.testing import DialectRig
from gateway.journal.reader import read_records
from tests.ports import free_ports
from tests.processes import gateway_toml

ROOT = Path(__file__).parents[2]
VENDOR = Path(__file__).parent / "vendor"
TIMEOUT = 120
# `twist`: runs in the foreground and writes no pid file (`-n` is twistd's, not twist's).
TWIST = (sys.executable, "-m", "twisted")
ACME_LOT = {"park_code": "P9", "dialect": "acme", "secret": "s3cret"}


def environment(*paths: Path) -> dict[str, str]:
    """The environment for a child Python: `paths`, then the repository, as its PYTHONPATH.

    The repository is there so that `gateway` imports wherever the child runs
    (an editable install may point at another checkout); it holds no dialect
    other than the built-in ones.
    """
    return {**os.environ, "PYTHONPATH": os.pathsep.join(str(path) for path in (*paths, ROOT))}


def run_python(code: str, cwd: Path, *paths: Path, args: tuple[str, ...] = ()) -> str:
    """Run `code` in a child Python started in `cwd` with `paths` importable; its standard output."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=environment(*paths),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def vendor_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The directory pip installed `acme-dialect` into (from a copy: pip builds next to the sources)."""
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed")
    work = tmp_path_factory.mktemp("acme-dialect")
    source, target = work / "source", work / "site"
    shutil.copytree(VENDOR, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    result = subprocess.run(
        [*install, "--no-index", "--disable-pip-version-check", "--target", str(target), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    yield target


LIST_DIALECTS = "import json, gateway.dialects as d; print(json.dumps(sorted(d.installed())))"


def test_installed_dialect_is_discovered(vendor_target: Path, tmp_path: Path) -> None:
    """installed() lists acme beside bolink and standard exactly when acme's package is importable."""
    without = json.loads(run_python(LIST_DIALECTS, tmp_path))
    found = json.loads(run_python(LIST_DIALECTS, tmp_path, vendor_target))
    assert {"bolink", "standard"} <= set(without)
    assert "acme" not in without
    assert found == sorted({*without, "acme"})
    assert {"acme", "bolink", "standard"} <= set(found)


def test_installing_leaves_the_vendor_sources_clean(vendor_target: Path) -> None:
    """Installing the vendor package writes no build/ or *.egg-info into the test tree."""
    assert not (VENDOR / "build").exists()
    assert not list(VENDOR.glob("*.egg-info"))


PARSE_CONFIGS = """
import json, sys
from gateway.config import ConfigError, parse

outcomes = []
for document in json.loads(sys.argv[1]):
    try:
        config = parse(document)
    except ConfigError as error:
        outcomes.append(str(error))
    else:
        outcomes.append({"lots": [[lot.park_code, lot.dialect] for lot in config.lots],
                         "acme": config.listen.endpoint("acme")})
print(json.dumps(outcomes))
"""


def test_config_takes_installed_dialect(vendor_target: Path, tmp_path: Path) -> None:
    """An acme lot is configured once acme is installed; its listener and secret are required."""
    documents = [
        {"listen": {"acme": "tcp:7000"}, "lot": [ACME_LOT]},
        {"lot": [ACME_LOT]},
        {"listen": {"acme": "tcp:7000"}, "lot": [{**ACME_LOT, "secret": ""}]},
    ]
    parsed, no_listener, no_secret = json.loads(
        run_python(PARSE_CONFIGS, tmp_path, vendor_target, args=(json.dumps(documents),))
    )
    assert parsed == {"lots": [["P9", "acme"]], "acme": "tcp:7000"}
    assert no_listener.startswith("listen.acme: required"), no_listener
    assert no_secret.startswith("lot[0].secret: "), no_secret
    [not_installed] = json.loads(run_python(PARSE_CONFIGS, tmp_path, args=(json.dumps(documents[:1]),)))
    assert not_installed.startswith("lot[0].dialect: 'acme' is not an installed dialect"), not_installed


def wait_ready(port: int, process: subprocess.Popen[bytes], log: Path, deadline: float = 60.0) -> None:
    """Return once the gateway's /readyz on `port` answers 200; fail if it exits or takes too long."""
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the gateway exited ({process.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise AssertionError("the gateway did not become ready")


def read_line(connection: socket.socket) -> bytes:
    """Read from `connection` up to and including a newline."""
    received = b""
    while not received.endswith(b"\n"):
        chunk = connection.recv(1024)
        if not chunk:
            raise AssertionError(f"the connection closed after {received!r}")
        received += chunk
    return received


def test_gateway_serves_installed_dialect(vendor_target: Path, tmp_path: Path) -> None:
    """twist cpmi-gateway serves acme's port: an IN line is answered OK, stored as carIn beside the line."""
    uplink, downlink, api, acme_port = free_ports(4)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
{gateway_toml(tmp_path, uplink=uplink, downlink=downlink, api=api, acme=acme_port)}
fsync = "always"
[cloud]
sink = "log-only"
[[lot]]
park_code = "P9"
dialect = "acme"
secret = "s3cret"
""",
        encoding="utf-8",
    )
    log = tmp_path / "gateway.log"
    with (tmp_path / "stderr").open("wb") as stderr:
        # PYTHONPATH has this repository (see `environment`), whose twisted/plugins Twisted finds there,
        # whatever checkout an installed cpmi-gateway points at. acme comes from its entry point, in the
        # dist-info pip wrote into vendor_target, also on PYTHONPATH.
        process = subprocess.Popen(
            [*TWIST, "--log-format=text", f"--log-file={log}", "cpmi-gateway", "--config", str(config)],
            cwd=ROOT,
            env=environment(vendor_target),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_ready(api, process, log)
        with socket.create_connection(("127.0.0.1", acme_port), timeout=10) as lot:
            lot.sendall(b"HELLO P9 s3cret\n")
            assert read_line(lot) == b"OK\n"
            lot.sendall("IN P9 京A12345 R1\n".encode())
            assert read_line(lot) == b"OK\n"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            raise
    text = log.read_text(encoding="utf-8")
    # twist ends itself with the signal it got once the reactor has stopped.
    assert process.returncode in (0, -signal.SIGTERM), text + (tmp_path / "stderr").read_text()
    assert "dialect acme: 1 lots" in text
    records = [record for record in read_records(tmp_path / "journal") if record.park == "P9"]
    assert [record.kind for record in records][:3] == ["lot-online", "uplink", "legacy"]
    car_in, legacy = records[1], records[2]
    assert (car_in.code, car_in.opr) == ("carIn", "IN:R1-0")
    assert car_in.body == {"recordCode": "R1", "carNum": "京A12345"}
    assert (legacy.code, legacy.opr) == ("IN", "IN:R1")
    assert legacy.body == {
        "dialect": "acme",
        "translated": ["carIn"],
        "message": {"line": "IN P9 京A12345 R1"},
    }


def load_acme() -> Any:
    """The `acme` dialect object from the vendor's sources (no install, nothing added to sys.path)."""
    spec = importlib.util.spec_from_file_location("acme_dialect", VENDOR / "acme_dialect" / "__init__.py")
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.acme


def test_rig_stores_an_entry_as_car_in() -> None:
    """In the kit's rig, HELLO then IN is answered OK twice and stored as one carIn the catalog accepts."""
    rig = DialectRig(load_acme(), lots=[ACME_LOT])
    lot = rig.connect()
    lot.send(b"HELLO P9 s3cret\r\n")
    lot.send("IN P9 京A12345 R1\n".encode())
    assert lot.received() == b"OK\nOK\n"
    assert rig.codes() == ["carIn"]
    rig.check_catalog()
    assert [(r.code, r.opr) for r in rig.originals()] == [("IN", "IN:R1")]
    assert rig.server.state("P9").connected
    lot.lose()
    assert not rig.server.state("P9").connected
    assert [r.kind for r in rig.records()] == ["lot-online", "uplink", "legacy", "lot-offline"]


def test_rig_refusals() -> None:
    """acme refuses a wrong secret, an IN before HELLO and a bad plate (named as the lot knows it)."""
    rig = DialectRig(load_acme(), lots=[ACME_LOT])
    lot = rig.connect()
    lot.send(b"IN P9 A1 R1\nHELLO P9 wrong\nHELLO P8 s3cret\nWHAT\n")
    first, wrong, unknown, what = lot.received().decode().splitlines()
    assert first == "ERR IN: say HELLO P9 <secret> first"
    assert wrong.startswith("ERR HELLO: P9") and unknown.startswith("ERR HELLO: P8")
    assert what.startswith("ERR expected HELLO")
    lot.send(b"HELLO P9 s3cret\nIN P9 " + b"A" * 60 + b" R2\n")
    ok, too_long = lot.received().decode().splitlines()
    assert ok == "OK"
    assert too_long.startswith("ERR ") and "carNum (from data.plate)" in too_long, too_long
    assert rig.codes() == []
    failures: list[Failure] = []
    rig.command("P9", "gateOpen", {"barCode": "1"}).addErrback(failures.append)
    assert failures[0].check(Unsupported)


def test_rig_answers_in_line_order() -> None:
    """An answer waiting for the journal holds back the answers to the lines after it."""
    rig = DialectRig(load_acme(), lots=[ACME_LOT])
    lot = rig.connect()
    lot.send(b"HELLO P9 s3cret\n")
    assert lot.received() == b"OK\n"
    rig.journal.hold = True
    lot.send(b"IN P9 A12345 R1\nWHAT\n")
    assert lot.received() == b""
    rig.journal.release()
    ok, what = lot.received().decode().splitlines()
    assert (ok, what.split()[:2]) == ("OK", ["ERR", "expected"])
