"""bench.hostile: its attacks, driven in memory, and the figures it reads (no timing asserted)."""

from __future__ import annotations

import argparse
import json
import re
import urllib.parse
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport

from bench.hostile import (
    DECLARED,
    HUGE,
    KINDS,
    TICK,
    Attack,
    AttackProtocol,
    CpuMark,
    Sample,
    assess,
    attack_arguments,
    latency,
    mean_share,
    memory,
    memory_figures,
    merged_reports,
    percentile,
    settings_toml,
    source_address,
    worker_kind,
)


def attack(kind: str, connections: int = 3, *options: str) -> tuple[Attack, MemoryReactorClock]:
    """An attack of `kind` on a memory reactor, started, with the benchmark's default knobs."""
    parser = argparse.ArgumentParser()
    attack_arguments(parser)
    args = parser.parse_args(list(options))
    args.kind, args.port, args.connections = kind, 8000, connections
    reactor = MemoryReactorClock()
    running = Attack(reactor, args)
    running.start()
    reactor.advance(1)
    return running, reactor


def connect(reactor: MemoryReactorClock, which: int = 0) -> tuple[AttackProtocol, StringTransport]:
    """Complete the `which`-th connection the attack asked for: its protocol and transport."""
    factory = reactor.tcpClients[which][2]
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert isinstance(protocol, AttackProtocol)
    return protocol, transport


def test_attacks_connect_from_loopback_peers_of_their_own_below_the_cap() -> None:
    """Every connection goes to 127.0.0.1, from a 127.K address that `--per-peer` connections share."""
    _, reactor = attack("slowloris", 70, "--per-peer=32")
    sources = [client[4][0] for client in reactor.tcpClients]
    assert {client[0] for client in reactor.tcpClients} == {"127.0.0.1"}
    assert sources[0] == sources[31] == "127.1.0.1" and sources[32] == "127.1.0.2"
    assert max(sources.count(source) for source in sources) == 32
    assert source_address(KINDS.index("flood"), 250 * 32, 32) == "127.4.1.1"


def test_slowloris_drips_header_bytes_and_never_ends_its_headers() -> None:
    """A slowloris connection sends a request line, then one byte per `--drip`, never a blank line."""
    _, reactor = attack("slowloris", 1, "--drip=3")
    _, transport = connect(reactor)
    start = len(transport.value())
    reactor.advance(3.0)  # the first byte comes at a random point of the first interval
    for _ in range(30):
        reactor.advance(3.0)
    sent = transport.value()
    assert sent.startswith(b"POST /uplink HTTP/1.1\r\n")
    assert len(sent) - start in (30, 31) and b"\r\n\r\n" not in sent


def test_the_dollar_stream_sends_its_rate_of_junk_and_waits_while_paused() -> None:
    """The `$` stream writes about `--dollar-rate` bytes a second, mostly `$`, none while paused."""
    _, reactor = attack("dollar", 1, "--dollar-rate=100000")
    protocol, transport = connect(reactor)
    for _ in range(round(1 / TICK)):
        reactor.advance(TICK)
    sent = transport.value()
    assert 95_000 <= len(sent) <= 105_000 and sent.count(b"$") > len(sent) // 2
    protocol.pauseProducing()  # type: ignore[attr-defined]
    transport.clear()
    reactor.advance(1.0)
    assert transport.value() == b""


