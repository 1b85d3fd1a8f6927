"""The command API: authentication, roles, commands to lots, reading, health and metrics."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from gateway import config
from gateway.cloud.api import CommandApi
from gateway.interfaces import DeadlinePassed, LotReply, LotState, NotConnected
from gateway.journal.kinds import SYNC_DONE_RECORD, SYNC_RECORD
from gateway.lots.sync import SyncQueue
from tests.lots.harness import HASH, MemoryJournal, fired, result_of

START = 1_795_000_000.0  # 2026-11-18T11:06:40Z
CLOUD_TOKEN = "cloud-token"
TOKENS = {"reader": "read-token", "commander": "command-token", "syncer": "sync-token", "root": "admin-token"}
ROLES = {"reader": ["read"], "commander": ["command"], "syncer": ["sync"], "root": ["admin"]}


def _settings() -> config.Config:
    return config.parse(
        {
            "cloud": {"api_token": CLOUD_TOKEN},
            "api_client": [
                {
                    "name": name,
                    "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
                    "roles": ROLES[name],
                }
                for name, token in TOKENS.items()
            ],
            "lot": [
                {"park_code": "P001", "username": "lot001", "password": HASH},
                {"park_code": "P002", "username": "lot002", "password": HASH},
                {"park_code": "P003", "username": "lot003", "password": HASH},
            ],
        }
    )


class FakeLots:
    """The downlink side: answers each command as `mode` says, and records what it was asked."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.mode = "reply"
        self.asked: list[tuple[str, str, object]] = []
        self.oprs: list[str] = []
        self.waiting: list[Deferred[LotReply]] = []
        self.reply = LotReply(result_code="0000", result_message="操作成功", data={"barStatus": 1})

    def command(self, park: str, code: str, data: object, opr: str = "") -> Deferred[LotReply]:
        """Answer as `mode` says: reply, not-connected, deadline, or never."""
        self.asked.append((park, code, data))
        self.oprs.append(opr)
        if self.mode == "reply":
            return succeed(self.reply)
        if self.mode == "not-connected":
            return fail(NotConnected(park=park))
        if self.mode == "deadline":
            return fail(DeadlinePassed(park=park, code=code, deadline=self.clock.seconds()))
        waiting: Deferred[LotReply] = Deferred()
        self.waiting.append(waiting)
        return waiting

    def supports(self, park: str, code: str) -> bool:
        """Every downlink, but blacklist and gateState for P003 (as if its dialect lacked them)."""
        return not (park == "P003" and code in ("blacklist", "gateState"))

    def state(self, park: str) -> LotState:
        """P001 connected since START - 60; others never seen."""
        if park == "P001":
            return LotState(
                park="P001", connected=True, since=START - 60, last_seen=START, peer="10.0.0.5:4711"
            )
        return LotState(park=park, connected=False, since=None, last_seen=None, peer="")

    def states(self) -> list[LotState]:
        """Only the lots the downlink has seen."""
        return [self.state("P001")]


class Api:
    """A CommandApi in memory, with helpers to call it as a client would."""

    def __init__(self, journal: MemoryJournal | None = None) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.journal = journal if journal is not None else MemoryJournal(self.clock)
        self.lots = FakeLots(self.clock)
        self.registry = CollectorRegistry()
        self.readiness = (True, "journal open")
        self.sync = SyncQueue(lots=self.lots, journal=self.journal, clock=self.clock)
        self.api = CommandApi(
            config=_settings(),
            lots=self.lots,
            journal=self.journal,
            clock=self.clock,
            registry=self.registry,
            ready=lambda: self.readiness,
            sync=self.sync,
        )
        self.treq = StubTreq(self.api.resource())

    def start(
        self, method: str, path: str, token: str | None = CLOUD_TOKEN, body: bytes | object = None
    ) -> Deferred[Any]:
        """Start a request; its Deferred fires with the response."""
        headers = {} if token is None else {"Authorization": [f"Bearer {token}"]}
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        deferred = self.treq.request(method, "http://gw" + path, data=data, headers=headers)
        self.treq.flush()
        return deferred

    def finish(self, deferred: Deferred[Any]) -> tuple[int, dict[str, str], Any]:
        """The status, headers and body (JSON when it is) of a fired request."""
        response = result_of(deferred)
        content = self.treq.content(response)
        self.treq.flush()
        raw = result_of(content)
        headers = {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()}
        body = json.loads(raw) if headers.get("content-type", "").startswith("application/json") else raw
        return response.code, headers, body

    def call(
        self, method: str, path: str, token: str | None = CLOUD_TOKEN, body: bytes | object = None
    ) -> tuple[int, dict[str, str], Any]:
        """Make a request that is answered at once."""
        return self.finish(self.start(method, path, token, body))

    def gate(self, token: str | None = CLOUD_TOKEN, park: str = "P001") -> tuple[int, dict[str, str], Any]:
        """Ask `park` to open gate B1."""
        return self.call("POST", f"/v1/parks/{park}/commands/gateOpen", token, {"barCode": "B1", "isOpen": 1})


