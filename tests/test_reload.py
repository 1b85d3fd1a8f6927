"""Reloading the configuration: what changes in place, what waits for a restart, what is refused."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.testing import MemoryReactorClock

from gateway.config import Config, ConfigError, LotConfig, load, parse
from gateway.journal.kinds import RELOAD_RECORD, TOKEN_REVOKED_RECORD
from gateway.reload import Changes, Reloader, Sighup, compare
from tests.lots.harness import HASH, result_of

SERVED = frozenset({"standard", "bolink"})
CLIENT_DIGEST = "a" * 64


def lot(park: str, username: str = "", **extra: str) -> dict[str, str]:
    return {"park_code": park, "username": username or park.lower(), "password": HASH, **extra}


def config(*lots: dict[str, str], **sections: Any) -> Config:
    document: dict[str, Any] = {"lot": list(lots), **sections}
    return parse(document)


class Parts:
    """A part of the gateway that takes reloaded configurations."""

    def __init__(self) -> None:
        self.configs: list[Config] = []

    def reconfigure(self, config: Config) -> None:
        self.configs.append(config)


class Lots:
    """The lots' side: which connections a reload closed, and why."""

    def __init__(self) -> None:
        self.closed: list[tuple[str, str]] = []

    def disconnect(self, lot: LotConfig, reason: str) -> bool:
        self.closed.append((lot.park_code, reason))
        return True


class Sessions:
    """Tokens in force, by account."""

    def __init__(self, *users: str) -> None:
        self.users = set(users)

    def revoke(self, username: str) -> bool:
        had = username in self.users
        self.users.discard(username)
        return had


class Journal:
    """Records appended, durable at once unless told to fail."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []
        self.broken = False

    def append(self, kind: str, park: str, code: str, opr: str, body: Any) -> Deferred[Any]:
        if self.broken:
            return fail(OSError(28, "No space left on device"))
        self.records.append((kind, park, body))
        return succeed(None)


class Rig:
    """A Reloader over fakes, reading whatever `next` is set to (a Config or a ConfigError)."""

    def __init__(self, running: Config, *users: str) -> None:
        self.next: Config | Exception = running
        self.parts = Parts()
        self.lots = Lots()
        self.sessions = Sessions(*users)
        self.journal = Journal()
        self.reloader = Reloader(
            path="conf/gateway.toml",
            running=running,
            read=self.read,
            parts=[self.parts],
            lots=self.lots,
            sessions=self.sessions,
            journal=self.journal,
            served=SERVED,
        )

    def read(self, path: str) -> Deferred[Config]:
        loaded = self.next
        if isinstance(loaded, Exception):
            return fail(loaded)
        return succeed(loaded)

    def reload(self, loaded: Config | Exception) -> Any:
        self.next = loaded
        return result_of(self.reloader.reload("test"))


def test_an_added_lot_is_taken_and_no_one_is_cut_off() -> None:
    """A lot added to the file is in the running config after a reload; no connection is closed."""
    rig = Rig(config(lot("P1")), "p1")
    outcome = rig.reload(config(lot("P1"), lot("P2")))
    assert outcome.ok
    assert outcome.changes.lots_added == ("P2",)
    assert rig.reloader.running.lot_by_park("P2") is not None
    assert rig.parts.configs == [rig.reloader.running]
    assert rig.lots.closed == [] and rig.sessions.users == {"p1"}


def test_a_removed_lot_is_cut_off_and_its_token_revoked_durably() -> None:
    """Removing a lot closes its connection, revokes its token and journals the revocation."""
    rig = Rig(config(lot("P1"), lot("P2")), "p1", "p2")
    outcome = rig.reload(config(lot("P1")))
    assert outcome.changes.lots_removed == ("P2",)
    assert rig.lots.closed == [("P2", "removed from the configuration")]
    assert rig.sessions.users == {"p1"}
    assert rig.journal.records[0] == (
        TOKEN_REVOKED_RECORD,
        "P2",
        {"user": "p2", "reason": "removed from the configuration"},
    )
    assert rig.reloader.running.lot_by_park("P2") is None


@pytest.mark.parametrize(
    "change",
    [{"password": HASH.replace("$argon2id$", "$argon2id$x")}, {"username": "renamed"}, {"secret": "new"}],
)
def test_changed_credentials_cut_the_lot_off(change: dict[str, str]) -> None:
    """A new password, username or secret revokes the lot's token and closes its connection."""
    rig = Rig(config(lot("P1"), lot("P2")), "p1", "p2")
    outcome = rig.reload(config(lot("P1"), {**lot("P2"), **change}))
    assert outcome.changes.lots_cut == ("P2",) and outcome.changes.lots_updated == ()
    assert rig.lots.closed == [("P2", "its credentials changed in the configuration")]
    assert rig.sessions.users == {"p1"}


