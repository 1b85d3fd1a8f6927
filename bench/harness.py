"""What the benchmarks share: ports, a gateway under twistd, process CPU and memory, results.

Every benchmark runs the gateway as its own process (`twistd -n cpmi-gateway`)
and its load from other processes, so the figures are those of the gateway
alone; CPU time and RSS are read from /proc (Linux).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.lots.harness import HASH, PASSWORD

ROOT = Path(__file__).parent.parent
RESULTS = ROOT / "bench" / "results"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# Lots' password hashes with the least work Argon2id allows (the tests' own):
# thousands of lots log in during a benchmark, and the hash is not what is measured.
BENCH_PASSWORD, CHEAP_HASH = PASSWORD, HASH


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(port: int, process: subprocess.Popen[bytes], seconds: float = 30.0) -> None:
    """Wait until `port` accepts connections; exit if `process` dies or it takes too long."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {seconds} s")


def twistd_command(
    config: Path, log: Path, twistd_args: list[str] | None = None, prelude: str = ""
) -> list[str]:
    """The command that runs the gateway on `config` in the foreground, logging to `log`
    (`twistd_args`, e.g. ``--reactor asyncio``, go to twistd before the plugin's name;
    `prelude`, Python run in its process first, e.g. `bench.nodisk.PRELUDE`)."""
    prelude += os.environ.get("BENCH_PRELUDE", "")  # e.g. a GC probe, for investigations
    return [
        sys.executable,
        "-c",
        prelude + "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "--logfile",
        str(log),
        *(twistd_args or []),
        "cpmi-gateway",
        "--config",
        str(config),
    ]


@contextmanager
def gateway(
    work: Path, config_text: str, port: int, twistd_args: list[str] | None = None, prelude: str = ""
) -> Iterator[subprocess.Popen[bytes]]:
    """The gateway running in `work` on `config_text`, once `port` listens; stopped on exit."""
    config = work / "gateway.toml"
    config.write_text(config_text)
    command = twistd_command(config, work / "twistd.log", twistd_args, prelude)
    process = subprocess.Popen(command, env=ENV, cwd=work)
    try:
        wait_for(port, process, seconds=120.0)
        yield process
    finally:
        process.terminate()
        process.wait()


def machine_busy() -> tuple[int, int]:
    """The machine's CPU ticks so far: busy (all but idle and iowait), and all, over every core."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def busy_cores(before: tuple[int, int], after: tuple[int, int]) -> float:
    """How many of the machine's cores were busy, on average, between two `machine_busy` readings."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return (os.cpu_count() or 1) * busy / max(total, 1)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` and its threads so far."""
    return _stat_cpu(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time so far of the reactor's thread ("main") and of the others, by thread id."""
    return {
        "main" if task.name == str(pid) else task.name: _stat_cpu(task / "stat")
        for task in Path(f"/proc/{pid}/task").iterdir()
    }


def _stat_cpu(stat: Path) -> float:
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """The resident set size of process `pid` now."""
    found = re.search(r"^VmRSS:\s+(\d+) kB$", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(found.group(1)) * 1024 if found else 0


def metric(api_port: int, name: str) -> float:
    """The value of the unlabelled metric `name` on the gateway's /metrics (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf"^{re.escape(name)} ([\d.e+-]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def write_result(name: str, figures: dict[str, Any]) -> Path:
    """Write `figures` as bench/results/NAME.json (with the machine's CPU count); its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    figures = {**figures, "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    path.write_text(json.dumps(figures, indent=2) + "\n")
    return path


def py_spy(pid: int, path: str, seconds: float, rate: int = 400) -> subprocess.Popen[bytes]:
    """py-spy sampling process `pid` for `seconds`, its collapsed stacks (one per line) to `path`."""
    command = ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    command += ["--rate", str(rate), "--format", "raw", "--output", path, "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


def run_child(reactor: Any, start: Callable[[], object], stop: Callable[..., None], seconds: float) -> None:
    """Run a load-generating child process's reactor until SIGTERM/SIGINT, `seconds` (0: no limit),
    or its parent's death, calling `stop` (which must stop the reactor and tolerate a second call).

    A benchmark killed in the middle must not leave its fleet or attackers behind,
    so the child checks every second that the process that started it is still there.
    """
    parent = os.getppid()

    def orphaned() -> None:
        if os.getppid() != parent:
            stop()
        else:
            reactor.callLater(1.0, orphaned)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    reactor.callWhenRunning(start)
    reactor.callWhenRunning(orphaned)
    if seconds > 0:
        reactor.callLater(seconds, stop)
    reactor.run(installSignalHandlers=False)