@pytest.fixture
def gw() -> Api:
    """A fresh command API."""
    return Api()


# --- authentication and roles ----------------------------------------------


def test_missing_bearer_is_401(gw: Api) -> None:
    """A request without a token is refused 401 with a Bearer challenge, and nothing is sent."""
    status, headers, body = gw.gate(token=None)
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert "error" in body
    assert gw.lots.asked == [] and gw.journal.records == []


def test_wrong_bearer_is_401(gw: Api) -> None:
    """An unknown token is refused 401 on commands and reads alike."""
    for method, path in (("POST", "/v1/parks/P001/commands/gateOpen"), ("GET", "/v1/parks")):
        status, headers, _ = gw.call(method, path, token="nope", body={"barCode": "B1"})
        assert status == 401
        assert headers["www-authenticate"].startswith("Bearer")


def test_other_scheme_is_401(gw: Api) -> None:
    """Basic credentials are not a bearer token."""
    deferred = gw.treq.get("http://gw/v1/parks", headers={"Authorization": ["Basic Y2xvdWQtdG9rZW4="]})
    gw.treq.flush()
    assert gw.finish(deferred)[0] == 401


def test_read_only_client_cannot_open_a_gate(gw: Api) -> None:
    """A client with only `read` is refused 403 on a command, and the lot is not asked."""
    status, _, body = gw.gate(token=TOKENS["reader"])
    assert status == 403
    assert "reader" in body["error"]
    assert gw.lots.asked == [] and gw.journal.records == []


def test_command_client_cannot_read(gw: Api) -> None:
    """Reading needs `read`: a client with only `command` is refused 403 on GETs under /v1."""
    for path in ("/v1/parks", "/v1/parks/P001", "/v1/schemas/carIn.json", "/v1/openapi.json"):
        assert gw.call("GET", path, token=TOKENS["commander"])[0] == 403, path


def test_command_client_cannot_sync_and_sync_client_cannot_command(gw: Api) -> None:
    """`command` and `sync` are separate roles."""
    sync = gw.call("POST", "/v1/parks/P001/commands/blacklist", TOKENS["commander"], {"carNum": "京A1"})
    assert sync[0] == 403
    assert gw.gate(token=TOKENS["syncer"])[0] == 403


def test_admin_can_do_all(gw: Api) -> None:
    """An `admin` client reads, commands and passes the sync checks."""
    token = TOKENS["root"]
    assert gw.call("GET", "/v1/parks", token)[0] == 200
    assert gw.gate(token=token)[0] == 200
    assert gw.call("POST", "/v1/parks/P001/commands/blacklist", token, {"carNum": "京A1"})[0] == 202
    assert gw.journal.records[0].body["client"] == "root"


def test_api_token_has_full_access(gw: Api) -> None:
    """`cloud.api_token` reads and commands, journaled as client "cloud"."""
    assert gw.call("GET", "/v1/parks")[0] == 200
    assert gw.gate()[0] == 200
    assert gw.journal.records[0].body["client"] == "cloud"


