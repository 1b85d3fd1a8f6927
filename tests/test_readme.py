"""The README, done as a new operator does it, in a fresh copy of the sources and a fresh `.venv`.

The run command's install steps, then its `twistd` on the shipped config, the
curl quick start (login, carIn, the journal line, GET /v1/parks with the token
file made at first start) and the status page; then the test command's install
steps in the same environment, after which the gateway and `cpmictl` still work
from any directory, and an uninstall leaves nothing in site-packages (issue 21).

The commands are read from the README itself, so a step missing there fails
here. Where the system's Python 3.11 is externally managed (Debian, Ubuntu),
the run command's install steps are also done with it as `python3`. Only the
ports are changed (to free ones), so that the test does not depend on 8080,
9000 and 8081 being free on the machine running it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dialects.test_discovery import free_ports

ROOT = Path(__file__).parent.parent
INSTALL_TIMEOUT = 600


def readme_blocks() -> list[str]:
    """The README's ```sh blocks, in order."""
    return re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)


def split_command(command: str, runs: str) -> tuple[str, str]:
    """A README command split before ` && {runs}`: its install steps, and what it runs."""
    install, sep, rest = command.strip().rpartition(f" && {runs}")
    assert sep, f"the README's command does not end with && {runs}...: {command}"
    return install, runs + rest


def test_the_readme_starts_with_the_run_and_the_test_command() -> None:
    """The first two blocks are one line each: install and run on conf/gateway.toml; install and pytest."""
    run, test = readme_blocks()[:2]
    assert run.count("\n") == 1 and test.count("\n") == 1
    assert run.strip().endswith("twistd -n cpmi-gateway --config conf/gateway.toml")
    assert test.strip().endswith("python -m pytest -q")
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("\n" + test.strip())


def copy_sources(target: Path) -> None:
    """The repository's files as a clone would have them (tracked and new, not ignored ones)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if not os.path.lexists(source):
            continue  # deleted, not yet committed
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), target / name)
        else:
            shutil.copy2(source, target / name)


def operator_environment() -> dict[str, str]:
    """The environment of a shell an operator opens: no PYTHONPATH or virtual environment of ours."""
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    outer = str(Path(sys.prefix) / "bin")
    if sys.prefix != sys.base_prefix:  # the suite's own venv is active: an operator's shell has not got it
        environ["PATH"] = os.pathsep.join(p for p in environ["PATH"].split(os.pathsep) if p != outer)
    return environ


def shell(command: str, cwd: Path, timeout: float = INSTALL_TIMEOUT) -> str:
    """Run `command` with bash in `cwd`, as the operator would; its output, failing on a non-zero exit."""
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=operator_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the sources whose shipped config listens on free ports."""
    root = tmp_path_factory.mktemp("readme") / "cpmi-gateway"
    copy_sources(root)
    uplink, downlink, api = free_ports(3)
    config = root / "conf" / "gateway.toml"
    text = config.read_text(encoding="utf-8")
    for old, new in (
        ('uplink = "tcp:8080"', f'uplink = "tcp:{uplink}"'),
        ('downlink = "tcp:9000"', f'downlink = "tcp:{downlink}"'),
        ('api = "tcp:8081:interface=127.0.0.1"', f'api = "tcp:{api}:interface=127.0.0.1"'),
    ):
        assert old in text
        text = text.replace(old, new)
    config.write_text(text, encoding="utf-8")
    (root / "ports.json").write_text(json.dumps({"uplink": uplink, "api": api}))
    yield root


