"""docs/receiver.py and docs/cloud.md: the receiver matches the README, stays short and checks signatures."""

from __future__ import annotations

import ast
import json
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from nacl.signing import SigningKey

from gateway.cloud.events import BATCH_CONTENT_TYPE, batch_body, to_event
from gateway.cloud.httpsig import sign_request
from gateway.journal.record import Record
from gateway.keys import public_key_b64
from tests.ports import free_port
from tests.processes import wait_for_port

ROOT = Path(__file__).parent.parent
RECEIVER = ROOT / "docs" / "receiver.py"
README = ROOT / "README.md"
SECTION = "## Receiving events in your cloud"
KEY = SigningKey.generate()
SHANGHAI = ZoneInfo("Asia/Shanghai")


def _rstripped(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def test_readme_shows_the_receiver_verbatim() -> None:
    """The README's "Receiving events in your cloud" section shows docs/receiver.py as it is."""
    readme = README.read_text(encoding="utf-8")
    assert SECTION in readme
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block is not None, "no ```python block in the section"
    assert _rstripped(block.group(1)) == _rstripped(RECEIVER.read_text(encoding="utf-8"))


def test_receiver_is_short() -> None:
    """docs/receiver.py has at most 25 lines of code: not blank, not comments, not its docstring."""
    source = RECEIVER.read_text(encoding="utf-8")
    tree = ast.parse(source)
    first = tree.body[0]
    assert isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant), "no module docstring"
    assert first.end_lineno is not None
    lines = source.splitlines()[first.end_lineno :]
    code = [line for line in lines if line.strip() and not line.strip().startswith("#")]
    assert len(code) <= 25, "\n".join(code)


class Receiver:
    """A running docs/receiver.py: its URL and the lines it has printed so far."""

    def __init__(self, url: str, process: subprocess.Popen[str]) -> None:
        self.url = url
        self.process = process
        self._lines: queue.Queue[str] = queue.Queue()
        self.printed: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))

    def printed_until(self, last: str, timeout: float = 5.0) -> list[str]:
        """Every line printed up to and including the one starting with ``last``."""
        while not any(line.split(" ", 1)[0] == last for line in self.printed):
            self.printed.append(self._lines.get(timeout=timeout))
        return self.printed


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    """docs/receiver.py listening on a free port and trusting KEY."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/events"
    log = tmp_path_factory.mktemp("receiver") / "stderr.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(RECEIVER), url, public_key_b64(KEY)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            wait_for_port(port, process, 10.0, log=log)
            yield Receiver(url, process)
        finally:
            process.kill()
            process.wait(timeout=5)


_seqs = iter(range(1, 1_000_000))
CAR_IN = {"recordCode": "R0001", "carNum": "京A12345", "inCross": "IN-1", "inTime": "2026-11-24 08:30:00"}


def _batch() -> tuple[list[str], bytes]:
    """A fresh batch of two events (a carIn, a lot going offline): their ids and the body."""
    records = [
        Record(next(_seqs), "2026-11-24T00:30:01.207412Z", "uplink", "P001", "carIn", "q2", CAR_IN, ""),
        Record(next(_seqs), "2026-11-24T00:30:02Z", "lot-offline", "P002", "", "", {"reason": "idle"}, ""),
    ]
    events = [to_event(record, gateway_id="gw-01", zone=SHANGHAI) for record in records]
    sent = [event for event in events if event is not None]
    assert len(sent) == len(records)
    return [str(event["id"]) for event in sent], batch_body(sent)


def _signed(url: str, body: bytes, key: SigningKey = KEY) -> dict[str, str]:
    headers = sign_request("POST", url, body, key=key, keyid="gw-01", created=int(time.time())).as_dict()
    return {"Content-Type": BATCH_CONTENT_TYPE, **headers}


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


def _assert_refused(receiver: Receiver, body: bytes, headers: dict[str, str], ids: list[str]) -> None:
    """``body`` with ``headers`` gets 401 and none of ``ids`` is printed (a good batch after proves it)."""
    assert _post(receiver.url, body, headers) == 401
    marker_ids, marker = _batch()
    assert _post(receiver.url, marker, _signed(receiver.url, marker)) == 204
    printed = [line.split(" ", 1)[0] for line in receiver.printed_until(marker_ids[-1])]
    assert not set(ids) & set(printed)


def test_a_signed_batch_is_acknowledged_and_printed(receiver: Receiver) -> None:
    """A batch signed by the gateway's key for the configured URL gets 204; each event is printed."""
    ids, body = _batch()
    assert _post(receiver.url, body, _signed(receiver.url, body)) == 204
    printed = receiver.printed_until(ids[-1])
    assert f"{ids[0]} org.cpmi.t002.carIn.v1 urn:cpmi:park:P001" in printed
    assert f"{ids[1]} org.cpmi.gateway.lot-offline.v1 urn:cpmi:park:P002" in printed