def test_empty_api_token_grants_nothing() -> None:
    """With `cloud.api_token` unset, an empty bearer is not a way in."""
    gw = Api()
    gw.api = CommandApi(
        config=config.parse({}),
        lots=gw.lots,
        journal=gw.journal,
        clock=gw.clock,
        registry=CollectorRegistry(),
        ready=lambda: (True, ""),
    )
    gw.treq = StubTreq(gw.api.resource())
    assert gw.call("GET", "/v1/parks", token="")[0] == 401


# --- command checks ----------------------------------------------------------


def test_unknown_park_is_404(gw: Api) -> None:
    """A command to a park not in the configuration is 404."""
    status, _, body = gw.gate(park="P999")
    assert status == 404
    assert "P999" in body["error"]
    assert gw.lots.asked == []


def test_unknown_code_is_400(gw: Api) -> None:
    """A code the catalog does not know is 400."""
    status, _, body = gw.call("POST", "/v1/parks/P001/commands/openSesame", body={})
    assert status == 400
    assert "openSesame" in body["error"]


def test_uplink_only_code_is_400(gw: Api) -> None:
    """carIn travels up only: it cannot be sent down."""
    status, _, body = gw.call("POST", "/v1/parks/P001/commands/carIn", body={"recordCode": "r1"})
    assert status == 400
    assert "carIn" in body["error"]


@pytest.mark.parametrize("code", ["blacklist", "gateState"])
def test_code_the_lots_dialect_lacks_is_400(gw: Api, code: str) -> None:
    """A command or sync entry the lot's dialect cannot carry is 400, naming the dialect; nothing is sent."""
    data = {"carNum": "京A1", "barCode": "b"}
    status, _, body = gw.call("POST", f"/v1/parks/P003/commands/{code}", body=data)
    assert status == 400
    assert "standard dialect" in body["error"] and code in body["error"]
    assert gw.lots.asked == [] and gw.sync.pending("P003") == 0
    assert gw.journal.records == []


def test_body_not_json_is_400(gw: Api) -> None:
    """A body that is not JSON is 400."""
    status, _, body = gw.call("POST", "/v1/parks/P001/commands/gateOpen", body=b"{barCode")
    assert status == 400
    assert "JSON" in body["error"]


def test_nan_is_not_json(gw: Api) -> None:
    """NaN, which Python's parser would take, is refused as not JSON."""
    status, _, body = gw.call("POST", "/v1/parks/P001/commands/feeQuery", body=b'{"recordCode": NaN}')
    assert status == 400
    assert "NaN" in body["error"]


def test_body_not_object_is_400(gw: Api) -> None:
    """A JSON body that is neither an object nor a list is 400."""
    assert gw.call("POST", "/v1/parks/P001/commands/gateOpen", body=b'"open"')[0] == 400


def test_invalid_field_is_400_naming_it(gw: Api) -> None:
    """Data the catalog refuses is 400 naming the field; nothing is journaled or sent."""
    status, _, body = gw.call("POST", "/v1/parks/P001/commands/gateOpen", body={"isOpen": 1})
    assert status == 400
    assert "data.barCode" in body["error"]
    assert gw.lots.asked == [] and gw.journal.records == []


def test_oversized_body_is_413(gw: Api) -> None:
    """A body larger than the gateway takes is refused 413."""
    big = {"barCode": "B1", "padding": "x" * (17 * 2**20)}
    assert gw.call("POST", "/v1/parks/P001/commands/gateOpen", body=big)[0] == 413


def test_sync_is_202_with_the_seq_once_journaled(gw: Api) -> None:
    """A sync-class code from a `sync` client is journaled, answered 202 {"seq": N}, then delivered."""
    gw.journal.hold = True
    pending = gw.start("POST", "/v1/parks/P001/commands/blacklist", TOKENS["syncer"], {"carNum": "京A1"})
    assert not fired(pending)
    gw.journal.release()
    gw.treq.flush()
    status, headers, body = gw.finish(pending)
    assert status == 202
    assert headers["content-type"] == "application/json; charset=utf-8"
    [record] = [r for r in gw.journal.records if r.kind == SYNC_RECORD]
    assert body == {"seq": record.seq}
    assert record.park == "P001" and record.code == "blacklist"
    assert record.body["client"] == "syncer" and record.body["data"] == {"carNum": "京A1"}
    assert gw.lots.asked == [("P001", "blacklist", {"carNum": "京A1"})]


