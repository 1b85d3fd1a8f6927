"""
The gateway's log: operational events, a JSON-lines observer, and the last rejections.

Every operational event is a ``twisted.logger`` event with an ``event`` key
naming it (``lot.online``, ``lot.offline``, ``lot.rejected``, ``cloud.retrying``,
``cloud.recovered``, ``cloud.rejected``, ``config.reloaded``, ``config.refused``,
``connection.refused``)
and its facts as keys; its ``log_format`` reads well in twistd's text log.

``twistd -n cpmi-gateway --log-format json`` writes the log as JSON lines
instead (`json_observer`), where twistd would write its text: standard output
with ``-n``, else ``--logfile`` (``twistd.log`` by default). No secret is
written in clear: a key named like a password or a token is written ``***``,
nested ones too, and the message is formatted from the redacted keys.
"""

from __future__ import annotations

import json
import math
import re
import signal
import sys
from collections import deque
from collections.abc import Callable, Mapping
from itertools import islice
from typing import IO, Any, cast

from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IAddress
from twisted.logger import ILogObserver, LogEvent, Logger, formatEvent
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile
from zope.interface import implementer

from gateway.protocol.redact import REDACTED, SECRET_FIELDS, redact
from gateway.protocol.times import utc_rfc3339

__all__ = [
    "ECHO_CHARS",
    "LOG_FORMATS",
    "REASON_CHARS",
    "RecentRejections",
    "WithLogObserver",
    "as_json",
    "check_log_format",
    "clip",
    "describe",
    "is_secret_name",
    "json_observer",
    "log_stream",
    "lot_rejected",
    "stdout_json_observer",
]

LOG_FORMATS = ("text", "json")
"""The choices of the plugin's ``--log-format``."""

ECHO_CHARS = 36
"""The most of a refused value (code, park, oprNum) a log line or the status page repeats (CONTRACT §4)."""
REASON_CHARS = 240
"""The most of a refusal's reason kept: room to name a field and echo 36 characters of it."""
KEPT_REJECTIONS = 200
"""How many rejections `RecentRejections` keeps by default."""

_SECRET_NAME = re.compile(r"password|passwd|pwd|token|secret|authorization|api[_-]?key", re.IGNORECASE)
# What the JSON line says itself; an event's own key of the same name is written with a "_" after it.
_OWN = frozenset({"time", "level", "namespace", "event", "message", "traceback"})
# Keys twisted.python.log.msg adds to its events (they are marked by "isError").
_LEGACY = frozenset({"message", "isError", "system", "time", "format", "why", "failure", "printed"})
_MAX_DEPTH = 20
_CLIP_MARK = re.compile(r"…\(\+[0-9]+\)")
_KEPT = frozenset({"lot.rejected", "cloud.rejected", "config.refused", "connection.refused"})
# The facts RecentRejections keeps beside time, event, park, code, result and reason, when present.
_KEPT_FACTS = ("peer", "dialect", "via", "status", "count", "first", "last", "source", "file", "listener")


def is_secret_name(name: str) -> bool:
    """Whether a key called `name` holds a secret (the standard's secret fields, and names like one).

    Names ending in ``_sha256`` are digests, not secrets.
    """
    if name in SECRET_FIELDS:
        return True
    return _SECRET_NAME.search(name) is not None and not name.lower().endswith("_sha256")


def _hides(name: object, value: object, top: bool = False) -> bool:
    """Whether `value` under the key `name` is written as ``***``.

    "", None and booleans hide nothing (``apiTokenChanged``); nor do numbers
    among the event's own keys, the gateway's counts (``tokens``). A number in
    a dict may be what a lot sent as its password: it is hidden.
    """
    if value is None or isinstance(value, bool) or (isinstance(value, str) and not value):
        return False
    if top and isinstance(value, int | float):
        return False
    return isinstance(name, str) and is_secret_name(name)


def _redacted(value: object) -> object:
    """`value` with every secret-named member of its dicts replaced; the same object when there is none."""
    return redact(value, _hides, _MAX_DEPTH)


