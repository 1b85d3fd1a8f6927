"""The journal on a real, tiny file system that fills up: a tmpfs in a user and mount namespace.

Each test mounts a small tmpfs over a directory inside ``unshare -Urm``, takes most of it
with a filler file and runs twistd there with the journal on it. Nothing outside the
namespace sees that mount, so a shell in the namespace does what touches it: it deletes
the filler when the test creates a trigger file outside the mount, and copies the journal
out once twistd has stopped, for the test to read and ``cpmictl log verify``.
"""

from __future__ import annotations

import base64
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.journal.reader import read_records
from tests.lots.harness import HASH, PASSWORD
from tests.ports import free_port
from tests.processes import ROOT, gateway_toml, wait_for_port
from tests.test_end_to_end import CAR_IN, envelope, plain_post

MIB = 2**20
KIB = 2**10
# Random bytes, so that the image is as large in the journal as on the wire: 48 KiB of base64.
IMAGE = base64.b64encode(random.Random(7).randbytes(36 * KIB)).decode("ascii")

# Runs as root of a new user namespace, in a new mount namespace, with the settings in its
# environment. It waits for twistd (not exec: it copies the journal out afterwards).
NAMESPACE_SCRIPT = r"""
set -eu
mount -t tmpfs -o "size=$DISK_BYTES" none "$DISK"
mkdir "$DISK/journal"
dd if=/dev/zero of="$DISK/filler" bs=4096 count="$FILLER_PAGES" 2>/dev/null
(
    while [ ! -e "$OUT/free-space" ]; do sleep 0.05; done
    rm -f "$DISK/filler"
    touch "$OUT/space-freed"
) &
watcher=$!
"$PYTHON" -c 'from twisted.scripts.twistd import run; run()' -n --pidfile= \
    --logfile "$OUT/twistd.log" cpmi-gateway --config "$OUT/gateway.toml" &
twistd=$!
echo "$twistd" > "$OUT/twistd.pid.tmp"
mv "$OUT/twistd.pid.tmp" "$OUT/twistd.pid"
status=0
wait "$twistd" || status=$?
echo "$status" > "$OUT/twistd.status"
kill "$watcher" 2>/dev/null || true
cp -R "$DISK/journal" "$OUT/journal-copy"
"""