def test_sync_without_the_sync_role_is_403(gw: Api) -> None:
    """A client with `command` but not `sync` is refused 403 on a sync code; nothing is journaled."""
    status, _, body = gw.call(
        "POST", "/v1/parks/P001/commands/blacklist", TOKENS["commander"], {"carNum": "京A1"}
    )
    assert status == 403
    assert "sync" in body["error"]
    assert gw.journal.records == [] and gw.lots.asked == []


def test_sync_for_an_offline_lot_is_still_202(gw: Api) -> None:
    """A sync entry for a lot without a connection is accepted and waits; nothing is sent yet."""
    status, _, body = gw.call("POST", "/v1/parks/P002/commands/blacklist", body={"carNum": "京A1"})
    assert status == 202 and isinstance(body["seq"], int)
    assert gw.lots.asked == [] and gw.sync.pending("P002") == 1
    assert gw.call("GET", "/v1/parks/P002", TOKENS["reader"])[2]["backlog"] == 1


def test_sync_delivered_outcome_is_journaled(gw: Api) -> None:
    """The lot's 0000 to a sync entry is journaled as its `sync-done` record."""
    _, _, body = gw.call("POST", "/v1/parks/P001/commands/blacklist", body={"carNum": "京A1"})
    [done] = [r for r in gw.journal.records if r.kind == SYNC_DONE_RECORD]
    assert done.body["seq"] == body["seq"] and done.body["outcome"] == "delivered"


def test_sync_not_journaled_is_503(gw: Api) -> None:
    """A sync entry the journal cannot store is refused 503 and not queued."""
    gw.journal.broken = OSError(28, "No space left on device")
    status, _, body = gw.call("POST", "/v1/parks/P002/commands/blacklist", body={"carNum": "京A1"})
    assert status == 503 and "not queued" in body["error"]
    assert gw.sync.pending("P002") == 0


def test_sync_without_a_queue_is_501() -> None:
    """A CommandApi built without a sync queue still answers sync codes 501."""
    gw = Api()
    gw.api._sync = None
    status, _, body = gw.call("POST", "/v1/parks/P001/commands/blacklist", body={"carNum": "京A1"})
    assert status == 501
    assert body == {"error": "sync delivery is not available in this version"}


def test_sync_data_is_checked(gw: Api) -> None:
    """A sync code with invalid data is 400 and not journaled."""
    assert gw.call("POST", "/v1/parks/P001/commands/blacklist", body={})[0] == 400
    assert gw.journal.records == []


def test_wrong_method_is_405(gw: Api) -> None:
    """GET on a command path is 405."""
    assert gw.call("GET", "/v1/parks/P001/commands/gateOpen")[0] == 405


# --- command outcomes --------------------------------------------------------


def test_reply_is_200_and_journaled(gw: Api) -> None:
    """The lot's REPLY is the answer; the command and its reply are journaled under one opr."""
    status, headers, body = gw.gate()
    assert status == 200
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert body == {"resultCode": "0000", "resultMessage": "操作成功", "data": {"barStatus": 1}}
    assert gw.lots.asked == [("P001", "gateOpen", {"barCode": "B1", "isOpen": True})]
    command, reply = gw.journal.records
    assert (command.kind, command.park, command.code) == ("command", "P001", "gateOpen")
    assert command.body == {"client": "cloud", "data": {"barCode": "B1", "isOpen": True}}
    assert len(command.opr) == 32
    assert (reply.kind, reply.opr) == ("command-reply", command.opr)
    assert reply.body == {
        "client": "cloud",
        "resultCode": "0000",
        "resultMessage": "操作成功",
        "data": {"barStatus": 1},
    }


def test_the_lot_is_sent_the_opr_num_the_command_was_journaled_under(gw: Api) -> None:
    """The API hands the downlink the oprNum of its `command` record (CONTRACT §7)."""
    assert gw.gate()[0] == 200
    command, reply = gw.journal.records
    assert gw.lots.oprs == [command.opr] and reply.opr == command.opr


