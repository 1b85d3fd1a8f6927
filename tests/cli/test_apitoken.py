"""Tests for ``cpmictl apitoken``."""

from __future__ import annotations

import argparse
import hashlib
import tomllib

import pytest

from gateway import config
from gateway.cli import apitoken


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Parse ``argv`` with apitoken's own parser and run its handler; exit code, stdout, stderr."""
    parser = argparse.ArgumentParser(prog="cpmictl")
    apitoken.add_parser(parser.add_subparsers())
    args = parser.parse_args(["apitoken", *argv])
    code = args.handler(args)
    out, err = capsys.readouterr()
    return code, out, err


def _token_lines(out: str) -> tuple[str, str]:
    """The token and digest from the first two lines."""
    first, second = out.splitlines()[:2]
    assert first.startswith("token: ") and second.startswith("token_sha256: ")
    return first.removeprefix("token: "), second.removeprefix("token_sha256: ")


def test_token_and_digest_match(capsys: pytest.CaptureFixture[str]) -> None:
    """apitoken prints a 256-bit URL-safe token and the hex SHA-256 of exactly that token."""
    code, out, err = _run(capsys)
    assert code == 0 and err == ""
    token, digest = _token_lines(out)
    assert len(token) == 43  # 32 bytes, base64 without padding
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert digest == hashlib.sha256(token.encode()).hexdigest()


def test_tokens_are_new_each_time(capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs give two different tokens."""
    first = _token_lines(_run(capsys)[1])[0]
    second = _token_lines(_run(capsys)[1])[0]
    assert first != second


def test_snippet_is_a_valid_api_client(capsys: pytest.CaptureFixture[str]) -> None:
    """The printed [[api_client]] entry parses as TOML and as the gateway's configuration."""
    _, out, _ = _run(capsys)
    _, digest = _token_lines(out)
    snippet = out[out.index("[[api_client]]") :]
    settings = config.parse(tomllib.loads(snippet))
    (client,) = settings.api_clients
    assert client == config.ApiClient(name="client", token_sha256=digest, roles=("read",))


def test_name_and_roles(capsys: pytest.CaptureFixture[str]) -> None:
    """--name and repeated --role go into the entry; odd names stay valid TOML."""
    _, out, _ = _run(capsys, "--name", 'ops "night" 值班', "--role", "command", "--role", "read")
    snippet = out[out.index("[[api_client]]") :]
    (client,) = config.parse(tomllib.loads(snippet)).api_clients
    assert client.name == 'ops "night" 值班'
    assert client.roles == ("command", "read")


def test_unknown_role_is_a_usage_error() -> None:
    """A role the gateway does not know is refused by the parser."""
    parser = argparse.ArgumentParser(prog="cpmictl")
    apitoken.add_parser(parser.add_subparsers())
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["apitoken", "--role", "root"])
    assert exit_info.value.code == 2


def test_empty_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """An empty --name would not load; it is refused with exit code 2."""
    code, out, err = _run(capsys, "--name", "")
    assert code == 2 and out == ""
    assert "name" in err