def test_a_changed_signature_mode_holds_from_the_next_request() -> None:
    """A lot whose signature mode changes keeps its connection and token."""
    rig = Rig(config(lot("P1")), "p1")
    outcome = rig.reload(config({**lot("P1"), "signature": "optional"}))
    assert outcome.changes.lots_updated == ("P1",) and outcome.changes.lots_cut == ()
    assert rig.lots.closed == [] and rig.sessions.users == {"p1"}
    assert rig.reloader.running.lots[0].signature == "optional"


def test_a_removed_lot_without_a_token_in_force_is_revoked_in_the_journal_too() -> None:
    """The revocation is journaled even when no token is in force: a login under way may be storing one."""
    rig = Rig(config(lot("P1"), lot("P2")), "p1")
    rig.reload(config(lot("P1")))
    assert [(kind, park) for kind, park, _ in rig.journal.records] == [
        (TOKEN_REVOKED_RECORD, "P2"),
        (RELOAD_RECORD, ""),
    ]
    assert rig.lots.closed == [("P2", "removed from the configuration")]


def test_a_removed_lot_without_an_account_has_nothing_to_revoke() -> None:
    """A lot of a dialect that logs in without an account is disconnected; no token record is made."""
    bolink = {"park_code": "B1", "dialect": "bolink", "secret": "s"}
    rig = Rig(config(lot("P1"), bolink, listen={"bolink": "tcp:6789"}))
    outcome = rig.reload(config(lot("P1"), listen={"bolink": "tcp:6789"}))
    assert outcome.changes.lots_removed == ("B1",)
    assert [kind for kind, _, _ in rig.journal.records] == [RELOAD_RECORD]
    assert rig.lots.closed == [("B1", "removed from the configuration")]


def test_an_invalid_file_is_refused_and_the_running_config_kept() -> None:
    """A file that does not load is refused with its one line (naming the file); nothing changes."""
    running = config(lot("P1"))
    rig = Rig(running, "p1")
    outcome = rig.reload(ConfigError("lot[1].password: not an argon2id hash (cpmictl passwd)"))
    assert not outcome.ok
    assert outcome.error == "conf/gateway.toml: lot[1].password: not an argon2id hash (cpmictl passwd)"
    assert rig.reloader.running is running
    assert rig.parts.configs == [] and rig.lots.closed == [] and rig.sessions.users == {"p1"}
    assert rig.journal.records == [
        (
            RELOAD_RECORD,
            "",
            {"source": "test", "file": "conf/gateway.toml", "ok": False, "error": outcome.error},
        )
    ]
    assert outcome.as_json() == {"reloaded": False, "source": "test", "error": outcome.error}


def test_an_error_that_names_the_file_is_not_prefixed_twice() -> None:
    """A ConfigError that already starts with the file's path is shown as it is."""
    rig = Rig(config(lot("P1")))
    outcome = rig.reload(ConfigError("conf/gateway.toml: not valid TOML: Expected '=' (at line 3)"))
    assert outcome.error == "conf/gateway.toml: not valid TOML: Expected '=' (at line 3)"


def test_an_unexpected_failure_is_refused_not_raised() -> None:
    """A reload that fails for another reason answers refused with the reason, keeping the config."""
    running = config(lot("P1"))
    rig = Rig(running)
    outcome = rig.reload(RuntimeError("thread pool gone"))
    assert not outcome.ok and "thread pool gone" in outcome.error
    assert rig.reloader.running is running


def test_listener_journal_and_cloud_changes_wait_for_a_restart() -> None:
    """Changes outside the lots and API clients are reported and the running values kept."""
    running = config(lot("P1"))
    loaded = config(
        lot("P1"),
        listen={"api": "tcp:9091", "uplink": "tcp:8080"},
        journal={"fsync": "interval"},
        cloud={"url": "http://cloud.example/events"},
        tcp={"read_idle": 60},
        deadlines={"gateOpen": 5},
        gateway={"id": "gw-02"},
    )
    outcome = Rig(running).reload(loaded)
    assert outcome.ok
    assert set(outcome.changes.restart_needed) == {
        "listen.api",
        "journal.fsync",
        "cloud.sink",
        "cloud.url",
        "tcp.read_idle",
        "deadlines",
        "gateway.id",
    }


def test_running_values_are_kept_until_the_restart() -> None:
    """After a reload the running listeners, journal and cloud are still the old ones."""
    running = config(lot("P1"))
    new, _ = compare(
        running, config(lot("P1"), listen={"api": "tcp:9091"}, journal={"fsync": "never"}), SERVED
    )
    assert new.listen == running.listen and new.journal == running.journal and new.cloud == running.cloud


def test_a_new_dialect_listener_needs_a_restart() -> None:
    """Adding [listen] bolink is a listener change: it waits for a restart."""
    _, changes = compare(config(lot("P1")), config(lot("P1"), listen={"bolink": "tcp:6789"}), SERVED)
    assert changes.restart_needed == ("listen.bolink",)