def test_a_real_downlink_sends_the_journaled_opr_num_and_matches_the_reply() -> None:
    """Through the real downlink, the ACK's oprNum is the journal's, and the REPLY to it answers the API."""
    from tests.lots.test_downlink import Gateway

    lots = Gateway(lots=[{"park_code": "P001", "username": "lot001", "password": HASH, "secret": "s3cret"}])
    lot = lots.connect()
    token = lot.login()
    api = CommandApi(
        config=_settings(),
        lots=lots.downlinks,
        journal=lots.journal,
        clock=lots.clock,
        registry=CollectorRegistry(),
        ready=lambda: (True, "journal open"),
    )
    treq = StubTreq(api.resource())
    pending = treq.request(
        "POST",
        "http://gw/v1/parks/P001/commands/gateOpen",
        data=json.dumps({"barCode": "B1"}).encode(),
        headers={"Authorization": [f"Bearer {CLOUD_TOKEN}"]},
    )
    treq.flush()
    [ack] = lot.received()
    [command] = [record for record in lots.journal.records if record.kind == "command"]
    assert ack["oprNum"] == command.opr
    lot.reply(ack["oprNum"], {"barStatus": 1}, token)
    treq.flush()
    assert result_of(pending).code == 200
    [reply] = [record for record in lots.journal.records if record.kind == "command-reply"]
    assert reply.opr == command.opr and reply.body["resultCode"] == "0000"


def test_table_number_is_taken_as_code(gw: Api) -> None:
    """ "21" names gateOpen; the lot and the journal see the mnemonic."""
    assert gw.call("POST", "/v1/parks/P001/commands/21", body={"barCode": "B1"})[0] == 200
    assert gw.lots.asked[0][1] == "gateOpen"
    assert gw.journal.records[0].code == "gateOpen"


def test_command_is_durable_before_the_lot_is_asked(gw: Api) -> None:
    """While the command record is not yet durable the lot is not asked and nothing is answered."""
    gw.journal.hold = True
    pending = gw.start("POST", "/v1/parks/P001/commands/gateOpen", body={"barCode": "B1"})
    assert gw.lots.asked == []
    assert not fired(pending)
    gw.journal.hold = False
    gw.journal.release()
    gw.treq.flush()
    assert gw.lots.asked == [("P001", "gateOpen", {"barCode": "B1"})]
    assert gw.finish(pending)[0] == 200


def test_not_connected_is_409(gw: Api) -> None:
    """A lot without a downlink is refused at once: 409, 9008, journaled."""
    gw.lots.mode = "not-connected"
    status, _, body = gw.gate()
    assert status == 409
    assert body["resultCode"] == "9008"
    assert "P001" in body["resultMessage"]
    reply = gw.journal.records[-1]
    assert reply.kind == "command-reply"
    assert reply.body["resultCode"] == "9008"


def test_deadline_is_504(gw: Api) -> None:
    """No reply before the deadline: 504, 9009, journaled."""
    gw.lots.mode = "deadline"
    status, _, body = gw.gate()
    assert status == 504
    assert body["resultCode"] == "9009"
    assert gw.journal.records[-1].body["resultCode"] == "9009"


def test_downlink_that_never_answers_times_out(gw: Api) -> None:
    """Should the downlink never answer, the API answers 504 itself a little past the deadline."""
    gw.lots.mode = "never"
    pending = gw.start("POST", "/v1/parks/P001/commands/gateOpen", body={"barCode": "B1"})
    gw.clock.advance(2.0)  # gateOpen's deadline: the downlink's to enforce
    gw.treq.flush()
    assert not fired(pending)
    gw.clock.advance(10.0)
    gw.treq.flush()
    status, _, body = gw.finish(pending)
    assert status == 504
    assert body["resultCode"] == "9009"
    assert gw.lots.waiting[0].called  # cancelled


