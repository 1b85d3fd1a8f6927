"""
Reloading the configuration while the gateway runs: SIGHUP and ``POST /v1/admin/reload``.

A reload re-reads the configuration file and applies, in place, what can change
without touching anyone else's connection: the lots (`[[lot]]`) and who may use
the command API (`[[api_client]]`, `cloud.api_token`). A lot that is added can
log in at once. A lot that is removed, or whose credentials change (username,
password, secret or dialect), has its token revoked (journaled as a
`token-revoked` record, so it stays revoked after a restart) and its connection
closed; it logs in again with what it has now. Other changes to a lot (its
signature mode) hold from its next request. Every other section (listeners,
journal, cloud, timers, deadlines) is read at start only: a change there is
reported as needing a restart, and the running value is kept until then.

A file that does not load is refused with its one-line error, and the running
configuration is kept whole. Each reload, applied or refused, is journaled as a
`reload` record and logged as a `config.reloaded` or `config.refused` event.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
from attrs import frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, gatherResults, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.interfaces import JournalAppend
from gateway.journal.kinds import RELOAD_RECORD, TOKEN_REVOKED_RECORD
from gateway.settings import Config, ConfigError, LotConfig

__all__ = ["Changes", "ReloadOutcome", "Reloader", "Sighup", "StopSignals", "compare"]

log = Logger()


# The sections read only at start, compared field by field to name what needs a restart.
_AT_START = ("gateway", "listen", "journal", "uplink", "tcp", "cloud")
# A change of these cuts the lot off: what it logged in with no longer holds.
_CREDENTIALS = ("username", "password", "secret", "dialect")


class Reconfigurable(Protocol):
    """A part of the gateway that reads the lots or the API clients from its configuration."""

    def reconfigure(self, config: Config) -> None:
        """Read the configuration `config` from now on."""


class LotConnections(Protocol):
    """The lots' side as a reload needs it (`gateway.dialects.host.LotRouter`)."""

    def disconnect(self, lot: LotConfig, reason: str) -> bool:
        """Close the connection of `lot` (as configured until now) through its dialect."""


class TokenSessions(Protocol):
    """The lots' tokens (`gateway.lots.sessions.Sessions`)."""

    def revoke(self, username: str) -> bool:
        """Take the account's token out of force; whether it had one."""


