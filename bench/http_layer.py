"""What twisted.web's HTTP layer costs a request: a bare twisted.web resource against a bare llhttp parser.

Usage: python -m bench.http_layer [--seconds S] [--connections N] [--rounds R]

Two servers on the same Twisted reactor answer the same constant body to the
same wrk POST (a form body the size of a signed carIn): a `twisted.web`
resource (the baseline of `bench.uplink`), and a protocol of a few lines on
`httptools` (llhttp, the parser behind uvicorn). Both do no work of their own,
so the ratio is what an uplink spends in twisted.web's HTTP/1.1 channel and
request objects alone; issue 25 reads it as what "durable >= 1.0x bare" would
take; the uplink now runs on httptools itself (`gateway.lots.http`). Needs
`wrk`.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.harness import ENV, cpu_seconds, free_port, wait_for, write_result
from bench.uplink import BARE

LLHTTP = """
import sys
import httptools
from email.utils import formatdate
from twisted.internet import protocol, reactor

BODY = (b'{"code":"carIn","oprNum":"x","resultCode":"0000","resultMessage":"ok",'
        b'"signature":"","data":{}}')
HEAD = (b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json; charset=utf-8\\r\\n"
        b"Content-Length: %d\\r\\n" % len(BODY))

class Bare(protocol.Protocol):
    def connectionMade(self):
        self.parser = httptools.HttpRequestParser(self)
        self.body = []
    def on_body(self, data):
        self.body.append(data)
    def on_message_complete(self):
        b"".join(self.body)
        self.body = []
        date = formatdate(usegmt=True).encode()
        self.transport.write(HEAD + b"Date: " + date + b"\\r\\n\\r\\n" + BODY)
    def dataReceived(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.loseConnection()

factory = protocol.Factory()
factory.protocol = Bare
reactor.listenTCP(int(sys.argv[1]), factory, interface="127.0.0.1")
reactor.run()
"""
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = "param=" .. string.rep("x", 700)
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    script = Path(tempfile.mkdtemp(prefix="cpmi-bench-")) / "post.lua"
    script.write_text(WRK_SCRIPT)
    runs: dict[str, list[dict[str, float]]] = {"twisted.web": [], "llhttp": []}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, source in (("twisted.web", BARE), ("llhttp", LLHTTP)):
            port = free_port()
            server = subprocess.Popen([sys.executable, "-c", source, str(port)], env=ENV)
            stack.callback(server.wait)
            stack.callback(server.terminate)
            wait_for(port, server)
            servers[name] = (server.pid, port)
        for round_ in range(args.rounds):
            for name in runs if round_ % 2 == 0 else list(runs)[::-1]:
                pid, port = servers[name]
                before = cpu_seconds(pid)
                out = subprocess.run(
                    [
                        *("wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "-s", str(script)),
                        f"http://127.0.0.1:{port}/uplink",
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
                us = (cpu_seconds(pid) - before) / max(rps * args.seconds, 1) * 1e6
                runs[name].append({"rps": rps, "cpu_us_per_request": us})
                print(f"round {round_ + 1} {name:<12} {rps:>8.0f}/s  {us:>5.0f} us/req", flush=True)
    ratio = [b["rps"] / a["rps"] for a, b in zip(runs["twisted.web"], runs["llhttp"], strict=True)]
    us = {name: statistics.median(r["cpu_us_per_request"] for r in rs) for name, rs in runs.items()}
    print(
        f"llhttp/twisted.web {statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f});"
        f" server CPU a request: twisted.web {us['twisted.web']:.0f} us, llhttp {us['llhttp']:.0f} us"
    )
    write_result("http_layer", {"runs": runs, "llhttp_vs_twisted_web": ratio, "cpu_us_per_request": us})


if __name__ == "__main__":
    main()