def test_deadline_overrides_move_the_backstop() -> None:
    """With a longer deadline given for a code, the API waits for the downlink that long."""
    gw = Api()
    gw.api = CommandApi(
        config=_settings(),
        lots=gw.lots,
        journal=gw.journal,
        clock=gw.clock,
        registry=CollectorRegistry(),
        ready=lambda: (True, ""),
        deadlines={"gateOpen": 60.0},
    )
    gw.treq = StubTreq(gw.api.resource())
    gw.lots.mode = "never"
    pending = gw.start("POST", "/v1/parks/P001/commands/gateOpen", body={"barCode": "B1"})
    gw.clock.advance(60.0)
    assert not fired(pending)
    gw.clock.advance(6.0)
    gw.treq.flush()
    assert gw.finish(pending)[0] == 504


def test_late_reply_is_answered_when_it_comes(gw: Api) -> None:
    """A reply that takes a while is answered when it arrives, timed on the clock."""
    gw.lots.mode = "never"
    pending = gw.start("POST", "/v1/parks/P001/commands/gateOpen", body={"barCode": "B1"})
    gw.clock.advance(1.5)
    gw.lots.waiting[0].callback(gw.lots.reply)
    gw.treq.flush()
    assert gw.finish(pending)[0] == 200
    assert gw.registry.get_sample_value(
        "cpmi_command_seconds_sum", {"code": "gateOpen", "outcome": "ok"}
    ) == pytest.approx(1.5)


def test_journal_failure_is_503_and_not_sent(gw: Api) -> None:
    """A command that cannot be journaled is not sent: 503."""
    gw.journal.broken = OSError("disk full")
    status, _, body = gw.gate()
    assert status == 503
    assert "error" in body
    assert gw.lots.asked == []


class ReplyFailingJournal(MemoryJournal):
    """A journal that takes commands but fails every command-reply."""

    def append(self, kind: str, park: str, code: str, opr: str, body: object) -> Deferred[Any]:
        """Fail command-reply records; store the rest."""
        if kind == "command-reply":
            return fail(OSError("disk full"))
        return super().append(kind, park, code, opr, body)


def test_reply_journal_failure_still_answers() -> None:
    """A command-reply that cannot be journaled does not hold the answer back."""
    gw = Api(journal=ReplyFailingJournal(Clock()))
    assert gw.gate()[0] == 200
    assert [record.kind for record in gw.journal.records] == ["command"]


# --- reading -----------------------------------------------------------------


def test_parks_listing(gw: Api) -> None:
    """Every configured park is listed with its state, times in RFC 3339 UTC."""
    status, _, body = gw.call("GET", "/v1/parks", TOKENS["reader"])
    assert status == 200
    assert body == {
        "parks": [
            {
                "parkCode": "P001",
                "connected": True,
                "since": "2026-11-18T11:05:40.000Z",
                "lastSeen": "2026-11-18T11:06:40.000Z",
                "peer": "10.0.0.5:4711",
                "backlog": 0,
            },
            {
                "parkCode": "P002",
                "connected": False,
                "since": None,
                "lastSeen": None,
                "peer": "",
                "backlog": 0,
            },
            {
                "parkCode": "P003",
                "connected": False,
                "since": None,
                "lastSeen": None,
                "peer": "",
                "backlog": 0,
            },
        ]
    }


def test_one_park(gw: Api) -> None:
    """One park by code; an unknown one is 404."""
    status, _, body = gw.call("GET", "/v1/parks/P002", TOKENS["reader"])
    assert status == 200
    assert body["parkCode"] == "P002" and body["connected"] is False
    assert gw.call("GET", "/v1/parks/P999", TOKENS["reader"])[0] == 404


def test_schema(gw: Api) -> None:
    """The JSON Schema of an interface's data, by code or number; unknown is 404."""
    status, headers, body = gw.call("GET", "/v1/schemas/gateOpen.json", TOKENS["reader"])
    assert status == 200
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert body["$id"] == "urn:cpmi:t002:gateOpen:request"
    assert gw.call("GET", "/v1/schemas/21.json", TOKENS["reader"])[2] == body
    assert gw.call("GET", "/v1/schemas/nothing.json", TOKENS["reader"])[0] == 404


def test_openapi_served(gw: Api) -> None:
    """/v1/openapi.json serves the OpenAPI 3.1 document."""
    status, headers, body = gw.call("GET", "/v1/openapi.json", TOKENS["reader"])
    assert status == 200
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert body["openapi"] == "3.1.0"
    assert "/v1/parks/{parkCode}/commands/gateOpen" in body["paths"]