@pytest.fixture(scope="module")
def namespaces(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skips the module where an unprivileged user cannot mount a tmpfs in new user+mount namespaces."""
    where = tmp_path_factory.mktemp("probe")
    command = ["unshare", "-Urm", "sh", "-c", 'mount -t tmpfs -o size=1m none "$0"', str(where)]
    try:
        probe = subprocess.run(command, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"cannot run unshare -Urm (needed to mount a small tmpfs): {error}")
    if probe.returncode != 0:
        reason = probe.stderr.decode(errors="replace").strip()
        pytest.skip(f"no tmpfs in unprivileged user+mount namespaces here (unshare -Urm: {reason})")


class GatewayOnSmallDisk:
    """twistd with its journal on a tmpfs of ``disk_bytes``, ``filler_bytes`` of it taken by a file."""

    def __init__(self, out: Path, *, disk_bytes: int, filler_bytes: int, journal_settings: str) -> None:
        self.out = out
        self.uplink, self.api = free_port(), free_port()
        (out / "disk").mkdir()
        (out / "gateway.toml").write_text(
            f"""
{gateway_toml(out, journal=out / "disk" / "journal", uplink=self.uplink, downlink=free_port(), api=self.api)}
{journal_settings}
[[lot]]
park_code = "P001"
username = "lot001"
password = "{HASH}"
secret = "k"
"""
        )
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PYTHON": sys.executable,
            "OUT": str(out),
            "DISK": str(out / "disk"),
            "DISK_BYTES": str(disk_bytes),
            "FILLER_PAGES": str(filler_bytes // 4096),
        }
        # A session of its own: teardown kills the shell, twistd and the watcher as one group.
        self.process = subprocess.Popen(
            ["unshare", "-Urm", "sh", "-c", NAMESPACE_SCRIPT],
            cwd=out,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.twistd_pid = 0

    def wait_ready(self) -> None:
        """Wait for both listeners; then the shell has written twistd's pid."""
        wait_for_port(self.uplink, self.process)
        wait_for_port(self.api, self.process)
        self.twistd_pid = int((self.out / "twistd.pid").read_text())

    def login(self) -> str:
        answer = plain_post(
            self.uplink, envelope("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD})
        )
        assert answer["resultCode"] == "0000", answer
        token: str = answer["data"]["token"]
        return token

    def upload_image(self, token: str, opr: str) -> dict[str, Any]:
        """A carImage carrying 48 KiB of base64: the journal grows by about that much when it is stored."""
        image = [{"recordCode": opr, "imageCode": f"IMG-{opr}", "imageType": 1, "imageBase64": IMAGE}]
        return plain_post(self.uplink, envelope("carImage", image, token, opr=opr))

    def upload_car_in(self, token: str, opr: str) -> dict[str, Any]:
        return plain_post(self.uplink, envelope("carIn", {**CAR_IN, "recordCode": opr}, token, opr=opr))

    def get(self, path: str) -> tuple[int, str]:
        """GET on the api listener: the status and the text, 503 included."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metric(self, name: str) -> float:
        _, text = self.get("/metrics")
        found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        assert found, f"{name} not in /metrics"
        return float(found.group(1))

    def free_space(self) -> None:
        """Have the shell in the namespace delete the filler; return once it has."""
        (self.out / "free-space").touch()
        deadline = time.monotonic() + 5
        while not (self.out / "space-freed").exists():
            assert time.monotonic() < deadline, "the filler was not deleted"
            time.sleep(0.02)

    def stop(self) -> Path:
        """SIGTERM twistd and wait for it and for the copy of the journal; the copy's path."""
        os.kill(self.twistd_pid, signal.SIGTERM)
        status = self.process.wait(20)
        errors = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
        assert status == 0, f"the shell in the namespace exited {status}: {errors}"
        # twistd stops cleanly on SIGTERM, then kills itself with it again so its status says so.
        twistd_status = (self.out / "twistd.status").read_text().strip()
        assert twistd_status in ("0", str(128 + signal.SIGTERM)), (twistd_status, errors)
        return self.out / "journal-copy"

    def kill(self) -> None:
        """Kill the group the shell leads: the shell, twistd and the watcher, if any is left."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)
        if self.process.stderr:
            self.process.stderr.close()


@pytest.fixture
def launch(namespaces: None, tmp_path: Path) -> Iterator[Callable[..., GatewayOnSmallDisk]]:
    """Starts gateways on small disks; whatever is still running at the end is killed."""
    started: list[GatewayOnSmallDisk] = []

    def start(**settings: Any) -> GatewayOnSmallDisk:
        out = tmp_path / f"gateway-{len(started)}"
        out.mkdir()
        gateway = GatewayOnSmallDisk(out, **settings)
        started.append(gateway)
        gateway.wait_ready()
        return gateway

    try:
        yield start
    finally:
        for gateway in started:
            gateway.kill()


def stored_uplinks(journal: Path) -> set[str]:
    return {record.opr for record in read_records(journal) if record.kind == "uplink"}


def assert_verifies(journal: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", "log", "verify", str(journal)],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")


def test_below_min_free_bytes_uploads_are_refused_until_space_returns(
    launch: Callable[..., GatewayOnSmallDisk],
) -> None:
    """Below journal.min_free_bytes lots get 9999 naming it and /readyz is 503; freed, both recover."""
    # 6 MiB, 2 MiB watermark, 2.25 MiB free at start: the refusal must come from the watermark,
    # well before the disk is full, and once the filler is gone the free space is past the
    # 3 MiB a low watch needs to resume.
    gateway = launch(
        disk_bytes=6 * MIB,
        filler_bytes=6 * MIB - 2 * MIB - 256 * KIB,
        journal_settings="min_free_bytes = 2097152",
    )
    token = gateway.login()
    assert gateway.get("/readyz")[0] == 200
    assert gateway.metric("cpmi_journal_space_low") == 0
    acknowledged: set[str] = set()
    refused: list[str] = []
    refusal: dict[str, Any] = {}
    for n in range(60):
        opr = f"fill-{n}"
        answer = gateway.upload_image(token, opr)
        if answer["resultCode"] != "0000":
            refused.append(opr)
            refusal = answer
            break
        acknowledged.add(opr)
        # Slower than the watch's 1 s checks could let the disk fill past the 2 MiB below the watermark.
        time.sleep(0.15)
    assert refusal, "the uploads never ran the free space below the watermark"
    assert refusal["resultCode"] == "9999", refusal
    message = refusal["resultMessage"]
    assert "free space on the journal's file system is" in message, message
    assert "below journal.min_free_bytes (2 MiB)" in message, message
    status, text = gateway.get("/readyz")
    assert status == 503 and "journal.min_free_bytes" in text, (status, text)
    assert gateway.metric("cpmi_journal_space_low") == 1
    assert gateway.metric("cpmi_journal_free_bytes") < 2 * MIB
    small = gateway.upload_car_in(token, "small-refused")
    assert small["resultCode"] == "9999" and "min_free_bytes" in small["resultMessage"], small
    refused.append("small-refused")

    gateway.free_space()
    deadline = time.monotonic() + 5
    for n in range(100):
        opr = f"after-{n}"
        answer = gateway.upload_car_in(token, opr)
        if answer["resultCode"] == "0000":
            acknowledged.add(opr)
            break
        assert answer["resultCode"] == "9999", answer
        refused.append(opr)
        assert time.monotonic() < deadline, f"still refused 5 s after the filler went: {answer}"
        time.sleep(0.1)
    retried = gateway.upload_image(token, refused[0])  # the lot retries the refused oprNum
    assert retried["resultCode"] == "0000", retried
    acknowledged.add(refused.pop(0))
    assert gateway.get("/readyz") == (200, '{"status":"ready","reason":"journal writable"}')
    assert gateway.metric("cpmi_journal_space_low") == 0
    assert gateway.metric("cpmi_journal_free_bytes") >= 3 * MIB

    journal = gateway.stop()
    stored = stored_uplinks(journal)
    assert acknowledged <= stored, sorted(acknowledged - stored)
    assert not stored & set(refused), sorted(stored & set(refused))
    assert_verifies(journal)


def test_real_enospc_fails_only_the_records_not_stored(launch: Callable[..., GatewayOnSmallDisk]) -> None:
    """Guard off: writes hitting ENOSPC answer 9999, the rest is stored, and the gateway goes on."""
    # 512 KiB free and 64 KiB segments: about ten images fit, most in a segment of their own, so
    # writes fail both in the middle of a segment and in one just started.
    gateway = launch(
        disk_bytes=2 * MIB,
        filler_bytes=2 * MIB - 512 * KIB,
        journal_settings="min_free_bytes = 0\nsegment_bytes = 65536",
    )
    token = gateway.login()
    answers: dict[str, dict[str, Any]] = {}  # by oprNum; dict assignment is atomic under the GIL

    def fill(worker: int) -> None:
        """Upload images until three are refused: four of these at once share the journal's batches."""
        refusals = 0
        for n in range(40):
            opr = f"w{worker}-{n}"
            answers[opr] = answer = gateway.upload_image(token, opr)
            refusals += answer["resultCode"] != "0000"
            if refusals == 3:
                return

    workers = [threading.Thread(target=fill, args=(worker,)) for worker in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(20)
    acknowledged = {opr for opr, answer in answers.items() if answer["resultCode"] == "0000"}
    refused = sorted(opr for opr, answer in answers.items() if answer["resultCode"] != "0000")
    assert len(acknowledged) >= 5 and len(refused) >= 12, (len(acknowledged), len(refused))
    for opr in refused:
        assert answers[opr]["resultCode"] == "9999", answers[opr]
        assert "No space left on device" in answers[opr]["resultMessage"], answers[opr]
    assert gateway.process.poll() is None, "twistd died on a full disk"
    # Each failed batch was cut off again: the journal is not broken, only short of space.
    assert gateway.get("/readyz") == (200, '{"status":"ready","reason":"journal writable"}')

    gateway.free_space()
    for n in range(5):
        opr = f"after-{n}"
        answer = gateway.upload_image(token, opr)
        assert answer["resultCode"] == "0000", answer
        acknowledged.add(opr)
    retried = gateway.upload_image(token, refused[0])  # the lot retries the refused oprNum
    assert retried["resultCode"] == "0000", retried
    acknowledged.add(refused.pop(0))

    journal = gateway.stop()
    stored = stored_uplinks(journal)
    assert acknowledged <= stored, sorted(acknowledged - stored)
    assert not stored & set(refused), sorted(stored & set(refused))
    assert_verifies(journal)


def test_sigterm_ends_the_journal_with_a_seal(launch: Callable[..., GatewayOnSmallDisk]) -> None:
    """twistd stopped by SIGTERM checkpoints and seals what was appended before the journal closes."""
    gateway = launch(disk_bytes=4 * MIB, filler_bytes=0, journal_settings="min_free_bytes = 0")
    token = gateway.login()
    assert gateway.upload_car_in(token, "before-stop")["resultCode"] == "0000"
    journal = gateway.stop()
    kinds = [record.kind for record in read_records(journal)]
    assert kinds[-2:] == ["checkpoint", "seal"], kinds
