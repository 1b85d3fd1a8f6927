"""``cpmictl config check FILE``: what start-up checks, without starting anything.

The gateway's start-up (``gateway.tap.makeService``) reads the configuration,
loads or creates the signing key and opens the journal. ``config check`` does
the same checks without their side effects: it reads the configuration with the
same loader (so the same one-line errors), loads an existing signing key but
never creates a missing one, and checks that the journal directory exists and
is writable, or could be created, without opening or recovering it.

It then looks for choices the gateway accepts but an operator should make on
purpose: *warnings* (an fsync mode that acknowledges before the disk has the
record, a lot whose signatures are not checked, the command API reachable from
the network in clear text, events sent over plain HTTP, the t002 upstream's
downlink over plain TCP) and milder *notes* (among them, with sink t002, an
upstream password written in the file rather than as ``env:``/``file:``).
``--strict`` turns warnings, not notes, into a failure.

Exit codes: 0 the gateway would start with this file (warnings and notes
printed on standard error), 1 it would not (one line on standard error naming
the file, the key and the problem), or ``--strict`` and a warning.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import tomllib
from collections import Counter
from collections.abc import Collection
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from attrs import frozen
from twisted.internet import endpoints

from gateway.config import (
    CONFIG_SEARCH,
    SECRET_SOURCES,
    Config,
    ConfigError,
    built_client,
    endpoint_fields,
    find_config,
    load,
)
from gateway.keys import KeyFileError, load_signing_key

if TYPE_CHECKING:
    from gateway.cli.command import Subparsers

__all__ = [
    "CheckFailed",
    "Finding",
    "Report",
    "add_parser",
    "check_config",
    "check_journal_directory",
    "check_signing_key",
    "review",
    "run_check",
    "upstream_secrets_in_clear",
]

Severity = Literal["warning", "note"]


@frozen
class Finding:
    """A choice the gateway accepts but an operator should make on purpose.

    A ``warning`` weakens durability or security; a ``note`` is worth knowing.
    """

    severity: Severity
    text: str


@frozen
class Report:
    """The outcome of a configuration that start-up would accept."""

    path: str
    summary: str
    findings: tuple[Finding, ...]

    @property
    def warnings(self) -> tuple[Finding, ...]:
        """The findings that ``--strict`` refuses."""
        return tuple(finding for finding in self.findings if finding.severity == "warning")


class CheckFailed(Exception):
    """Start-up would stop on this configuration; ``str()`` is the one line saying why."""


def add_parser(subparsers: Subparsers) -> None:
    """Add ``cpmictl config check``."""
    config = subparsers.add_parser(
        "config",
        help="check a gateway configuration file",
        description="Tools for the gateway's configuration file (TOML).",
    )
    verbs = config.add_subparsers(title="verbs", metavar="VERB", required=True)
    check = verbs.add_parser(
        "check",
        help="check FILE as start-up would, without starting anything",
        description=(
            "Check the configuration FILE as the gateway's start-up does, without starting "
            "anything: every key is read with the gateway's own loader; an existing signing "
            "key must load (a missing one must be creatable: it is not created); the journal "
            "directory must be writable or creatable (it is neither opened nor recovered). "
            "Listening ports are not bound. Relative paths are taken from the current "
            "directory, as the gateway takes them: run it where the gateway runs. "
            "Exit 0 with a one-line summary on standard output when the gateway would start; "
            "exit 1 with one line 'FILE: key: problem' on standard error when it would not. "
            "Weak choices the gateway accepts are printed on standard error as 'warning: ...' "
            "(journal.fsync not always; a lot with signature off; the api listener on a "
            "non-loopback interface without ssl:; cloud URLs over plain http to another host; "
            "with sink t002, cloud.downlink over plain tcp: to another host) "
            "or, milder, 'note: ...' (signature optional; nobody able to use the command API; "
            "a signing key still to be created; with sink t002, an upstream password or secret "
            "written in the file instead of env:NAME or file:PATH)."
        ),
    )
    check.add_argument(
        "path",
        metavar="FILE",
        nargs="?",
        help=f"the configuration file (default: the gateway's: {CONFIG_SEARCH})",
    )
    check.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when there is any warning (notes do not count)",
    )
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Check the configuration ``args.path``; print the summary, the findings or the problem."""
    try:
        report = check_config(find_config(args.path))
    except CheckFailed as error:
        print(error, file=sys.stderr)
        return 1
    for finding in report.findings:
        print(f"{finding.severity}: {finding.text}", file=sys.stderr)
    if args.strict and report.warnings:
        count = len(report.warnings)
        print(f"{report.path}: {count} warning{'s' if count != 1 else ''} (--strict)", file=sys.stderr)
        return 1
    print(f"{report.path}: ok: {report.summary}")
    return 0