def test_answers_close_the_connection(receiver: Receiver) -> None:
    """Answers say ``Connection: close``, so a pooling client (the gateway's) never reuses a closed one."""
    ids, body = _batch()
    request = urllib.request.Request(
        receiver.url, data=body, headers=_signed(receiver.url, body), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 204
        assert response.headers["Connection"] == "close"
    receiver.printed_until(ids[-1])


def test_a_body_changed_after_signing_is_refused(receiver: Receiver) -> None:
    """A body that no longer matches its Content-Digest gets 401 and nothing is printed."""
    ids, body = _batch()
    headers = _signed(receiver.url, body)
    changed = body.replace(b"R0001", b"R0002")
    assert changed != body
    _assert_refused(receiver, changed, headers, ids)


def test_a_digest_changed_with_the_body_is_refused(receiver: Receiver) -> None:
    """A changed body with a matching Content-Digest still gets 401: the digest is signed."""
    ids, body = _batch()
    changed = body.replace(b"R0001", b"R0002")
    headers = {
        **_signed(receiver.url, body),
        "Content-Digest": _signed(receiver.url, changed)["Content-Digest"],
    }
    _assert_refused(receiver, changed, headers, ids)


def test_a_signature_by_another_key_is_refused(receiver: Receiver) -> None:
    """A batch signed by a key other than the configured one gets 401."""
    ids, body = _batch()
    _assert_refused(receiver, body, _signed(receiver.url, body, SigningKey.generate()), ids)


def test_a_signature_for_another_url_is_refused(receiver: Receiver) -> None:
    """A signature over another @target-uri gets 401: the receiver checks the configured URL."""
    ids, body = _batch()
    _assert_refused(receiver, body, _signed("https://cloud.example/events", body), ids)


@pytest.mark.parametrize(
    "missing",
    [
        ("Signature",),
        ("Signature-Input",),
        ("Content-Digest",),
        ("Content-Digest", "Signature-Input", "Signature"),
    ],
)
def test_missing_headers_are_refused(receiver: Receiver, missing: tuple[str, ...]) -> None:
    """A batch without one of the signature headers, or without all of them, gets 401."""
    ids, body = _batch()
    headers = {name: value for name, value in _signed(receiver.url, body).items() if name not in missing}
    _assert_refused(receiver, body, headers, ids)


def test_the_example_batch_in_docs_is_what_the_gateway_sends() -> None:
    """docs/cloud.md's example batch is exactly what events.to_event makes of the records it describes."""
    text = (ROOT / "docs" / "cloud.md").read_text(encoding="utf-8")
    block = re.search(r"```json\n(\[.*?\])\n```", text, re.DOTALL)
    assert block is not None, "no example batch in docs/cloud.md"
    delivered = {
        "seq": 40,
        "client": "cloud",
        "outcome": "delivered",
        "attempts": 1,
        "resultCode": "0000",
        "resultMessage": "操作成功",
    }
    records = [
        Record(
            41,
            "2026-11-24T00:29:58.412031Z",
            "lot-online",
            "P001",
            "",
            "",
            {"peer": "10.0.0.2:51234", "reason": "login"},
            "",
        ),
        Record(
            42,
            "2026-11-24T00:30:01.207412Z",
            "uplink",
            "P001",
            "carIn",
            "q2",
            {**CAR_IN, "inIdentity": 2},
            "",
        ),
        Record(
            44,
            "2026-11-24T00:30:02.118305Z",
            "sync-done",
            "P001",
            "blacklist",
            "5f0c2a9e41d84b7c9a3e6d21c07b8f15",
            delivered,
            "",
        ),
    ]
    expected = [to_event(record, gateway_id="gw-01", zone=SHANGHAI) for record in records]
    assert json.loads(block.group(1)) == expected
