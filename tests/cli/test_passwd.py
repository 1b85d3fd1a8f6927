"""Tests for ``cpmictl passwd``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import nacl.exceptions
import nacl.pwhash
import pytest

from gateway.cli import passwd
from gateway.cli.main import main

REPO_ROOT = Path(__file__).resolve().parents[2]


class _TerminalInput(io.StringIO):
    """A standard input that claims to be a terminal."""

    def isatty(self) -> bool:
        """Always a terminal."""
        return True


def _run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str
) -> tuple[int, str, str]:
    """Run ``cpmictl passwd`` with ``stdin`` as standard input; exit code, stdout, stderr."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(["passwd"])
    out, err = capsys.readouterr()
    return code, out, err


def test_hashes_password(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """passwd prints one $argon2id$ hash line that verifies against the given password."""
    code, out, err = _run(monkeypatch, capsys, "correct horse\n")
    assert code == 0
    assert out.startswith("$argon2id$")
    assert out.endswith("\n")
    assert out.count("\n") == 1
    assert nacl.pwhash.verify(out.rstrip("\n").encode(), b"correct horse")
    assert err == ""


def test_interactive_limits(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The hash uses libsodium's interactive Argon2id limits (64 MiB, 2 passes)."""
    _, out, _ = _run(monkeypatch, capsys, "pw\n")
    memlimit_kib = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE // 1024
    opslimit = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
    assert f"$m={memlimit_kib},t={opslimit}," in out


def test_only_first_line_used(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Only the first line of standard input is the password; later lines are ignored."""
    code, out, _ = _run(monkeypatch, capsys, "pw\nsecond")
    assert code == 0
    hashed = out.rstrip("\n").encode()
    assert nacl.pwhash.verify(hashed, b"pw")
    with pytest.raises(nacl.exceptions.InvalidkeyError):
        nacl.pwhash.verify(hashed, b"pw\nsecond")


def test_crlf_stripped(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A CRLF line ending is not part of the password."""
    code, out, _ = _run(monkeypatch, capsys, "pw\r\n")
    assert code == 0
    assert nacl.pwhash.verify(out.rstrip("\n").encode(), b"pw")


def test_no_final_newline(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A password without a final newline is used as it is."""
    code, out, _ = _run(monkeypatch, capsys, "pw")
    assert code == 0
    assert nacl.pwhash.verify(out.rstrip("\n").encode(), b"pw")


def test_spaces_kept(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Only the line ending is removed: surrounding spaces are part of the password."""
    code, out, _ = _run(monkeypatch, capsys, " pw \n")
    assert code == 0
    assert nacl.pwhash.verify(out.rstrip("\n").encode(), b" pw ")


def test_non_ascii_password_utf8(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A non-ASCII password is hashed as its UTF-8 bytes."""
    code, out, _ = _run(monkeypatch, capsys, "停车场密码\n")
    assert code == 0
    assert nacl.pwhash.verify(out.rstrip("\n").encode(), "停车场密码".encode())


@pytest.mark.parametrize("stdin", ["", "\n", "\r\n", "\nsecond\n"])
def test_empty_password_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str
) -> None:
    """No input or an empty first line exits 2 with one line on stderr and nothing on stdout."""
    code, out, err = _run(monkeypatch, capsys, stdin)
    assert code == 2
    assert out == ""
    assert err.startswith("cpmictl passwd: ")
    assert err.count("\n") == 1


def test_closed_stdin_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """With no standard input at all (sys.stdin is None), passwd exits 2."""
    monkeypatch.setattr(sys, "stdin", None)
    assert main(["passwd"]) == 2
    assert capsys.readouterr().out == ""


def test_password_never_echoed(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The password appears neither on stdout nor on stderr."""
    secret = "S3cret-Pa55-xyzzy"
    _, out, err = _run(monkeypatch, capsys, secret + "\n")
    assert secret not in out
    assert secret not in err


def test_terminal_prompts_twice(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """On a terminal, passwd prompts twice on stderr via getpass and hashes the password."""
    prompts: list[str] = []

    def fake_getpass(prompt: str = "Password: ", stream: object = None) -> str:
        assert stream is sys.stderr
        prompts.append(prompt)
        return "tty pw"

    monkeypatch.setattr(sys, "stdin", _TerminalInput("ignored\n"))
    monkeypatch.setattr(passwd.getpass, "getpass", fake_getpass)
    assert main(["passwd"]) == 0
    out = capsys.readouterr().out
    assert len(prompts) == 2
    assert nacl.pwhash.verify(out.rstrip("\n").encode(), b"tty pw")


def test_terminal_mismatch_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a terminal, two different entries exit 2 and print no hash."""
    answers = iter(["first", "second"])

    def fake_getpass(prompt: str = "Password: ", stream: object = None) -> str:
        return next(answers)

    monkeypatch.setattr(sys, "stdin", _TerminalInput())
    monkeypatch.setattr(passwd.getpass, "getpass", fake_getpass)
    assert main(["passwd"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "do not match" in err


def test_terminal_empty_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """On a terminal, an empty first entry exits 2 without asking again."""
    prompts: list[str] = []

    def fake_getpass(prompt: str = "Password: ", stream: object = None) -> str:
        prompts.append(prompt)
        return ""

    monkeypatch.setattr(sys, "stdin", _TerminalInput())
    monkeypatch.setattr(passwd.getpass, "getpass", fake_getpass)
    assert main(["passwd"]) == 2
    assert capsys.readouterr().out == ""
    assert len(prompts) == 1


def test_console_script_end_to_end() -> None:
    """python -m gateway.cli.main passwd hashes a piped password in a real process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", "passwd"],
        input=b"piped pw\nextra\n",
        capture_output=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode("ascii")
    assert out.startswith("$argon2id$")
    assert nacl.pwhash.verify(out.rstrip("\n").encode(), b"piped pw")
    assert b"piped pw" not in result.stdout + result.stderr