def get(url: str, token: str = "") -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_ready(api: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"twistd exited {process.returncode}: {process.communicate()}")
        try:
            if get(f"http://127.0.0.1:{api}/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("the gateway did not become ready")


def stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM twistd and return its output; it must end by itself (ending with the signal it got)."""
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    assert process.returncode in (0, -signal.SIGTERM), out
    assert "Server Shut Down." in out
    return out


def site_packages(venv: Path) -> Path:
    [found] = venv.glob("lib/python3*/site-packages")
    return found


def test_a_new_operator_follows_the_readme(checkout: Path, tmp_path: Path) -> None:
    """Run command, quick start and status page on the shipped config; then the test command's install,
    after which twistd and cpmictl still work from anywhere; an uninstall leaves nothing behind."""
    blocks = readme_blocks()
    run_install, run_gateway = split_command(blocks[0], "twistd ")
    test_install, _ = split_command(blocks[1], "python -m pytest")
    ports = json.loads((checkout / "ports.json").read_text())
    uplink, api = ports["uplink"], ports["api"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # 1. The run command's install steps, then its twistd, from the checkout.
    shell(run_install, checkout)
    venv = checkout / ".venv"
    assert not (site_packages(venv) / "__editable__.cpmi_gateway-0.1.0.pth").exists()
    process = subprocess.Popen(
        ["bash", "-c", f". .venv/bin/activate && exec {run_gateway}"],
        cwd=checkout,
        env=operator_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_ready(api, process)
        # 2. The quick start as written, in another shell in the checkout.
        quick_start = blocks[2].replace("localhost:8080", f"localhost:{uplink}")
        quick_start = quick_start.replace("localhost:8081", f"localhost:{api}")
        out = shell(quick_start, checkout, timeout=120)
        car_in, record, parks = out.splitlines()[-3:]
        assert json.loads(car_in)["code"] == "carIn" and json.loads(car_in)["resultCode"] == "0000", out
        assert json.loads(record)["code"] == "carIn" and json.loads(record)["kind"] == "uplink"
        assert [park["parkCode"] for park in json.loads(parks)["parks"]] == ["P001"]
        # 3. The status page: served, and its data with the same token.
        token = (checkout / "var" / "api-token").read_text().strip()
        status, page = get(f"http://127.0.0.1:{api}/")
        assert status == 200 and "<html" in page.lower()
        assert get(f"http://127.0.0.1:{api}/v1/status", token)[0] == 200
        assert get(f"http://127.0.0.1:{api}/v1/status", token + "x")[0] == 401
    finally:
        if process.poll() is None:
            log = stop(process)
    assert "created the API token file var/api-token" in log

    # 4. The wheel alone: cpmictl init from elsewhere takes the example it ships.
    cpmictl = str(venv / "bin" / "cpmictl")
    lines = shell(f"{cpmictl} init gw", elsewhere)
    assert re.search(r"^api token: \S{40,}$", lines, re.M), lines
    shell(f"{cpmictl} config check gw/gateway.toml", elsewhere)

    # 5. The test command's install steps in the same environment (issue 21, item 1).
    shell(test_install, checkout)
    assert (site_packages(venv) / "__editable__.cpmi_gateway-0.1.0.pth").exists()
    assert not (site_packages(venv) / "gateway").exists()
    twistd = str(venv / "bin" / "twistd")
    assert "cpmi-gateway 0.1.0" in shell(f"{twistd} cpmi-gateway --version", elsewhere)
    assert "cpmi-gateway" in shell(f"{twistd} --help", elsewhere)
    assert shell(f"{cpmictl} --version", elsewhere).strip() == "cpmictl 0.1.0"
    listed = shell(
        f"{venv / 'bin' / 'python'} -c 'import gateway.dialects as d; print(sorted(d.installed()))'",
        elsewhere,
    )
    assert listed.strip() == "['bolink', 'standard']"
    shell(f"{venv / 'bin' / 'python'} -m pytest --version", elsewhere)

    # 6. Uninstalled: nothing of the gateway stays in site-packages (no dropin.cache, no folder).
    shell(f"{venv / 'bin' / 'pip'} uninstall -y -q cpmi-gateway", elsewhere)
    left = [p.name for p in site_packages(venv).iterdir() if "cpmi" in p.name or p.name == "gateway"]
    assert left == []
    assert list((site_packages(venv) / "twisted" / "plugins").glob("cpmi_gateway*")) == []
    assert "cpmi-gateway" not in shell(f"{twistd} --help", elsewhere)


def distribution_pythons() -> list[Path]:
    """The system's own Python 3.11 where it refuses `pip install` into itself (PEP 668: Debian, Ubuntu)."""
    python = Path("/usr/bin/python3.11")
    marker = Path("/usr/lib/python3.11/EXTERNALLY-MANAGED")
    return [python] if python.exists() and marker.exists() else []


@pytest.mark.parametrize("python", distribution_pythons())
def test_the_run_command_installs_with_the_distributions_python(python: Path, tmp_path: Path) -> None:
    """With `python3` the distribution's externally managed 3.11, the run command's install steps make
    .venv from it and install there; the installed twistd and cpmictl work from any directory."""
    root = tmp_path / "cpmi-gateway"
    copy_sources(root)
    first = tmp_path / "bin"
    first.mkdir()
    (first / "python3").symlink_to(python)
    run_install, _ = split_command(readme_blocks()[0], "twistd ")
    shell(f'PATH="{first}:$PATH" && {run_install}', root)
    venv = root / ".venv"
    base = shell(f"{venv / 'bin' / 'python'} -c 'import sys; print(sys.base_prefix)'", tmp_path).strip()
    assert Path(base) == Path(python.resolve().parent.parent)  # /usr: the distribution's Python
    assert shell(f"{venv / 'bin' / 'cpmictl'} --version", tmp_path).strip() == "cpmictl 0.1.0"
    assert "cpmi-gateway 0.1.0" in shell(f"{venv / 'bin' / 'twistd'} cpmi-gateway --version", tmp_path)