def test_junk_requests_take_turns_and_count_the_answer() -> None:
    """Junk is a 5 MiB member without a token, a 300 MiB declared body, then a chunked one past the limit."""
    running, reactor = attack("junk", 3, "--over-bytes=100000", "--body-rate=1000000")
    connections = [connect(reactor, i) for i in range(3)]
    huge_wire, declared_wire, chunked_wire = (wire for _, wire in connections)
    declared = connections[1][0]
    head, _, body = huge_wire.value().partition(b"\r\n\r\n")
    envelope = json.loads(urllib.parse.unquote(body.decode().removeprefix("param=")))
    assert len(envelope["code"]) == HUGE and envelope["token"] == "" and f"{len(body)}".encode() in head
    for _ in range(10):
        reactor.advance(TICK)
    assert f"Content-Length: {DECLARED}".encode() in declared_wire.value()
    assert b"Transfer-Encoding: chunked" in chunked_wire.value()
    assert len(chunked_wire.value()) > 100_000 and not chunked_wire.disconnecting
    reactor.advance(5.0)  # sent all it would: it hangs up after --patience
    assert chunked_wire.disconnecting
    declared.dataReceived(b"HTTP/1.1 413 Request Entity Too Large\r\n\r\n")
    declared.connectionLost()
    assert running.counters["declared-over 413"] == 1


def test_the_login_flood_counts_answers_and_abandons_slow_ones() -> None:
    """A flood login carries a wrong password; an answer is counted, silence past `--patience` abandoned."""
    running, reactor = attack("flood", 2, "--patience=2")
    answered, answered_wire = connect(reactor, 0)
    silent, silent_wire = connect(reactor, 1)
    body = answered_wire.value().partition(b"\r\n\r\n")[2]
    envelope = json.loads(urllib.parse.unquote(body.decode().removeprefix("param=")))
    assert envelope["code"] == "login" and envelope["data"]["parkUserPwd"].startswith("wrong-")
    answered.dataReceived(b'HTTP/1.1 200 OK\r\n\r\n{"code":"login","resultCode":"9003"}')
    assert answered_wire.disconnecting
    answered.connectionLost()
    reactor.advance(2.0)
    assert silent_wire.disconnecting
    silent.connectionLost()
    assert running.counters["answered 9003"] == 1 and running.counters["abandoned"] == 1
    assert running.counters.get("cut", 0) == 0


def test_argon2_memory_is_read_from_the_64_mib_anonymous_mappings() -> None:
    """Of all the resident memory, the whole 64 MiBs of anonymous read-write mappings are Argon2id's."""
    smaps = "\n".join(
        [
            "7f0000000000-7f0004000000 rw-p 00000000 00:00 0",
            "Size:              65536 kB",
            "Rss:               60000 kB",
            "7f0004000000-7f000c000000 rw-p 00000000 00:00 0",
            "Size:             131072 kB",
            "Rss:              131072 kB",
            "7f000c000000-7f0010000000 rw-p 00000000 08:01 42     /usr/lib/libpython3.11.so",
            "Size:              65536 kB",
            "Rss:               65536 kB",
            "7f0010000000-7f0010500000 rw-p 00000000 00:00 0",
            "Size:               5120 kB",
            "Rss:                5120 kB",
            "7f0020000000-7f0024100000 rw-p 00000000 00:00 0",
            "Size:              66560 kB",
            "Rss:               66000 kB",
            "VmFlags: rd wr mr mw me ac sd",
        ]
    )
    # The last is a check's 64 MiB merged with a 1 MiB neighbour: 64 MiB of it are counted.
    assert memory(smaps) == ((60000 + 131072 + 65536 + 5120 + 66000) * 1024, (60000 + 131072 + 65536) * 1024)


def test_figures_read_percentiles_failures_and_targets() -> None:
    """Percentiles are nearest-rank over the successes; failures are counted by what they were."""
    assert percentile(range(1, 101), 0.99) == 99 and percentile([], 0.5) == 0.0
    samples = [("quiet", float(ms), "ok") for ms in range(1, 101)] + [("quiet", 5000.0, "connect")]
    quiet = latency(samples, "quiet")
    assert quiet["p50_ms"] == 50 and quiet["p99_ms"] == 99 and quiet["failures"] == {"connect": 1}
    figures: dict[str, Any] = {
        "p99_ratio": 2.9,
        "rss_growth_mib": 70.0,
        "fds_peak": 900,
        "fds_limit": 20000,
        "honest_connect_failures": 0,
        "emfile_log_lines": 0,
    }
    assert assess(figures) == {"p99_ratio": True, "rss": False, "fds": True}
    assert assess({**figures, "honest_connect_failures": 1})["fds"] is False


