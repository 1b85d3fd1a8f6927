"""Tests for gateway.keys, the Ed25519 signing key file."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gateway.keys import (
    KeyFileError,
    load_or_create_signing_key,
    load_signing_key,
    parse_public_key_b64,
    public_key_b64,
    write_signing_key,
)


def _mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600."""
    path.write_bytes(data)
    path.chmod(0o600)


def test_load_or_create_creates_private_file(tmp_path: Path) -> None:
    """load_or_create_signing_key creates a missing key file with mode 0600 and says so."""
    path = tmp_path / "gateway.key"
    key, created = load_or_create_signing_key(str(path))
    assert created is True
    assert isinstance(key, SigningKey)
    assert _mode(path) == 0o600


def test_created_file_format(tmp_path: Path) -> None:
    """A new key file is one line: ed25519: and the base64 of the 32-byte seed."""
    path = tmp_path / "gateway.key"
    key, _ = load_or_create_signing_key(str(path))
    text = path.read_text("ascii")
    assert text == "ed25519:" + base64.b64encode(bytes(key)).decode("ascii") + "\n"


def test_create_ignores_permissive_umask(tmp_path: Path) -> None:
    """A new key file has mode 0600 even when the umask would allow more."""
    path = tmp_path / "gateway.key"
    old = os.umask(0)
    try:
        load_or_create_signing_key(str(path))
    finally:
        os.umask(old)
    assert _mode(path) == 0o600


def test_load_gives_same_key(tmp_path: Path) -> None:
    """load_signing_key reads back the key that load_or_create_signing_key created."""
    path = str(tmp_path / "gateway.key")
    key, _ = load_or_create_signing_key(path)
    assert bytes(load_signing_key(path)) == bytes(key)


def test_second_load_or_create_keeps_key(tmp_path: Path) -> None:
    """A second load_or_create_signing_key returns the existing key and leaves the file alone."""
    path = tmp_path / "gateway.key"
    first, _ = load_or_create_signing_key(str(path))
    before = path.read_bytes()
    second, created = load_or_create_signing_key(str(path))
    assert created is False
    assert bytes(second) == bytes(first)
    assert path.read_bytes() == before


def test_creates_parent_directories(tmp_path: Path) -> None:
    """load_or_create_signing_key creates missing parent directories of the key file."""
    path = tmp_path / "conf" / "deep" / "gateway.key"
    _, created = load_or_create_signing_key(str(path))
    assert created is True
    assert path.is_file()


def test_no_temp_file_left(tmp_path: Path) -> None:
    """Creating a key leaves only the key file in its directory, no temporary file."""
    load_or_create_signing_key(str(tmp_path / "gateway.key"))
    assert sorted(os.listdir(tmp_path)) == ["gateway.key"]


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When writing fails before the file is in place, neither key nor temp file remains."""
    path = tmp_path / "gateway.key"

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(KeyFileError, match=str(path)):
        write_signing_key(str(path), SigningKey.generate())
    assert os.listdir(tmp_path) == []


def test_corrupt_file_refused(tmp_path: Path) -> None:
    """A key file that is not in the key format is refused with a message naming its path."""
    path = tmp_path / "gateway.key"
    _write_private(path, b"not a key\n")
    with pytest.raises(KeyFileError) as info:
        load_or_create_signing_key(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    assert path.read_bytes() == b"not a key\n"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"ed25519:\n",
        b"ed25519:!!!!\n",
        b"ed25519:" + base64.b64encode(b"x" * 31) + b"\n",
        b"ed25519:" + base64.b64encode(b"x" * 64) + b"\n",
        b"ed448:" + base64.b64encode(b"x" * 32) + b"\n",
        b"\xff\xfe\n",
        b"ed25519:" + b"A" * 10000,
    ],
)
def test_malformed_files_refused(tmp_path: Path, data: bytes) -> None:
    """Empty, truncated, wrong-length, wrong-type, binary and huge files are all refused."""
    path = tmp_path / "gateway.key"
    _write_private(path, data)
    with pytest.raises(KeyFileError, match=str(path)):
        load_signing_key(str(path))


def test_surrounding_whitespace_accepted(tmp_path: Path) -> None:
    """A key line with surrounding whitespace or no final newline still loads."""
    key = SigningKey.generate()
    path = tmp_path / "gateway.key"
    _write_private(path, b"  ed25519:" + base64.b64encode(bytes(key)) + b"\r\n\n")
    assert bytes(load_signing_key(str(path))) == bytes(key)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o620, 0o660, 0o700 | 0o001])
def test_permissive_file_refused(tmp_path: Path, mode: int) -> None:
    """A key file accessible by group or others is refused with advice to chmod 600."""
    path = tmp_path / "gateway.key"
    write_signing_key(str(path), SigningKey.generate())
    path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load_or_create_signing_key(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "chmod 600" in message
    assert "\n" not in message


def test_load_missing_file(tmp_path: Path) -> None:
    """load_signing_key on a missing file raises KeyFileError naming the path."""
    path = tmp_path / "absent.key"
    with pytest.raises(KeyFileError, match="no such key file") as info:
        load_signing_key(str(path))
    assert str(path) in str(info.value)


def test_load_directory_refused(tmp_path: Path) -> None:
    """A directory where the key file should be is refused, not created over."""
    path = tmp_path / "gateway.key"
    path.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match=str(path)):
        load_or_create_signing_key(str(path))


def test_write_refuses_existing_file(tmp_path: Path) -> None:
    """write_signing_key refuses to overwrite an existing file and leaves it unchanged."""
    path = tmp_path / "gateway.key"
    write_signing_key(str(path), SigningKey.generate())
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="already exists") as info:
        write_signing_key(str(path), SigningKey.generate())
    assert str(path) in str(info.value)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["gateway.key"]


def test_public_key_round_trip_verifies(tmp_path: Path) -> None:
    """public_key_b64 gives base64 of 32 bytes that parses to a key verifying our signature."""
    key = SigningKey.generate()
    text = public_key_b64(key)
    assert len(base64.b64decode(text, validate=True)) == 32
    verify_key = parse_public_key_b64(text)
    signed = key.sign(b"chain head")
    assert verify_key.verify(signed) == b"chain head"


@pytest.mark.parametrize("text", ["", "not base64!", base64.b64encode(b"x" * 31).decode()])
def test_parse_public_key_rejects_garbage(text: str) -> None:
    """parse_public_key_b64 raises ValueError for text that is not base64 of 32 bytes."""
    with pytest.raises(ValueError):
        parse_public_key_b64(text)