def check_config(path: str) -> Report:
    """Check the configuration at ``path`` as start-up does; raise CheckFailed with its one line."""
    try:
        settings = load(path)
    except ConfigError as error:
        text = str(error)
        # Errors about the file itself (missing, not TOML) already start with its name.
        raise CheckFailed(text if text.startswith(f"{path}: ") else f"{path}: {text}") from None
    key_path = settings.gateway.signing_key
    try:
        key_exists = check_signing_key(key_path)
    except KeyFileError as error:
        raise CheckFailed(f"{path}: gateway.signing_key: {error}") from None
    problem = check_journal_directory(settings.journal.path)
    if problem:
        raise CheckFailed(f"{path}: journal.path: {problem}")
    in_clear = upstream_secrets_in_clear(path) if settings.cloud.sink == "t002" else frozenset()
    findings = list(review(settings, in_clear))
    if not key_exists:
        findings.append(
            Finding(
                "note",
                f"gateway.signing_key: {key_path} does not exist yet; the gateway creates it at "
                f"first start (cpmictl pubkey {key_path} then shows the public key the cloud needs)",
            )
        )
    return Report(path=path, summary=summarize(settings), findings=tuple(findings))


def upstream_secrets_in_clear(path: str) -> frozenset[str]:
    """The upstream secrets written in the file at ``path``, not as ``env:NAME`` or ``file:PATH``.

    Named by key (``lot[0].upstream_password``). The Config holds only the
    values read, not where they came from, so this reads the document again;
    a file that cannot be read again (changed meanwhile) has nothing to report.
    """
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError):
        return frozenset()
    lots = document.get("lot", [])
    found: set[str] = set()
    for index, lot in enumerate(lots if isinstance(lots, list) else []):
        for key in ("upstream_password", "upstream_secret"):
            value = lot.get(key, "") if isinstance(lot, dict) else ""
            if isinstance(value, str) and value and not value.startswith(SECRET_SOURCES):
                found.add(f"lot[{index}].{key}")
    return frozenset(found)


def check_signing_key(path: str) -> bool:
    """Whether the signing key at ``path`` exists; raise KeyFileError unless start-up could use or create it.

    An existing file must load (format and mode as :mod:`gateway.keys` requires);
    a missing one must be creatable where it is, and is not created.
    """
    if os.path.lexists(path):
        load_signing_key(path)
        return True
    problem = _creatable(os.path.dirname(os.path.abspath(path)))
    if problem:
        raise KeyFileError(f"{path}: cannot create key file: {problem}")
    return False


def check_journal_directory(path: str) -> str | None:
    """Why the journal could not be opened at ``path``, as far as the directory goes, or None.

    An existing directory must be readable and writable; a missing one must be
    creatable (its nearest existing parent a writable directory). Nothing is
    created, opened or recovered.
    """
    if os.path.exists(path):
        if not os.path.isdir(path):
            return f"{path}: not a directory"
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            return f"{path}: directory not readable and writable"
        return None
    problem = _creatable(os.path.abspath(path))
    return f"{path}: cannot create directory: {problem}" if problem else None


