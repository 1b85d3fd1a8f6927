"""Tests for ``cpmictl keygen`` and ``cpmictl pubkey``."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.keys import load_signing_key, public_key_b64


def test_keygen_prints_public_key_matching_pubkey(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """keygen prints a base64 public key equal to what pubkey prints for the same file."""
    path = str(tmp_path / "gateway.key")
    assert main(["keygen", path]) == 0
    generated = capsys.readouterr().out
    assert main(["pubkey", path]) == 0
    shown = capsys.readouterr().out
    assert generated == shown
    assert generated.endswith("\n")
    assert len(base64.b64decode(generated.strip(), validate=True)) == 32
    assert generated.strip() == public_key_b64(load_signing_key(path))


def test_keygen_file_mode_0600(tmp_path: Path) -> None:
    """keygen creates the key file with mode 0600."""
    path = tmp_path / "gateway.key"
    assert main(["keygen", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_keygen_refuses_existing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """keygen on an existing file exits 1 with a one-line message and leaves the file alone."""
    path = tmp_path / "gateway.key"
    assert main(["keygen", str(path)]) == 0
    capsys.readouterr()
    before = path.read_bytes()
    assert main(["keygen", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert str(path) in err
    assert err.count("\n") == 1
    assert path.read_bytes() == before


def test_pubkey_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pubkey on a missing file exits 1 with one line on stderr naming the path."""
    path = tmp_path / "absent.key"
    assert main(["pubkey", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert str(path) in err
    assert err.count("\n") == 1


def test_pubkey_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pubkey on a file that is not a key exits 1 with one line on stderr."""
    path = tmp_path / "gateway.key"
    path.write_text("hello\n")
    path.chmod(0o600)
    assert main(["pubkey", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert str(path) in err
    assert err.count("\n") == 1


def test_pubkey_group_readable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pubkey on a group-readable key file exits 1 and says to chmod 600."""
    path = tmp_path / "gateway.key"
    assert main(["keygen", str(path)]) == 0
    capsys.readouterr()
    path.chmod(0o640)
    assert main(["pubkey", str(path)]) == 1
    assert "chmod 600" in capsys.readouterr().err


def test_keygen_requires_path(capsys: pytest.CaptureFixture[str]) -> None:
    """keygen without PATH is a usage error, exit 2."""
    assert main(["keygen"]) == 2
    assert "usage:" in capsys.readouterr().err
