"""
The restore drill and backup under load, with a real ``twistd -n cpmi-gateway`` (real sockets, processes).

A cloud that drops duplicate event ids, as the contract tells it to, must
never be given one id for two records: not after the journal is lost and
restored from a backup either.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gateway.journal.backup import backup
from gateway.journal.integrity import verify_journal
from gateway.journal.kinds import RESTORE_RECORD
from gateway.journal.reader import read_records
from gateway.journal.segments import list_segments
from gateway.keys import load_or_create_signing_key, public_key_b64
from tests.test_cloud_end_to_end import write_config as cloud_config
from tests.test_end_to_end import (
    CAR_IN,
    PASSWORD,
    ROOT,
    envelope,
    free_port,
    plain_post,
    start_twistd,
    upload,
    wait_for_port,
)


class DedupingCloud:
    """A CloudEvents batch receiver that keeps the first event of each id and drops repeats, as told."""

    def __init__(self) -> None:
        self.kept: dict[str, dict[str, Any]] = {}
        """The first event seen of each id."""
        self.conflicts: list[tuple[dict[str, Any], dict[str, Any]]] = []
        """An id seen again with other data: a new record the cloud threw away."""
        self.deliveries: dict[str, int] = {}
        """How many times each id was received."""
        self.up = True
        cloud = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not cloud.up:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                for event in json.loads(body):
                    cloud.deliveries[event["id"]] = cloud.deliveries.get(event["id"], 0) + 1
                    first = cloud.kept.setdefault(event["id"], event)
                    if first["data"] != event["data"] or first["type"] != event["type"]:
                        cloud.conflicts.append((first, event))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/events"

    def record_codes(self) -> dict[str, str]:
        """recordCode -> event id, for the carIns received."""
        return {e["data"]["recordCode"]: i for i, e in self.kept.items() if e["type"].endswith(".carIn.v1")}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_config(tmp_path: Path, port: int, cloud_url: str) -> Path:
    """The cloud end-to-end tests' config, as gw-drill, retrying the cloud quickly."""
    cloud = f'url = "{cloud_url}"\nbatch_max_delay = 0.02\nretry_min_delay = 0.1\nretry_max_delay = 0.3'
    return cloud_config(tmp_path, "gw-drill", port, cloud)


