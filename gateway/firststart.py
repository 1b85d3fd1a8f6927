"""What the gateway creates at its first start, and taking it back when the start fails.

A first start creates the signing key, the journal directory and, when the
configuration names one, the API token file. A start that fails after that
(a busy port, an unusable journal) must leave the disk as it found it, so
that the operator's next try is a first start again, not a half-made one.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

from attrs import frozen
from twisted.logger import Logger

__all__ = ["Fresh", "create_token_file", "log_keys", "new_token"]

_log = Logger()


def new_token() -> str:
    """A new random API token: 32 random bytes, URL-safe base64 (as `cpmictl apitoken` makes)."""
    return secrets.token_urlsafe(32)


def create_token_file(path: str) -> str:
    """Write a new token to `path` (mode 0600, never over an existing file) and return it."""
    token = new_token()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(token + "\n")
    return token


def _first_missing(path: Path) -> Path | None:
    """The outermost of `path` and its parents that does not exist: what creating `path` creates."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


@frozen
class Fresh:
    """The paths a start would create, noted before it creates any of them."""

    paths: tuple[Path, ...]

    @classmethod
    def before(cls, paths: Iterable[str]) -> Fresh:
        """Note which of `paths` (and of their parent directories) do not exist yet."""
        found = (_first_missing(Path(path).absolute()) for path in paths if path)
        return cls(tuple(dict.fromkeys(path for path in found if path is not None)))

    def undo(self) -> None:
        """Remove what was created since `before`; what existed then is left alone."""
        for path in self.paths:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                path.unlink()


def log_keys(*, key_path: str, public_key: str, created: bool, token_path: str, token_created: bool) -> None:
    """Log the signing key's public key, and which of the key and the API token file this start made."""
    if created:
        _log.info(
            "created the signing key {path}; its public key is {public_key}",
            path=key_path,
            public_key=public_key,
        )
    else:
        _log.info("signing key public key: {public_key}", public_key=public_key)
    if token_created:
        _log.info(
            "created the API token file {path}: its content is a bearer token with every role",
            path=token_path,
        )