def test_a_lot_of_a_dialect_not_running_is_taken_but_named() -> None:
    """A lot whose dialect is not served until a restart is configured, and the reload says so."""
    bolink = {"park_code": "B1", "dialect": "bolink", "secret": "s"}
    loaded = config(lot("P1"), bolink, listen={"bolink": "tcp:6789"})
    new, changes = compare(config(lot("P1")), loaded, frozenset({"standard"}))
    assert new.lot_by_park("B1") is not None
    assert "lot[1].dialect: bolink is not running" in changes.restart_needed


def test_api_clients_and_the_api_token_change_in_place() -> None:
    """API clients added, removed or changed, and a new cloud.api_token, take effect at once."""
    running = config(
        api_client=[
            {"name": "ops", "token_sha256": CLIENT_DIGEST, "roles": ["read"]},
            {"name": "old", "token_sha256": "b" * 64, "roles": ["read"]},
        ],
        cloud={"api_token": "one"},
    )
    loaded = config(
        api_client=[
            {"name": "ops", "token_sha256": CLIENT_DIGEST, "roles": ["read", "admin"]},
            {"name": "new", "token_sha256": "c" * 64, "roles": ["command"]},
        ],
        cloud={"api_token": "two"},
    )
    new, changes = compare(running, loaded, SERVED)
    assert (changes.clients_added, changes.clients_removed, changes.clients_changed) == (
        ("new",),
        ("old",),
        ("ops",),
    )
    assert changes.api_token_changed and changes.restart_needed == ()
    assert new.cloud.api_token == "two" and new.api_clients == loaded.api_clients


def test_nothing_changed_is_said_so() -> None:
    """Reloading the same file applies nothing and says "nothing changed"."""
    outcome = Rig(config(lot("P1"))).reload(config(lot("P1")))
    assert outcome.ok and outcome.changes == Changes()
    assert outcome.as_json()["summary"] == "nothing changed"


def test_the_reload_is_journaled_with_its_changes() -> None:
    """An applied reload is a `reload` record naming who asked and what changed."""
    rig = Rig(config(lot("P1")))
    rig.reload(config(lot("P1"), lot("P2"), journal={"fsync": "never"}))
    [(kind, park, body)] = rig.journal.records
    assert kind == RELOAD_RECORD and park == ""
    assert body["source"] == "test" and body["ok"] is True
    assert body["lots"]["added"] == ["P2"] and body["restartNeeded"] == ["journal.fsync"]


def test_a_journal_that_refuses_is_reported_not_undone() -> None:
    """When the records cannot be stored the reload still holds, and its outcome says so."""
    rig = Rig(config(lot("P1"), lot("P2")), "p2")
    rig.journal.broken = True
    outcome = rig.reload(config(lot("P1")))
    assert outcome.ok and "No space left" in outcome.journal_error
    assert rig.sessions.users == set()
    assert outcome.as_json()["journalError"] == outcome.journal_error


def test_reloads_run_one_after_the_other() -> None:
    """A reload asked for while one is reading waits for it, then reads the file itself."""
    reads: list[Deferred[Config]] = []
    rig = Rig(config(lot("P1")))

    def slow_read(path: str) -> Deferred[Config]:
        reads.append(Deferred())
        return reads[-1]

    rig.reloader._read = slow_read
    first = rig.reloader.reload("first")
    second = rig.reloader.reload("second")
    assert len(reads) == 1
    reads[0].callback(config(lot("P1"), lot("P2")))
    assert result_of(first).changes.lots_added == ("P2",)
    assert len(reads) == 2
    reads[1].callback(config(lot("P1"), lot("P2"), lot("P3")))
    assert result_of(second).changes.lots_added == ("P3",)


def test_sighup_asks_for_a_reload_through_the_reactor(tmp_path: Path) -> None:
    """SIGHUP hands a reload to the reactor (not run inside the handler), and stop gives the signal back."""
    reactor = MemoryReactorClock()
    calls: list[tuple[Any, tuple[Any, ...]]] = []
    reactor.callFromThread = lambda f, *args: calls.append((f, args))  # type: ignore[method-assign]
    asked: list[str] = []
    before = signal.getsignal(signal.SIGHUP)
    sighup = Sighup(reactor, asked.append)
    sighup.start()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        assert asked == []
        [(f, args)] = calls
        f(*args)
        assert asked == ["SIGHUP"]
    finally:
        sighup.stop()
    assert signal.getsignal(signal.SIGHUP) == before


def test_the_real_loader_refuses_a_broken_file(tmp_path: Path) -> None:
    """With the real loader, a syntax error in the file is refused with the TOML error."""
    path = tmp_path / "gateway.toml"
    path.write_text("[[lot]]\npark_code = 'P1'\nusername = 'p1'\npassword = '" + HASH + "'\n")
    running = load(str(path))
    rig = Rig(running)
    rig.reloader.path = str(path)
    rig.reloader._read = lambda p: maybeDeferred(load, p)
    path.write_text("[[lot]\n")
    outcome = result_of(rig.reloader.reload("test"))
    assert not outcome.ok and outcome.error.startswith(f"{path}: not valid TOML")
    assert rig.reloader.running is running