def wait_until(condition: Callable[[], bool], deadline: float = 30.0) -> None:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def cpmictl(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run cpmictl as an operator does, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        process.wait(30)


def test_restore_drill_never_gives_an_event_id_to_two_records(tmp_path: Path) -> None:
    """
    Backup, more uplinks, journal lost, restore, more uplinks.

    Everything acknowledged before the backup reaches the cloud; no id is seen with two records.
    """
    key, _ = load_or_create_signing_key(str(tmp_path / "gateway.key"))
    cloud = DedupingCloud()
    port = free_port()
    config = write_config(tmp_path, port, cloud.url)
    journal, dest = tmp_path / "journal", tmp_path / "backup-disk" / "journal"
    gateway = start_twistd(tmp_path, str(config))
    try:
        wait_for_port(port, gateway)
        login = envelope("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD})
        token = plain_post(port, login)["data"]["token"]

        def car_ins(first: int, count: int) -> None:
            for n in range(first, first + count):
                data = {**CAR_IN, "recordCode": f"R{n}"}
                answer = plain_post(port, envelope("carIn", data, token, f"o-{n}"))
                assert answer["resultCode"] == "0000", answer

        car_ins(0, 5)
        wait_until(lambda: len(cloud.record_codes()) == 5)
        cloud.up = False  # these are acknowledged to the lot, not yet to the cloud, at the backup
        car_ins(5, 3)
        done = cpmictl("log", "backup", str(journal), str(dest))
        assert done.returncode == 0, done.stderr
        cloud.up = True
        car_ins(8, 5)  # after the backup: the cloud gets them, the backup never will
        wait_until(lambda: len(cloud.record_codes()) == 13)
        before_loss = dict(cloud.record_codes())

        stop(gateway, signal.SIGKILL)  # the disk dies with the gateway
        for path in journal.iterdir():
            path.unlink()
        journal.rmdir()

        done = cpmictl("log", "restore", "--config", str(config), str(dest), str(journal))
        assert done.returncode == 0, done.stderr
        assert "the journal goes on at #" in done.stdout
        gateway = start_twistd(tmp_path, str(config))
        wait_for_port(port, gateway)
        car_ins(13, 5)  # the token survived in the backup
        wait_until(lambda: len(cloud.record_codes()) == 18)
        time.sleep(0.5)  # anything else re-sent would be here by now
    finally:
        stop(gateway)
        cloud.close()

    assert cloud.conflicts == []  # no id was ever seen with two different records
    received = cloud.record_codes()
    assert set(received) == {f"R{n}" for n in range(18)}
    for code, event_id in before_loss.items():
        assert received[code] == event_id
    records = list(read_records(journal))
    [restore_record] = [r for r in records if r.kind == RESTORE_RECORD]
    uplinks = {r.body["recordCode"]: r.seq for r in records if r.kind == "uplink"}
    assert set(uplinks) == {f"R{n}" for n in range(8)} | {f"R{n}" for n in range(13, 18)}
    for code, seq in uplinks.items():
        assert received[code] == f"gw-drill-{seq}"  # the backup's records with their original ids
    # Not acknowledged by the cloud at the backup: sent again from the backup, with the same ids.
    assert all(cloud.deliveries[before_loss[f"R{n}"]] == 2 for n in range(5, 8)), cloud.deliveries
    after = [uplinks[f"R{n}"] for n in range(13, 18)]
    assert min(after) > restore_record.seq
    lost_ids = {int(before_loss[f"R{n}"].rsplit("-", 1)[1]) for n in range(8, 13)}
    assert max(lost_ids) < restore_record.seq

    done = cpmictl("log", "verify", "--pubkey", public_key_b64(key), str(journal))
    assert done.returncode == 0, done.stderr
    assert f"restore record #{restore_record.seq}" in done.stdout


def test_backup_every_moment_under_load_with_a_kill_9(tmp_path: Path) -> None:
    """Backups over and over while twistd takes uplinks and is SIGKILLed: each verifies, misses nothing."""
    port = free_port()
    config = write_config(tmp_path, port, "http://127.0.0.1:1/events")
    journal, dest = tmp_path / "journal", tmp_path / "backup"
    acknowledged: set[str] = set()
    gateway = start_twistd(tmp_path, str(config))
    runs = 0
    try:
        wait_for_port(port, gateway)
        login = envelope("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD})
        token = plain_post(port, login)["data"]["token"]
        halt = threading.Event()
        workers = [
            threading.Thread(target=upload, args=(port, token, f"w{n}", halt, acknowledged)) for n in range(3)
        ]
        for worker in workers:
            worker.start()
        start = time.monotonic()
        killed = False
        while time.monotonic() - start < 4:
            acknowledged_before = set(acknowledged)
            result = backup(str(journal), str(dest))
            runs += 1
            verify_journal(dest)  # every run leaves a backup that verifies on its own
            held = {r.opr for r in read_records(dest) if r.kind == "uplink"}
            assert acknowledged_before <= held, sorted(acknowledged_before - held)[:5]
            assert result.last_seq is not None
            if not killed and time.monotonic() - start > 2:
                stop(gateway, signal.SIGKILL)
                killed = True
        halt.set()
        for worker in workers:
            worker.join(10)
        assert killed
        # After the kill: the backup holds everything up to the journal's last whole line.
        backup(str(journal), str(dest))
        whole = b"".join(Path(s.path).read_bytes() for s in list_segments(journal))
        whole = whole[: whole.rfind(b"\n") + 1]
        copied = b"".join(Path(s.path).read_bytes() for s in list_segments(dest))
        assert copied == whole
        # The gateway starts again (cutting a torn tail, if any) and the backup goes on from it.
        gateway = start_twistd(tmp_path, str(config))
        wait_for_port(port, gateway)
        token = plain_post(port, login)["data"]["token"]
        answer = plain_post(port, envelope("carIn", CAR_IN, token, "after-the-kill"))
        assert answer["resultCode"] == "0000"
        acknowledged.add("after-the-kill")
        backup(str(journal), str(dest))
    finally:
        stop(gateway)
    assert runs >= 3 and len(acknowledged) > 50, (runs, len(acknowledged))
    verify_journal(dest)
    held = {r.opr for r in read_records(dest) if r.kind == "uplink"}
    assert acknowledged <= held