@frozen
class Changes:
    """What a reload changes: lots by park code, API clients by name, and what waits for a restart."""

    lots_added: tuple[str, ...] = ()
    lots_removed: tuple[str, ...] = ()
    # Credentials changed: token revoked, connection closed.
    lots_cut: tuple[str, ...] = ()
    # Other settings changed: they hold from the lot's next request.
    lots_updated: tuple[str, ...] = ()
    clients_added: tuple[str, ...] = ()
    clients_removed: tuple[str, ...] = ()
    clients_changed: tuple[str, ...] = ()
    api_token_changed: bool = False
    # "listen.api", "journal.fsync", ...: changed in the file, kept as running until a restart.
    restart_needed: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line for the log: what changed, or "nothing changed"."""
        parts = []
        for label, items in (
            ("lots added", self.lots_added),
            ("lots removed", self.lots_removed),
            ("lots cut off (credentials changed)", self.lots_cut),
            ("lots updated", self.lots_updated),
            ("api clients added", self.clients_added),
            ("api clients removed", self.clients_removed),
            ("api clients changed", self.clients_changed),
        ):
            if items:
                parts.append(f"{label}: {', '.join(items)}")
        if self.api_token_changed:
            parts.append("cloud.api_token changed")
        if self.restart_needed:
            parts.append(f"needs a restart: {', '.join(self.restart_needed)}")
        return "; ".join(parts) or "nothing changed"

    def as_json(self) -> dict[str, object]:
        return {
            "lots": {
                "added": list(self.lots_added),
                "removed": list(self.lots_removed),
                "cut": list(self.lots_cut),
                "updated": list(self.lots_updated),
            },
            "apiClients": {
                "added": list(self.clients_added),
                "removed": list(self.clients_removed),
                "changed": list(self.clients_changed),
            },
            "apiTokenChanged": self.api_token_changed,
            "restartNeeded": list(self.restart_needed),
        }


@frozen
class ReloadOutcome:
    """How a reload went: applied with its changes, or refused with the one-line error."""

    ok: bool
    source: str
    error: str = ""
    changes: Changes = Changes()
    # Tokens and connections are changed in memory at once; a journal that then refuses
    # the records is reported here (and logged), not undone.
    journal_error: str = ""

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] = {"reloaded": self.ok, "source": self.source}
        if self.ok:
            body.update(self.changes.as_json())
            body["summary"] = self.changes.summary()
        else:
            body["error"] = self.error
        if self.journal_error:
            body["journalError"] = self.journal_error
        return body


def _field_changes(section: str, running: Any, loaded: Any, skip: tuple[str, ...] = ()) -> list[str]:
    changed = []
    for field in attrs.fields(type(running)):
        if field.name in skip:
            continue
        if getattr(running, field.name) != getattr(loaded, field.name):
            changed.append(f"{section}.{field.name}")
    return changed


def _listen_changes(running: Config, loaded: Config) -> list[str]:
    names = (
        {"uplink", "downlink", "api"}
        | dict(running.listen.dialects).keys()
        | dict(loaded.listen.dialects).keys()
    )
    return [
        f"listen.{name}"
        for name in sorted(names)
        if running.listen.endpoint(name) != loaded.listen.endpoint(name)
    ]


def compare(running: Config, loaded: Config, served: frozenset[str]) -> tuple[Config, Changes]:
    """The configuration to run after reading `loaded`, and what changes from `running`.

    `served` are the dialects running now: a lot of another dialect is taken
    (it is configured) but can connect only once a restart serves its dialect.
    """
    restart: list[str] = []
    for section in _AT_START:
        if section == "listen":
            restart += _listen_changes(running, loaded)
        else:
            skip = ("api_token",) if section == "cloud" else ()
            restart += _field_changes(section, getattr(running, section), getattr(loaded, section), skip)
    if running.deadline_overrides != loaded.deadline_overrides:
        restart.append("deadlines")
    # [cluster] and [[forward]] (CONTRACT §9) are read at start, like [cloud].
    if running.cluster != loaded.cluster:
        restart.append("cluster")
    if running.forwards != loaded.forwards:
        restart.append("forward")

    before = {lot.park_code: lot for lot in running.lots}
    after = {lot.park_code: lot for lot in loaded.lots}
    cut, updated = [], []
    for park, lot in after.items():
        old = before.get(park)
        if old is None or old == lot:
            continue
        if any(getattr(old, name) != getattr(lot, name) for name in _CREDENTIALS):
            cut.append(park)
        else:
            updated.append(park)
    for index, lot in enumerate(loaded.lots):
        if lot.dialect not in served:
            restart.append(f"lot[{index}].dialect: {lot.dialect} is not running")

    clients_before = {client.name: client for client in running.api_clients}
    clients_after = {client.name: client for client in loaded.api_clients}
    changes = Changes(
        lots_added=tuple(park for park in after if park not in before),
        lots_removed=tuple(park for park in before if park not in after),
        lots_cut=tuple(cut),
        lots_updated=tuple(updated),
        clients_added=tuple(name for name in clients_after if name not in clients_before),
        clients_removed=tuple(name for name in clients_before if name not in clients_after),
        clients_changed=tuple(
            name
            for name, client in clients_after.items()
            if name in clients_before and clients_before[name] != client
        ),
        api_token_changed=running.cloud.api_token != loaded.cloud.api_token,
        restart_needed=tuple(restart),
    )
    new = attrs.evolve(
        running,
        lots=loaded.lots,
        api_clients=loaded.api_clients,
        cloud=attrs.evolve(running.cloud, api_token=loaded.cloud.api_token),
    )
    return new, changes


class Reloader:
    """Re-reads the configuration file and applies it to the running gateway (see the module)."""

    def __init__(
        self,
        *,
        path: str,
        running: Config,
        read: Callable[[str], Deferred[Config]],
        parts: Sequence[Reconfigurable],
        lots: LotConnections,
        sessions: TokenSessions,
        journal: JournalAppend,
        served: frozenset[str],
    ) -> None:
        """`read` loads and checks the file (in a thread: it reads a file and parses it)."""
        self.path = path
        self.running = running
        self._read = read
        # What reads the lots or API clients; the API, built after this, is appended to it.
        self.parts: list[Reconfigurable] = list(parts)
        self._lots = lots
        self._sessions = sessions
        self._journal = journal
        self._served = served
        self._lock = DeferredLock()

    def reload(self, source: str) -> Deferred[ReloadOutcome]:
        """Re-read the file and apply it; fires with the outcome and never fails.

        `source` says who asked ("SIGHUP", "api client ops"). Reloads run one
        after the other: one asked for while another runs reads the file after it.
        """
        return self._lock.run(self._reload, source)

    def _reload(self, source: str) -> Deferred[ReloadOutcome]:
        read: Deferred[Config] = maybeDeferred(self._read, self.path)
        applied = read.addCallback(self._apply, source).addErrback(self._refused, source)
        return applied.addErrback(self._failed, source)

    def _refused(self, failure: Failure, source: str) -> Deferred[ReloadOutcome]:
        failure.trap(ConfigError)
        error = str(failure.value)
        if not error.startswith(self.path):
            error = f"{self.path}: {error}"
        log.warn(
            "configuration not reloaded ({source}): {error}; the running configuration is kept",
            event="config.refused",
            source=source,
            error=error,
            file=self.path,
        )
        refused = ReloadOutcome(ok=False, source=source, error=error)
        body = {"source": source, "file": self.path, "ok": False, "error": error}
        return self._journaled(refused, [(RELOAD_RECORD, "", body)])

    def _failed(self, failure: Failure, source: str) -> ReloadOutcome:
        log.failure("configuration reload ({source}) failed", failure, source=source)
        return ReloadOutcome(ok=False, source=source, error=f"the reload failed: {failure.getErrorMessage()}")

    def _apply(self, loaded: Config, source: str) -> Deferred[ReloadOutcome]:
        running = self.running
        new, changes = compare(running, loaded, self._served)
        before = {lot.park_code: lot for lot in running.lots}
        self.running = new
        for part in self.parts:
            part.reconfigure(new)
        records: list[tuple[str, str, dict[str, object]]] = []
        for parks, reason in (
            (changes.lots_removed, "removed from the configuration"),
            (changes.lots_cut, "its credentials changed in the configuration"),
        ):
            for park in parks:
                old = before[park]
                if old.username:
                    # Journaled whether a token is in force or not: one being stored by a
                    # login under way comes before this record, so a restart drops it too.
                    self._sessions.revoke(old.username)
                    records.append((TOKEN_REVOKED_RECORD, park, {"user": old.username, "reason": reason}))
                self._lots.disconnect(old, reason)
        summary = changes.summary()
        log.info(
            "configuration reloaded ({source}): {summary}",
            event="config.reloaded",
            source=source,
            summary=summary,
            file=self.path,
            **changes.as_json(),
        )
        if changes.restart_needed:
            log.warn(
                "configuration changes wait for a restart: {keys}",
                event="config.restart_needed",
                keys=", ".join(changes.restart_needed),
            )
        body = {"source": source, "file": self.path, "ok": True, **changes.as_json()}
        records.append((RELOAD_RECORD, "", body))
        return self._journaled(ReloadOutcome(ok=True, source=source, changes=changes), records)

    def _journaled(
        self, outcome: ReloadOutcome, records: list[tuple[str, str, dict[str, object]]]
    ) -> Deferred[ReloadOutcome]:
        try:
            appends = [self._journal.append(kind, park, "", "", body) for kind, park, body in records]
        except Exception:  # a journal that refuses at once (closed, no space) is reported the same way
            return succeed(self._not_journaled(Failure(), outcome))
        stored = gatherResults(appends, consumeErrors=True)
        return stored.addCallbacks(lambda _: outcome, self._not_journaled, errbackArgs=(outcome,))

    def _not_journaled(self, failure: Failure, outcome: ReloadOutcome) -> ReloadOutcome:
        log.failure("the journal could not store the reload's records", failure)
        return attrs.evolve(outcome, journal_error=failure.getErrorMessage())


class Sighup(Service):
    """Reload on SIGHUP while the gateway runs, as daemons do (`systemctl reload`, `kill -HUP`)."""

    def __init__(self, reactor: Any, reload: Callable[[str], object]) -> None:
        self._reactor = reactor
        self._reload = reload
        self._previous: Any = None
        self._installed = False

    def start(self) -> None:
        """Take SIGHUP over; the reactor is running, in the main thread."""
        self._previous = signal.signal(signal.SIGHUP, self._received)
        self._installed = True

    def stop(self) -> None:
        """Give SIGHUP back to whoever had it."""
        if self._installed:
            signal.signal(signal.SIGHUP, self._previous)
            self._installed = False

    def startService(self) -> None:
        super().startService()
        self.start()

    def stopService(self) -> None:
        super().stopService()
        self.stop()

    def _received(self, signum: int, frame: object) -> None:
        # A signal handler may run between any two bytecodes: hand the work to the reactor.
        self._reactor.callFromThread(self._reload, "SIGHUP")


class StopSignals(Service):
    """
    Twisted's own SIGTERM and SIGINT handlers, run by the reactor instead of inside the signal handler.

    The reactor's handlers (``sigTerm``, ``sigInt``) log "Received SIGTERM"
    before asking the reactor to stop. A signal handler runs on the main
    thread between any two bytecodes, so it can interrupt the reactor thread
    inside the log file's write: ``LogFile.write`` holds a
    ``threading._RLock`` (twisted.python.threadable), whose inner lock is
    taken a few bytecodes before the owner is recorded and released a few
    after it is cleared. A handler logging in that window waits on that inner
    lock for ever, and the gateway never stops (seen with 10,000 lots going
    offline: 10,000 log lines). So, once the reactor runs and has installed
    its handlers, each is replaced by one that only queues it with
    ``callFromThread`` (a list append and a byte to the waker), and the
    reactor runs it as ever, logging and stopping from its loop. The
    replacements stay until the reactor has shut down (a second SIGTERM
    while 10,000 connections close is as dangerous as the first).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._previous: dict[int, Any] = {}

    def startService(self) -> None:
        super().startService()
        # The reactor installs its handlers as it starts running: after that.
        self._reactor.callWhenRunning(self.take)

    def take(self) -> None:
        """Have SIGTERM and SIGINT queue the reactor's own handlers instead of running them."""
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; a reactor in a thread has none of its own
        for signum in self.SIGNALS:
            handler = signal.getsignal(signum)
            if signum in self._previous or getattr(handler, "__self__", None) is not self._reactor:
                continue  # not the reactor's (SIG_DFL, another program's), or already taken
            self._previous[signum] = handler
            signal.signal(signum, self._received)
        if self._previous:
            self._reactor.addSystemEventTrigger("after", "shutdown", self.give_back)

    def give_back(self) -> None:
        """Put the reactor's handlers back (it uninstalls them itself when it has stopped)."""
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._received:
                signal.signal(signum, handler)
        self._previous.clear()

    def _received(self, signum: int, frame: object) -> None:
        # No logging, no I/O here: the reactor's handler runs from its loop.
        handler = self._previous.get(signum)
        if handler is not None:
            self._reactor.callFromThread(handler, signum)