def _creatable(directory: str) -> str | None:
    """Why ``directory`` (absolute) could not be made or written in, or None.

    The nearest existing one of it and its parents decides, since start-up
    creates the missing ones (``os.makedirs``): it must be a writable directory.
    """
    existing = directory
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def review(settings: Config, in_clear: Collection[str] = frozenset()) -> tuple[Finding, ...]:
    """The weak choices in a configuration start-up accepts, most serious first.

    ``in_clear`` names the secrets written in the file rather than read from
    ``env:``/``file:`` (``lot[0].upstream_password``: upstream_secrets_in_clear).
    """
    findings: list[Finding] = []
    if settings.journal.fsync != "always":
        findings.append(
            Finding(
                "warning",
                f'journal.fsync is "{settings.journal.fsync}": lots, the cloud and API callers may be '
                "answered before their records are on disk; a power cut can lose what they were told "
                'was stored ("always" is the default)',
            )
        )
    for index, lot in enumerate(settings.lots):
        where = f"lot[{index}] ({lot.park_code})"
        if lot.signature == "off":
            findings.append(
                Finding("warning", f"{where}: signature is off: its requests are accepted unchecked")
            )
        elif lot.signature == "optional":
            findings.append(
                Finding(
                    "note",
                    f"{where}: signature is optional: its unsigned requests are accepted "
                    "(signed ones are checked)",
                )
            )
    exposed = _exposed_in_clear(settings.listen.api)
    if exposed:
        findings.append(
            Finding(
                "warning",
                f"listen.api: {settings.listen.api!r} listens on {exposed} without TLS: bearer tokens "
                "and commands (gateOpen) cross the network in clear; bind it to 127.0.0.1 or use ssl:",
            )
        )
    t002 = settings.cloud.sink == "t002"
    for key, url in (("cloud.url", settings.cloud.url), ("cloud.query_url", settings.cloud.query_url)):
        if _plain_http_to_another_host(url):
            crossing = "what lots report crosses"
            if t002 and key == "cloud.url":
                crossing = "what lots report, and their upstream logins with passwords, cross"
            findings.append(
                Finding(
                    "warning",
                    f"{key}: {url!r} is plain http to another host: {crossing} the "
                    "network in clear (the signatures prove who sent it, they do not hide it); use https://",
                )
            )
    if t002 and _plain_tcp_to_another_host(settings.cloud.downlink_endpoint):
        findings.append(
            Finding(
                "warning",
                f"cloud.downlink: {settings.cloud.downlink!r} is plain TCP to another host: the upstream's "
                "downlink carries tokens and commands (gateOpen) in clear; use tls:HOST:PORT",
            )
        )
    for index, lot in enumerate(settings.lots if t002 else ()):
        keys = [key for key in ("upstream_password", "upstream_secret") if f"lot[{index}].{key}" in in_clear]
        if keys:
            findings.append(
                Finding(
                    "note",
                    f"lot[{index}] ({lot.park_code}): {' and '.join(keys)} "
                    f"{'is' if len(keys) == 1 else 'are'} written in clear in the file: whoever reads it "
                    "can act as this lot upstream; write env:NAME or file:PATH instead",
                )
            )
    if not settings.cloud.api_token and not settings.api_clients:
        findings.append(
            Finding(
                "note",
                "cloud.api_token is empty and there is no [[api_client]]: nobody can use the command "
                "API (it answers 401; /healthz, /readyz and /metrics still answer)",
            )
        )
    return tuple(findings)


def summarize(settings: Config) -> str:
    """One line of what the configuration holds: gateway, lots by dialect, API clients, sink."""
    dialects = Counter(lot.dialect for lot in settings.lots)
    lots = _count(len(settings.lots), "lot")
    if dialects:
        by_dialect = sorted(dialects.items(), key=lambda item: (-item[1], item[0]))
        lots += " (" + ", ".join(f"{name} {count}" for name, count in by_dialect) + ")"
    clients = _count(len(settings.api_clients), "api client")
    return f"gateway {settings.gateway.id}, {lots}, {clients}, sink {settings.cloud.sink}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _exposed_in_clear(description: str) -> str | None:
    """Where a plain TCP endpoint listens beyond this host ("all interfaces", ...), or None.

    TLS (``ssl:``), loopback interfaces, UNIX sockets and endpoint types that do
    not say where they listen are not reported. The endpoint is built by
    Twisted's own parser, with no reactor (it would be used only to listen).
    """
    endpoint = endpoints.serverFromString(None, description)
    if isinstance(endpoint, endpoints.SSL4ServerEndpoint):
        return None
    if not isinstance(endpoint, endpoints.TCP4ServerEndpoint | endpoints.TCP6ServerEndpoint):
        return None
    # tcp:PORT[:INTERFACE] or interface=INTERFACE, as Twisted's parser takes them.
    positional, named = endpoint_fields(description)
    interface = named.get("interface", positional[1] if len(positional) > 1 else "")
    if _is_loopback(interface):
        return None
    if interface in ("", "0.0.0.0", "::"):
        return "all interfaces"
    return f"interface {interface}"


def _plain_tcp_to_another_host(description: str) -> bool:
    """Whether the client endpoint ``description`` is plain TCP (``tcp:``) to a host other than loopback."""
    if not description:
        return False
    endpoint = built_client(description)
    if not isinstance(endpoint, endpoints.TCP4ClientEndpoint):
        return False
    # tcp:HOST:PORT or host=HOST, as Twisted's parser takes them.
    positional, named = endpoint_fields(description)
    host = named.get("host", positional[0] if positional else "")
    return not _is_loopback(host)


def _plain_http_to_another_host(url: str) -> bool:
    """Whether ``url`` is http:// to a host other than this one's loopback."""
    if not url:
        return False
    parts = urlsplit(url)
    return parts.scheme == "http" and not _is_loopback(parts.hostname or "")


def _is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