# --- operations --------------------------------------------------------------


def test_healthz_needs_no_token(gw: Api) -> None:
    """/healthz answers 200 ok without a token."""
    assert gw.call("GET", "/healthz", token=None)[::2] == (200, {"status": "ok"})


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_need_no_token_but_refuse_a_wrong_one(gw: Api, path: str) -> None:
    """The probes answer 200 without a token and with a valid one (any role); a wrong token, or another
    scheme's credentials, is 401 with the Bearer challenge, as on every other route (CONTRACT §6)."""
    assert gw.call("GET", path, token=None)[0] == 200
    assert gw.call("GET", path)[0] == 200
    status, headers, body = gw.call("GET", path, token="nope")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer") and "error" in body
    deferred = gw.treq.get(f"http://gw{path}", headers={"Authorization": ["Basic Y2xvdWQtdG9rZW4="]})
    gw.treq.flush()
    assert gw.finish(deferred)[0] == 401


def test_readyz_both_states(gw: Api) -> None:
    """/readyz is 200 when ready and 503 with the reason when not, without a token."""
    assert gw.call("GET", "/readyz", token=None)[::2] == (200, {"status": "ready", "reason": "journal open"})
    gw.readiness = (False, "journal recovering")
    status, _, body = gw.call("GET", "/readyz", token=None)
    assert status == 503
    assert body == {"status": "not ready", "reason": "journal recovering"}


def test_metrics_after_a_command(gw: Api) -> None:
    """/metrics is Prometheus text with the command histogram and the request counter."""
    gw.gate()
    status, headers, body = gw.call("GET", "/metrics", token=None)
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    text = body.decode()
    assert 'cpmi_command_seconds_count{code="gateOpen",outcome="ok"} 1.0' in text
    assert 'cpmi_api_requests_total{route="/v1/parks/{parkCode}/commands/{code}",status="200"} 1.0' in text


def test_refusals_are_counted_by_status(gw: Api) -> None:
    """Refused requests are counted under their route and status."""
    gw.gate(token=None)
    gw.lots.mode = "not-connected"
    gw.gate()
    route = "/v1/parks/{parkCode}/commands/{code}"
    sample = gw.registry.get_sample_value
    assert sample("cpmi_api_requests_total", {"route": route, "status": "401"}) == 1.0
    assert sample("cpmi_api_requests_total", {"route": route, "status": "409"}) == 1.0
    assert sample("cpmi_command_seconds_count", {"code": "gateOpen", "outcome": "not_connected"}) == 1.0


# --- reconfiguration ---------------------------------------------------------


def test_reconfigure_takes_the_new_tokens(gw: Api) -> None:
    """After reconfigure, a removed client's token is 401, an added one works, and the new API token rules."""
    document = {
        "cloud": {"api_token": "new-cloud-token"},
        "api_client": [
            {"name": "reader", "token_sha256": hashlib.sha256(b"read-token").hexdigest(), "roles": ["read"]},
            {
                "name": "auditor",
                "token_sha256": hashlib.sha256(b"audit-token").hexdigest(),
                "roles": ["read"],
            },
        ],
        "lot": [{"park_code": "P001", "username": "lot001", "password": HASH}],
    }
    assert gw.call("GET", "/v1/parks", TOKENS["root"])[0] == 200
    assert gw.call("GET", "/v1/parks", "audit-token")[0] == 401
    gw.api.reconfigure(config.parse(document))
    assert gw.call("GET", "/v1/parks", TOKENS["root"])[0] == 401
    assert gw.call("GET", "/v1/parks", "audit-token")[0] == 200
    assert gw.call("GET", "/v1/parks", TOKENS["reader"])[0] == 200
    assert gw.call("GET", "/v1/parks", CLOUD_TOKEN)[0] == 401
    status, _, body = gw.call("GET", "/v1/parks", "new-cloud-token")
    assert status == 200
    assert [park["parkCode"] for park in body["parks"]] == ["P001"]
    assert gw.gate(token="new-cloud-token", park="P002")[0] == 404
