"""The blocking poster ``cpmictl log replay`` sends its CloudEvents batches with.

Kept apart from the verb so the sending can later go through the cloud sink's own code
(gateway.cloud); until then it posts with urllib, one batch at a time.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from email.message import Message
from typing import IO

from gateway.cli.log.common import printable

ANSWER_EXCERPT = 300
"""How much of a refusing answer ``replay`` shows."""


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are answers like any other: a signature made for one URL must not go to another."""

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Message, newurl: str
    ) -> urllib.request.Request | None:
        return None


def no_redirect_opener() -> urllib.request.OpenerDirector:
    """An opener that posts and reads answers, and follows no redirect."""
    return urllib.request.build_opener(NoRedirect())


def post_batch(
    opener: urllib.request.OpenerDirector, url: str, body: bytes, headers: dict[str, str], timeout: float
) -> str | None:
    """POST one batch; None for a 2xx, else what went wrong, in a few words."""
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with opener.open(request, timeout=timeout) as response:
            response.read()
            return None
    except urllib.error.HTTPError as e:
        try:
            answer = e.read(ANSWER_EXCERPT * 4)
        except OSError:
            answer = b""
        text = " ".join(answer.decode("utf-8", "replace").split())[:ANSWER_EXCERPT]
        return f"HTTP {e.code} from {url}: {printable(text) or '(no body)'}"
    except (urllib.error.URLError, OSError) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        return f"no answer from {url} ({reason})"