def clip(value: object, limit: int = ECHO_CHARS) -> str:
    """`value` as text of at most `limit` characters, plus a mark saying how many more there were.

    Whatever an unauthenticated peer sends is logged and kept through this:
    a 5 MiB `code` is logged as its first 36 characters and ``…(+5242844)``.
    """
    text = value if isinstance(value, str) else _text(value)
    if len(text) <= limit or _CLIP_MARK.fullmatch(text, limit):
        return text  # short, or clipped at this limit already
    return f"{text[:limit]}…(+{len(text) - limit})"


def _text(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _jsonable(value: object, depth: int = 0) -> object:
    """`value` as JSON can hold it: its strings, numbers, lists and dicts, anything else as str()."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            return {_text(key): _jsonable(item, depth + 1) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [_jsonable(item, depth + 1) for item in value]
    return _text(value)


def _redacted_event(event: LogEvent) -> dict[str, Any]:
    """A copy of `event` whose own keys are redacted (twisted's ``log_*`` keys are left as they are)."""
    copy = dict(event)
    for key, value in event.items():
        if key.startswith("log_"):
            continue
        new = REDACTED if _hides(key, value, top=True) else _redacted(value)
        if new is not value:
            copy[key] = new
    return copy


def _rfc3339(seconds: object) -> str | None:
    if not isinstance(seconds, int | float):
        return None
    return utc_rfc3339(seconds)


def as_json(event: LogEvent) -> dict[str, object]:
    """The JSON object of one event: time, level, namespace, event, message, its own keys, traceback."""
    safe = _redacted_event(event)
    level = event.get("log_level")
    line: dict[str, object] = {
        "time": _rfc3339(event.get("log_time")),
        "level": getattr(level, "name", None),
        "namespace": _text(event.get("log_namespace", "")),
    }
    if "event" in safe:
        line["event"] = _jsonable(safe["event"])
    line["message"] = formatEvent(safe)
    legacy = "isError" in event
    for key, value in safe.items():
        if key.startswith("log_") or key == "event" or (legacy and key in _LEGACY):
            continue
        line[f"{key}_" if key in _OWN else key] = _jsonable(value)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            line["traceback"] = failure.getTraceback()
        except Exception:
            line["traceback"] = _text(failure)
    return line


@implementer(ILogObserver)
class _JsonLines:
    """Writes each event to `stream` as one JSON object a line (see `as_json`)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, event: LogEvent) -> None:
        line = as_json(event)
        try:
            self._stream.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
        except UnicodeEncodeError:
            # A lone surrogate (text decoded with surrogateescape) cannot be UTF-8: escape it.
            self._stream.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._stream.flush()


def json_observer(stream: IO[str]) -> ILogObserver:
    """An observer writing each event to `stream` as one line of UTF-8 JSON, secrets written ``***``.

    The object holds ``time`` (RFC 3339, UTC, milliseconds), ``level``,
    ``namespace``, ``event`` when the event has one, ``message`` (the event
    formatted), the event's own keys (not twisted's ``log_*``; values JSON
    cannot hold as str()) and ``traceback`` for a failure.
    """
    return _JsonLines(stream)


def stdout_json_observer() -> ILogObserver:
    """JSON lines on standard output: for twistd's own ``--logger gateway.logs.stdout_json_observer``."""
    return json_observer(sys.stdout)


def lot_rejected(
    log: Logger,
    *,
    park: str,
    code: str,
    result: str,
    reason: str,
    dialect: str,
    via: str,
    peer: str = "",
) -> None:
    """Log a lot's message answered with anything but 0000: a ``lot.rejected`` event, at warn.

    `park` is "" when unknown, `code` the interface (or the dialect's message),
    `result` the four-digit result code, `reason` the answer's message, `via`
    "http", "tcp" or the dialect's name; `peer` is written when known.

    What the peer sent may be any size: the park, the code and the peer are
    written as their first `ECHO_CHARS` characters (CONTRACT §4), the reason as
    its first `REASON_CHARS`, so one line is a few hundred bytes whatever came.
    """
    park, code, peer = clip(park), clip(code), clip(peer, 2 * ECHO_CHARS)
    reason, dialect, via = clip(reason, REASON_CHARS), clip(dialect), clip(via)
    text = "refused {code}" if code else "refused a message"
    if park:
        text += " of lot {park}"
    if peer:
        text += " from {peer}"
    log.warn(
        text + " over {via}: {result} {reason}",
        event="lot.rejected",
        park=park,
        peer=peer,
        code=code,
        result=result,
        reason=reason,
        dialect=dialect,
        via=via,
    )


@implementer(ILogObserver)
class RecentRejections:
    """The last `maxlen` rejections, for a status page: a small JSON-safe dict of each.

    Add it to the log publisher; it keeps ``lot.rejected``, ``cloud.rejected``,
    ``config.refused`` and ``connection.refused`` events and lets the others pass. Each entry is
    bounded whoever logged the event: its values are text of at most
    `ECHO_CHARS` characters (the reason `REASON_CHARS`), numbers or booleans,
    so the list holds at most about `maxlen` × 1 KiB.
    """

    def __init__(self, maxlen: int = KEPT_REJECTIONS) -> None:
        self._kept: deque[dict[str, object]] = deque(maxlen=maxlen)

    def __call__(self, event: LogEvent) -> None:
        name = event.get("event")
        if name not in _KEPT:
            return
        safe = _redacted_event(event)
        reason = safe.get("reason", safe.get("error"))
        summary: dict[str, object] = {
            "time": event.get("log_time"),
            "event": name,
            "park": _kept_fact(safe.get("park", ""), ECHO_CHARS),
            "code": _kept_fact(safe.get("code", ""), ECHO_CHARS),
            "result": _kept_fact(safe.get("result", ""), ECHO_CHARS),
            "reason": clip(reason if reason is not None else formatEvent(safe), REASON_CHARS),
        }
        for key in _KEPT_FACTS:
            if key in safe:
                summary[key] = _kept_fact(safe[key], 2 * ECHO_CHARS)
        self._kept.append(summary)

    def recent(self, limit: int = 50) -> list[dict[str, object]]:
        """The last `limit` rejections kept, newest first."""
        return [dict(kept) for kept in islice(reversed(self._kept), max(0, limit))]

    def __len__(self) -> int:
        return len(self._kept)


def _kept_fact(value: object, limit: int) -> object:
    """A rejection's fact as kept: a number or boolean as it is, else text of `limit` characters."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else clip(value, limit)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return clip(value, limit)


# twistd


def check_log_format(log_format: str, server_options: Mapping[str, Any] | None) -> None:
    """Raise UsageError for a `--log-format` twistd cannot honour with its own options."""
    if log_format not in LOG_FORMATS:
        raise usage.UsageError(f"--log-format: {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    if log_format == "json" and server_options is not None:
        if server_options.get("syslog"):
            raise usage.UsageError("--log-format json writes to standard output or --logfile, not syslog")
        if server_options.get("logfile") == "-" and not server_options.get("nodaemon"):
            raise usage.UsageError("--log-format json: daemons cannot log to standard output (use -n)")


def log_stream(server_options: Mapping[str, Any] | None, reactor: Any) -> IO[str]:
    """Where twistd would write its text log: standard output with ``-n``, else ``--logfile``.

    As twistd does, the default file is ``twistd.log`` and SIGUSR1 rotates it
    (unless something else handles SIGUSR1). Without twistd's options (the
    plugin's options parsed on their own): standard output.
    """
    options = server_options or {}
    logfile = options.get("logfile") or ""
    if server_options is None or logfile == "-" or (options.get("nodaemon") and not logfile):
        return sys.stdout
    file = LogFile.fromFullPath(logfile or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: object) -> None:
            reactor.callFromThread(file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    # LogFile writes str as UTF-8: text enough for an observer.
    return cast(IO[str], file)


class WithLogObserver(MultiService):
    """The gateway's service for twistd, giving the application it joins an ``ILogObserver``.

    twistd looks for that component on its application just after the plugin's
    `makeService` (``AppLogger.start``) and logs to it instead of its text log.
    `observer` is called then, so nothing is opened before twistd needs it.
    """

    def __init__(self, service: IService, observer: Callable[[], ILogObserver]) -> None:
        super().__init__()
        self._observer = observer
        service.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self._observer())
        super().setServiceParent(parent)


def describe(address: IAddress) -> str:
    """`host:port` of a peer address, or its repr for other kinds of address."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"{host}:{port}"
    return repr(address)
