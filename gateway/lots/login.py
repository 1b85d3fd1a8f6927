"""Logging a lot in (B.4.1), and checking a lot's signatures (B.3.7), for HTTP and TCP alike.

Both the HTTP uplink and the TCP downlink bind a lot by the same steps:
validate the fields, check the signature (over token "", per the contract),
check the password in the password worker, mint a token, journal its `token`
record and put it in force once that record is durable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.interfaces import JournalAppend
from gateway.journal.kinds import TOKEN_RECORD
from gateway.lots.answers import Answer
from gateway.lots.passwords import ClientGone, LoginsBusy
from gateway.lots.sessions import Sessions
from gateway.protocol.catalog import lookup
from gateway.protocol.envelope import Request
from gateway.protocol.results import Result
from gateway.protocol.signing import signature_ok
from gateway.protocol.validation import FieldError, validate
from gateway.settings import Config, LotConfig

log = Logger()

# The dialect whose lots log in here (gateway.dialects.standard).
STANDARD = "standard"


class Checker(Protocol):
    """The password checker as the lot side sees it (`gateway.lots.passwords.PasswordChecker`)."""

    def check(
        self, password_hash: str | None, password: str, gone: Callable[[], bool] | None = None
    ) -> Deferred[bool]:
        """Whether `password` matches `password_hash`; None means an unknown account.

        May fail with `LoginsBusy` (too many waiting) or `ClientGone` (`gone()`
        was true before the check ran).
        """


@frozen
class LoginOutcome:
    """What a login request comes to: the answer, the lot (when known) and the new token."""

    answer: Answer
    lot: LotConfig | None
    token: str = ""
    # The client went away before its password was checked: there is no one to answer.
    gone: bool = False


def login(
    request: Request,
    *,
    config: Config,
    sessions: Sessions,
    passwords: Checker,
    journal: JournalAppend,
    via: str,
    configured: Callable[[str], LotConfig | None] | None = None,
    gone: Callable[[], bool] | None = None,
    logged: bool = True,
) -> Deferred[LoginOutcome]:
    """Check a `login` request and issue a token; `via` names the transport in the log.

    Validate the fields, check the signature (token "") and the password, mint a
    token, journal its `token` record and put it in force once that is durable.
    `configured` looks the account up in the running configuration: a reload
    that removes the lot or changes it while its password is being checked, or
    its token stored, refuses the login instead of issuing a token it revoked.
    `gone` tells whether the client has left: its check is then dropped, and
    when too many checks wait the login is answered 9999 "busy, retry" at once.
    A login that succeeds is logged unless `logged` is false: the TCP downlink's
    lot.online line ("bound ... by login") already says it, one line a login.
    """
    data = request.data
    lot: LotConfig | None = None
    if data is None or data == {} or data == []:
        answer = Answer.of(Result.EMPTY_BODY, "data: parkUserName and parkUserPwd required")
        return succeed(LoginOutcome(answer, None))
    interface = lookup("login")
    assert interface is not None
    try:
        fields = validate(interface.request, data)
    except FieldError as error:
        return succeed(LoginOutcome(Answer.of(Result.FIELD_INVALID, error.message()), None))
    if not isinstance(fields, Mapping):
        return succeed(
            LoginOutcome(Answer.of(Result.FIELD_INVALID, "data: must be one object for login"), None)
        )
    username, password = str(fields["parkUserName"]), str(fields["parkUserPwd"])
    lot = config.lot_by_username(username)
    if lot is not None and lot.dialect != STANDARD:
        # Its dialect logs it in on its own port: the account does not open the standard's.
        lot = None
    if lot is not None and not signature_ok(
        lot.signature, request.signature, request.data_text, request.data, "", lot.secret
    ):
        return succeed(LoginOutcome(Answer.of(Result.BAD_SIGNATURE, "signature: does not match data"), lot))

    def changed() -> bool:
        return configured is not None and configured(username) != lot

    def reloaded() -> LoginOutcome:
        detail = "parkUserName: the lot's configuration changed during the login; log in again"
        return LoginOutcome(Answer.of(Result.BAD_CREDENTIALS, detail), None)

    def checked(matches: bool) -> Deferred[LoginOutcome] | LoginOutcome:
        if not matches or lot is None:
            answer = Answer.of(Result.BAD_CREDENTIALS, "parkUserName or parkUserPwd is wrong")
            return LoginOutcome(answer, lot)
        if changed():
            return reloaded()
        token, body = sessions.mint(lot.username, lot.park_code)

        def issued(_: object) -> LoginOutcome:
            if changed():
                return reloaded()
            sessions.install(body)
            if logged:
                log.info(
                    "lot {park} logged in over {via} as {user}",
                    park=lot.park_code,
                    user=lot.username,
                    via=via,
                )
            return LoginOutcome(
                Answer.of(Result.OK, data={"token": token, "parkCode": lot.park_code}), lot, token
            )

        stored = journal.append(TOKEN_RECORD, lot.park_code, "login", request.opr, body)
        return stored.addCallbacks(issued, not_stored)

    def not_stored(failure: Failure) -> LoginOutcome:
        return LoginOutcome(not_stored_answer(failure), lot)

    def unchecked(failure: Failure) -> LoginOutcome:
        if failure.check(LoginsBusy):
            # The queue is full, or no password worker runs now (its message says which).
            detail = f"busy, retry: {failure.getErrorMessage()}"
            return LoginOutcome(Answer.of(Result.FAILED, detail), lot)
        failure.trap(ClientGone)
        return LoginOutcome(Answer.of(Result.FAILED, "the client went away"), lot, gone=True)

    checking = passwords.check(lot.password if lot else None, password, gone)
    outcome: Deferred[LoginOutcome] = checking.addCallbacks(checked, unchecked)
    return outcome


def not_stored_answer(failure: Failure) -> Answer:
    """The 9999 a lot gets when the journal cannot store its message (it retries), logged."""
    log.failure("the journal could not store a record", failure)
    reason = failure.getErrorMessage() or failure.type.__name__
    return Answer.of(Result.FAILED, f"the journal cannot store this message now ({reason}); retry")
