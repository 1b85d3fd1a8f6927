"""The gateway's Ed25519 signing key file.

The gateway signs journal seals and outgoing HTTP messages with one Ed25519
key, kept in the file named by ``[gateway] signing_key``.

File format: one line of ASCII text,

    ed25519:<standard base64 of the 32-byte private seed>\\n

for example ``ed25519:q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=``.
Whitespace around the line is ignored when reading; nothing else is allowed.
The public key, as printed by ``cpmictl pubkey`` and logged at first start, is
the standard base64 of the 32-byte verify key.

The file must be readable by its owner only (mode 0600): a key file that
group or others may read or write is refused. New files are written
atomically -- a temporary file in the same directory, created with
``O_CREAT|O_EXCL`` and mode 0600, is written and fsynced, then linked into
place (which never replaces an existing file) and the directory is fsynced --
so a crash leaves either no key file or a whole one.

These functions do blocking file I/O; they are meant for start-up and the
command line, not for the reactor's work.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import tempfile

from nacl.signing import SigningKey, VerifyKey

__all__ = [
    "KeyFileError",
    "load_or_create_signing_key",
    "load_signing_key",
    "parse_public_key_b64",
    "public_key_b64",
    "write_signing_key",
]

_PREFIX = "ed25519:"
_SEED_BYTES = 32
# A valid file is about 54 bytes; anything much larger is not a key file.
_MAX_FILE_BYTES = 4096


class KeyFileError(Exception):
    """A key file is missing, unreadable, malformed, too permissive or in the way.

    ``str(error)`` is one line that names the path and the problem.
    """


def load_signing_key(path: str) -> SigningKey:
    """Read the signing key at ``path``.

    Raises KeyFileError when the file is missing or unreadable, is not a key
    file in the documented format, or is readable or writable by group or
    others.
    """
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None


def write_signing_key(path: str, key: SigningKey) -> None:
    """Write ``key`` to a new file at ``path`` with mode 0600, atomically.

    Missing parent directories are created. Raises KeyFileError, leaving any
    existing file untouched, when something already exists at ``path`` or the
    file cannot be written.
    """
    try:
        _create_key_file(path, key)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key file") from None


def load_or_create_signing_key(path: str) -> tuple[SigningKey, bool]:
    """Load the signing key at ``path``, creating a new one if there is none.

    Returns the key and whether it was created now (so the caller can log
    the new public key). An existing file that is not a valid, private key
    file raises KeyFileError rather than being replaced.
    """
    try:
        return _read_key_file(path), False
    except FileNotFoundError:
        pass
    key = SigningKey.generate()
    try:
        _create_key_file(path, key)
    except FileExistsError:
        # Another process created it between our read and our write: use theirs.
        return load_signing_key(path), False
    return key, True


def public_key_b64(key: SigningKey) -> str:
    """The standard base64 of the 32-byte Ed25519 verify key of ``key``."""
    return base64.b64encode(bytes(key.verify_key)).decode("ascii")


def parse_public_key_b64(text: str) -> VerifyKey:
    """Parse a public key written by :func:`public_key_b64`.

    Raises ValueError when ``text`` is not standard base64 of 32 bytes.
    """
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("public key is not valid base64") from None
    if len(raw) != _SEED_BYTES:
        raise ValueError(f"public key is {len(raw)} bytes, expected {_SEED_BYTES}")
    return VerifyKey(raw)


def _read_key_file(path: str) -> SigningKey:
    """Read and check the key file; a missing file raises FileNotFoundError."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise KeyFileError(f"{path}: cannot open key file: {e.strerror}") from None
    try:
        # fstat the descriptor we read, so the checked file is the read file.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path}: not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"{path}: key file is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
            )
        data = os.read(fd, _MAX_FILE_BYTES + 1)
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read key file: {e.strerror}") from None
    finally:
        os.close(fd)
    return SigningKey(_parse_seed(path, data))


def _parse_seed(path: str, data: bytes) -> bytes:
    """The 32-byte seed in a key file's contents, or KeyFileError."""
    expected = f"expected one line '{_PREFIX}<base64 of 32 bytes>'"
    if len(data) > _MAX_FILE_BYTES:
        raise KeyFileError(f"{path}: not an Ed25519 key file (too large); {expected}")
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not an Ed25519 key file (not text); {expected}") from None
    if not text.startswith(_PREFIX):
        raise KeyFileError(f"{path}: not an Ed25519 key file; {expected}")
    try:
        seed = base64.b64decode(text[len(_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{path}: key is not valid base64; {expected}") from None
    if len(seed) != _SEED_BYTES:
        raise KeyFileError(f"{path}: key is {len(seed)} bytes; {expected}")
    return seed


def _create_key_file(path: str, key: SigningKey) -> None:
    """Atomically create ``path`` holding ``key``.

    Raises FileExistsError when something is already at ``path`` and
    KeyFileError for any other failure; no temporary file is left behind
    unless the process dies between linking and unlinking it.
    """
    contents = (_PREFIX + base64.b64encode(bytes(key)).decode("ascii") + "\n").encode("ascii")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        # mkstemp opens with O_CREAT|O_EXCL and mode 0600.
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as e:
        raise KeyFileError(f"{path}: cannot create key file: {e.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask did
            view = memoryview(contents)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        _link_no_replace(tmp, path)
        _fsync_directory(directory)
    except FileExistsError:
        raise
    except OSError as e:
        raise KeyFileError(f"{path}: cannot write key file: {e.strerror}") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _link_no_replace(tmp: str, path: str) -> None:
    """Give ``tmp`` the name ``path``, raising FileExistsError if it is taken.

    A hard link is atomic and never replaces an existing file; where the
    file system cannot link, fall back to check-then-rename.
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(path):
            raise FileExistsError(path) from None
        os.rename(tmp, path)


def _fsync_directory(directory: str) -> None:
    """Make a new directory entry durable (POSIX; a no-op elsewhere)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