def test_settings_become_toml_tables_and_the_benchmarks_own_are_refused() -> None:
    """`--set uplink.KEY=VALUE` items group into one table per section; [journal] and the like are its own."""
    items = ["uplink.max_body_bytes=1048576", "tcp.max_unbound_bytes = 4096", "uplink.header_timeout=5"]
    text = settings_toml(items)
    assert text == "[uplink]\nmax_body_bytes = 1048576\nheader_timeout = 5\n[tcp]\nmax_unbound_bytes = 4096\n"
    for wrong in ('journal.fsync="never"', "uplink.max_body_bytes", "max_body_bytes=1"):
        with pytest.raises(SystemExit, match=re.escape(wrong)):
            settings_toml([wrong])


def test_cycles_add_up_each_attack_s_counters_and_average_the_cpu() -> None:
    """With --cycles, each cycle's attack processes count anew: counters are summed, the connections
    (the same each cycle) and labels kept; the CPU shares of the windows are averaged."""
    first = {"junk": {"kind": "junk", "connections": 12, "connects": 5, "huge-member 200": 2}}
    second = {"junk": {"kind": "junk", "connections": 12, "connects": 7, "declared-over 413": 1}}
    merged = merged_reports([first, second])
    counted = {"connects": 12, "huge-member 200": 2, "declared-over 413": 1}
    assert merged == {"junk": {"kind": "junk", "connections": 12, **counted}}
    windows = [
        (CpuMark(0.0, 0, 0, 0.0, 0.0, 0.0), CpuMark(10.0, 10, 20, 2.0, 1.0, 5.0)),
        (CpuMark(20.0, 0, 0, 0.0, 0.0, 1.0), CpuMark(30.0, 20, 20, 4.0, 3.0, 4.0)),
    ]
    share = mean_share(windows)
    assert share["reactor"] == 0.2 and share["other_threads"] == 0.1 and share["workers"] == 0.4


def test_the_rss_target_counts_the_gateway_and_its_workers_together() -> None:
    """The children are told apart by their command line; the growth is of the gateway and all its
    workers together, quiet median against the peak under attack, each part shown on its own too."""
    assert worker_kind(b"/usr/bin/python3\0-m\0gateway.lots.passwordworker\0") == "password"
    assert worker_kind(b"/usr/bin/python3\0-m\0gateway.lots.bodies\0") == "body"
    assert worker_kind(b"/bin/sh\0-c\0gateway.lots.bodies x\0") == "other"
    mib = 2**20

    def at(phase: str, gateway: int, passwords: int, bodies: int, argon2: int = 0) -> Sample:
        workers = {"body": bodies * mib, "password": passwords * mib, "other": 0}
        return Sample(phase, gateway * mib, argon2 * mib, 10, workers)

    samples = [at("quiet", 100, 90, 40), at("quiet", 101, 90, 40), at("quiet", 100, 154, 40)]
    samples += [at("attack", 104, 90, 60), at("ramp", 103, 91, 70), at("after", 500, 90, 40)]
    figures = memory_figures(samples, at("after", 102, 90, 45))
    assert figures["rss_total_quiet_mib"] == 231 and figures["rss_total_peak_mib"] == 264
    assert figures["rss_growth_mib"] == 33 and figures["rss_retained_mib"] == 6
    assert (figures["rss_passwords_quiet_mib"], figures["rss_passwords_peak_mib"]) == (90, 91)
    assert (figures["rss_bodies_quiet_mib"], figures["rss_bodies_peak_mib"]) == (40, 70)
    assert figures["rss_gateway_peak_mib"] == 104 and figures["argon2_in_gateway_peak_mib"] == 0
