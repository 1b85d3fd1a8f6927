"""``cpmictl config check``: start-up's checks without starting, and warnings for weak choices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.endpoints import quoteStringArgument

from gateway.cli.main import main
from tests.test_tls import self_signed

ROOT = Path(__file__).parent.parent.parent
HASH = "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$aGFzaA"
TOKEN_SHA256 = "a" * 64


def config_text(
    tmp_path: Path,
    *,
    gateway: str = "",
    listen: str = 'api = "tcp:8081:interface=127.0.0.1"',
    journal: str = 'fsync = "always"',
    cloud: str = 'api_token = "cloud-secret"',
    lots: str = "",
    extra: str = "",
) -> str:
    """A whole configuration with its key and journal in tmp_path; each table's extra lines given."""
    return f"""
[gateway]
id = "gw-07"
signing_key = "{tmp_path / "gateway.key"}"
{gateway}

[listen]
{listen}

[journal]
path = "{tmp_path / "journal"}"
{journal}

[cloud]
{cloud}

{lots}
{extra}
"""


def standard_lot(park: str, user: str, signature: str = "required") -> str:
    return f"""
[[lot]]
park_code = "{park}"
username = "{user}"
password = "{HASH}"
signature = "{signature}"
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path)


def with_key(tmp_path: Path) -> Path:
    """Create the signing key the configurations of `config_text` name."""
    key = tmp_path / "gateway.key"
    assert main(["keygen", str(key)]) == 0
    return key


def check(capsys: pytest.CaptureFixture[str], path: str, *options: str) -> tuple[int, list[str], list[str]]:
    """Run `cpmictl config check`; the exit status and the lines of standard output and error."""
    capsys.readouterr()
    status = main(["config", "check", *options, path])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err.splitlines()


def test_good_config_prints_one_summary_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sound configuration exits 0 with one line: gateway id, lots by dialect, API clients, sink."""
    with_key(tmp_path)
    lots = standard_lot("P001", "u1") + standard_lot("P002", "u2") + '[[lot]]\npark_code = "B001"\n'
    lots += 'dialect = "bolink"\nsecret = "s3"\n'
    client = f'[[api_client]]\nname = "monitoring"\ntoken_sha256 = "{TOKEN_SHA256}"\nroles = ["read"]\n'
    path = write(
        tmp_path,
        config_text(tmp_path, listen='bolink = "tcp:6789"', lots=lots, extra=client),
    )
    status, out, err = check(capsys, path)
    assert status == 0
    assert out == [f"{path}: ok: gateway gw-07, 3 lots (standard 2, bolink 1), 1 api client, sink log-only"]
    assert err == []


def test_no_lots_is_counted_as_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A configuration without lots or clients says so in its summary."""
    with_key(tmp_path)
    path = write(tmp_path, config_text(tmp_path))
    status, out, _ = check(capsys, path)
    assert status == 0
    assert out == [f"{path}: ok: gateway gw-07, 0 lots, 0 api clients, sink log-only"]


def test_missing_key_in_writable_directory_is_ok_and_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A signing key still to be created passes with a note, and the check does not create it."""
    path = write(tmp_path, config_text(tmp_path))
    status, out, err = check(capsys, path)
    assert status == 0
    assert out[0].startswith(f"{path}: ok: ")
    [note] = err
    assert note.startswith(f"note: gateway.signing_key: {tmp_path / 'gateway.key'} does not exist yet")
    assert not (tmp_path / "gateway.key").exists()


def test_missing_key_and_journal_under_missing_directories_are_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Start-up creates missing parent directories, so they pass when creatable; the check makes none."""
    text = config_text(tmp_path).replace(
        str(tmp_path / "gateway.key"), str(tmp_path / "etc" / "keys" / "gateway.key")
    )
    text = text.replace(str(tmp_path / "journal"), str(tmp_path / "var" / "lib" / "journal"))
    path = write(tmp_path, text)
    status, _, _ = check(capsys, path)
    assert status == 0
    assert sorted(os.listdir(tmp_path)) == ["gateway.toml"]


def test_existing_journal_directory_is_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An existing journal directory passes and is neither opened nor recovered: nothing is written in it."""
    with_key(tmp_path)
    (tmp_path / "journal").mkdir()
    (tmp_path / "journal" / "00000000000000000001.jsonl").write_bytes(b'{"torn')
    path = write(tmp_path, config_text(tmp_path))
    status, _, _ = check(capsys, path)
    assert status == 0
    assert os.listdir(tmp_path / "journal") == ["00000000000000000001.jsonl"]
    assert (tmp_path / "journal" / "00000000000000000001.jsonl").read_bytes() == b'{"torn'


@pytest.mark.parametrize(
    ("changes", "warning"),
    [
        (
            {"journal": 'fsync = "interval"'},
            'journal.fsync is "interval": lots, the cloud and API callers may be answered before',
        ),
        ({"journal": 'fsync = "never"'}, 'journal.fsync is "never"'),
        (
            {
                "lots": standard_lot("P001", "u1")
                + standard_lot("P002", "u2")
                + standard_lot("P003", "u3", "off")
            },
            "lot[2] (P003): signature is off",
        ),
        ({"listen": 'api = "tcp:8081"'}, "listen.api: 'tcp:8081' listens on all interfaces without TLS"),
        (
            {"listen": 'api = "tcp:8081:interface=0.0.0.0"'},
            "listen.api: 'tcp:8081:interface=0.0.0.0' listens on all interfaces without TLS",
        ),
        (
            {"listen": 'api = "tcp:8081:interface=192.0.2.7"'},
            "listen.api: 'tcp:8081:interface=192.0.2.7' listens on interface 192.0.2.7 without TLS",
        ),
        ({"listen": 'api = "tcp6:8081"'}, "listen.api: 'tcp6:8081' listens on all interfaces without TLS"),
        (
            {"cloud": 'api_token = "t"\nurl = "http://cloud.example/events"'},
            "cloud.url: 'http://cloud.example/events' is plain http to another host",
        ),
        (
            {"cloud": 'api_token = "t"\nurl = "https://c.example/e"\nquery_url = "http://10.0.0.9/q"'},
            "cloud.query_url: 'http://10.0.0.9/q' is plain http to another host",
        ),
    ],
)
def test_weak_choices_are_warnings_and_still_exit_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, str], warning: str
) -> None:
    """Each weak choice is one `warning:` line on stderr; the gateway would start, so the exit is 0."""
    with_key(tmp_path)
    path = write(tmp_path, config_text(tmp_path, **changes))
    status, out, err = check(capsys, path)
    assert status == 0
    assert out[0].startswith(f"{path}: ok: ")
    [line] = err
    assert line.startswith(f"warning: {warning}")


@pytest.mark.parametrize(
    "changes",
    [
        {"listen": 'api = "tcp6:8081:interface=\\\\:\\\\:1"'},
        {"listen": 'api = "tcp:8081:interface=localhost"'},
        {"listen": 'api = "unix:/run/cpmi-gateway/api.sock"'},
        {"cloud": 'api_token = "t"\nurl = "https://cloud.example/events"'},
        {"cloud": 'api_token = "t"\nurl = "http://127.0.0.1:8000/events"'},
        {"cloud": 'api_token = "t"\nurl = "http://localhost/events"'},
    ],
)
def test_sound_choices_are_not_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, str]
) -> None:
    """A loopback or local-socket API and https or loopback cloud URLs give no warning."""
    with_key(tmp_path)
    path = write(tmp_path, config_text(tmp_path, **changes))
    status, _, err = check(capsys, path)
    assert (status, err) == (0, [])


def test_tls_api_on_all_interfaces_is_not_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ssl: api endpoint may listen on every interface: the network sees only TLS."""
    with_key(tmp_path)
    pem = tmp_path / "api.pem"
    self_signed(pem)
    files = f"privateKey={quoteStringArgument(str(pem))}:certKey={quoteStringArgument(str(pem))}"
    path = write(tmp_path, config_text(tmp_path, listen=f'api = "ssl:8443:{files}"'))
    status, _, err = check(capsys, path)
    assert (status, err) == (0, [])


def test_optional_signature_is_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A lot with signature optional gets a milder `note:` line naming it."""
    with_key(tmp_path)
    path = write(tmp_path, config_text(tmp_path, lots=standard_lot("P009", "u9", "optional")))
    status, _, err = check(capsys, path)
    assert status == 0
    assert err == [
        "note: lot[0] (P009): signature is optional: its unsigned requests are accepted "
        "(signed ones are checked)"
    ]


def test_nobody_can_use_the_command_api_is_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty cloud.api_token with no [[api_client]] is noted; either one alone silences it."""
    with_key(tmp_path)
    path = write(tmp_path, config_text(tmp_path, cloud='api_token = ""'))
    status, _, err = check(capsys, path)
    assert status == 0
    [note] = err
    assert note.startswith("note: cloud.api_token is empty and there is no [[api_client]]")

    client = f'[[api_client]]\nname = "ops"\ntoken_sha256 = "{TOKEN_SHA256}"\nroles = ["command"]\n'
    path = write(tmp_path, config_text(tmp_path, cloud='api_token = ""', extra=client))
    assert check(capsys, path)[2] == []


def test_strict_fails_on_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --strict, a warning makes the exit 1: the warnings, then a count, and no ok line."""
    with_key(tmp_path)
    lots = standard_lot("P001", "u1", "off")
    path = write(tmp_path, config_text(tmp_path, journal='fsync = "interval"', lots=lots))
    status, out, err = check(capsys, path, "--strict")
    assert status == 1
    assert out == []
    assert [line.split(":")[0] for line in err] == ["warning", "warning", path]
    assert err[-1] == f"{path}: 2 warnings (--strict)"


def test_strict_lets_notes_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --strict, notes alone (a key still to be created, an optional signature) still exit 0."""
    path = write(tmp_path, config_text(tmp_path, lots=standard_lot("P001", "u1", "optional")))
    status, out, err = check(capsys, path, "--strict")
    assert status == 0
    assert out[0].startswith(f"{path}: ok: ")
    assert [line.split(":")[0] for line in err] == ["note", "note"]


def test_strict_passes_a_clean_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --strict, a configuration without warnings exits 0."""
    with_key(tmp_path)
    path = write(tmp_path, config_text(tmp_path))
    assert check(capsys, path, "--strict")[0] == 0


def assert_one_problem(status: int, out: list[str], err: list[str], line: str) -> None:
    """Exit 1, nothing on stdout, exactly `line` on stderr."""
    assert (status, out, err) == (1, [], [line])


def test_toml_syntax_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is not TOML exits 1 with the loader's one line, the file named once."""
    path = write(tmp_path, "[gateway\nid = 1\n")
    status, out, err = check(capsys, path)
    assert (status, out, len(err)) == (1, [], 1)
    assert err[0].startswith(f"{path}: not valid TOML: ")


def test_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A configuration file that does not exist exits 1 naming it."""
    path = str(tmp_path / "absent.toml")
    assert_one_problem(*check(capsys, path), f"{path}: No such file or directory")


def test_unknown_key_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown key exits 1 with `FILE: key: unknown key`."""
    path = write(tmp_path, config_text(tmp_path, gateway='colour = "blue"'))
    assert_one_problem(*check(capsys, path), f"{path}: gateway.colour: unknown key")


def test_bad_lot_keeps_the_loader_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A lot's bad password gives the loader's line intact, after the file's name."""
    lots = standard_lot("P001", "u1") + standard_lot("P002", "u2").replace(HASH, "plain-text")
    path = write(tmp_path, config_text(tmp_path, lots=lots))
    assert_one_problem(
        *check(capsys, path), f"{path}: lot[1].password: not an argon2id hash (cpmictl passwd)"
    )


def test_corrupt_signing_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A signing key file that is not a key exits 1 naming the key, the file and the problem."""
    key = tmp_path / "gateway.key"
    key.write_text("hello\n")
    key.chmod(0o600)
    path = write(tmp_path, config_text(tmp_path))
    status, out, err = check(capsys, path)
    assert (status, out, len(err)) == (1, [], 1)
    assert err[0].startswith(f"{path}: gateway.signing_key: {key}: not an Ed25519 key file")


def test_group_readable_signing_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A signing key others may read is refused as start-up refuses it, with the chmod to run."""
    key = with_key(tmp_path)
    key.chmod(0o640)
    path = write(tmp_path, config_text(tmp_path))
    status, out, err = check(capsys, path)
    assert (status, out, len(err)) == (1, [], 1)
    assert err[0].startswith(f"{path}: gateway.signing_key: {key}: key file is accessible by group")
    assert err[0].endswith(f"run: chmod 600 {key}")


def test_signing_key_that_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory where the signing key should be cannot be read as one: exit 1."""
    (tmp_path / "gateway.key").mkdir()
    path = write(tmp_path, config_text(tmp_path))
    assert_one_problem(
        *check(capsys, path), f"{path}: gateway.signing_key: {tmp_path / 'gateway.key'}: not a regular file"
    )


def test_signing_key_that_cannot_be_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing signing key under a file (not a directory) could not be created: exit 1."""
    (tmp_path / "etc").write_text("a file, not a directory\n")
    key = tmp_path / "etc" / "gateway.key"
    path = write(tmp_path, config_text(tmp_path).replace(str(tmp_path / "gateway.key"), str(key)))
    assert_one_problem(
        *check(capsys, path),
        f"{path}: gateway.signing_key: {key}: cannot create key file: {tmp_path / 'etc'} is not a directory",
    )


def test_journal_path_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file where the journal directory should be: exit 1 naming journal.path."""
    with_key(tmp_path)
    (tmp_path / "journal").write_text("not a directory\n")
    path = write(tmp_path, config_text(tmp_path))
    assert_one_problem(*check(capsys, path), f"{path}: journal.path: {tmp_path / 'journal'}: not a directory")


def test_journal_that_cannot_be_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing journal directory under a file could not be created: exit 1 naming the file in the way."""
    with_key(tmp_path)
    (tmp_path / "var").write_text("a file\n")
    journal = tmp_path / "var" / "journal"
    path = write(tmp_path, config_text(tmp_path).replace(str(tmp_path / "journal"), str(journal)))
    assert_one_problem(
        *check(capsys, path),
        f"{path}: journal.path: {journal}: cannot create directory: {tmp_path / 'var'} is not a directory",
    )


def test_shipped_config_checks_ok_without_creating_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """conf/gateway.toml, checked from the repository root, is ok, and no key or journal appears."""
    monkeypatch.chdir(ROOT)
    key, journal = ROOT / "conf" / "gateway.key", ROOT / "var" / "journal"
    before = (key.exists(), journal.exists())
    status, out, err = check(capsys, "conf/gateway.toml")
    assert status == 0
    [line] = out
    assert line.startswith("conf/gateway.toml: ok: gateway gw-01, ")
    assert not any(line.startswith("warning:") for line in err)
    assert (key.exists(), journal.exists()) == before


def test_help_describes_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`cpmictl config check --help` exits 0 and explains what is and is not done."""
    assert main(["config", "check", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: cpmictl config check [-h] [--strict] [FILE]" in out
    assert "not created" in out


def t002_cloud(
    downlink: str = "tls:upstream.example:9000", url: str = "https://upstream.example/uplink"
) -> str:
    """The [cloud] lines of a t002 sink (an api token read from the environment)."""
    return f'sink = "t002"\nurl = "{url}"\ndownlink = "{downlink}"\napi_token = "env:CPMI_TEST_API_TOKEN"\n'


def upstream_lot(park: str, user: str, password: str = "env:CPMI_TEST_UPSTREAM_PW", secret: str = "") -> str:
    """A standard lot with its upstream account; its password from the environment unless given."""
    lines = f'upstream_username = "up-{user}"\nupstream_password = "{password}"\n'
    if secret:
        lines += f'upstream_secret = "{secret}"\n'
    return standard_lot(park, user) + lines


@pytest.fixture
def upstream_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment variables the t002 configurations below read their secrets from."""
    monkeypatch.setenv("CPMI_TEST_API_TOKEN", "api-token")
    monkeypatch.setenv("CPMI_TEST_UPSTREAM_PW", "upstream-password")


@pytest.mark.parametrize(
    "downlink",
    [
        "tls:upstream.example:9000",
        "127.0.0.1:9000",
        "localhost:9000",
        "[::1]:9000",
        "tcp:host=localhost:port=9000",
    ],
)
@pytest.mark.usefixtures("upstream_env")
def test_t002_sink_over_tls_or_loopback_is_not_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], downlink: str
) -> None:
    """A t002 sink with an https url, a TLS or loopback downlink and secrets from env: gives no finding."""
    with_key(tmp_path)
    path = write(tmp_path, config_text(tmp_path, cloud=t002_cloud(downlink), lots=upstream_lot("P001", "u1")))
    status, out, err = check(capsys, path, "--strict")
    assert (status, err) == (0, [])
    assert out == [f"{path}: ok: gateway gw-07, 1 lot (standard 1), 0 api clients, sink t002"]


@pytest.mark.parametrize(
    ("downlink", "warning"),
    [
        (
            "upstream.example:9000",
            "cloud.downlink: 'upstream.example:9000' is plain TCP to another host: the upstream's downlink "
            "carries tokens and commands (gateOpen) in clear; use tls:HOST:PORT",
        ),
        ("tcp:192.0.2.7:9000", "cloud.downlink: 'tcp:192.0.2.7:9000' is plain TCP to another host"),
        ("[2001:db8::7]:9000", "cloud.downlink: '[2001:db8::7]:9000' is plain TCP to another host"),
    ],
)
@pytest.mark.usefixtures("upstream_env")
def test_t002_downlink_over_plain_tcp_to_another_host_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], downlink: str, warning: str
) -> None:
    """A t002 downlink over plain TCP to a host that is not loopback is a warning; --strict refuses it."""
    with_key(tmp_path)
    path = write(tmp_path, config_text(tmp_path, cloud=t002_cloud(downlink), lots=upstream_lot("P001", "u1")))
    status, out, err = check(capsys, path)
    assert status == 0 and out[0].startswith(f"{path}: ok: ")
    [line] = err
    assert line.startswith(f"warning: {warning}")
    assert check(capsys, path, "--strict")[0] == 1


@pytest.mark.usefixtures("upstream_env")
def test_t002_uplink_over_plain_http_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The plain-http check covers cloud.url with sink t002, saying the upstream logins cross in clear."""
    with_key(tmp_path)
    cloud = t002_cloud(url="http://upstream.example/uplink")
    path = write(tmp_path, config_text(tmp_path, cloud=cloud, lots=upstream_lot("P001", "u1")))
    status, _, err = check(capsys, path)
    assert status == 0
    assert err == [
        "warning: cloud.url: 'http://upstream.example/uplink' is plain http to another host: what lots "
        "report, and their upstream logins with passwords, cross the network in clear (the signatures "
        "prove who sent it, they do not hide it); use https://"
    ]


@pytest.mark.usefixtures("upstream_env")
def test_t002_upstream_secrets_written_in_the_file_are_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With t002, an upstream password or secret written in the file (not env:/file:) is a note per lot."""
    with_key(tmp_path)
    secret_file = tmp_path / "p002.secret"
    secret_file.write_text("k2\n")
    lots = (
        upstream_lot("P001", "u1", password="in-clear")
        + upstream_lot("P002", "u2", secret=f"file:{secret_file}")
        + upstream_lot("P003", "u3", password="in-clear-too", secret="k3")
    )
    path = write(tmp_path, config_text(tmp_path, cloud=t002_cloud(), lots=lots))
    status, _, err = check(capsys, path, "--strict")
    assert status == 0
    assert err == [
        "note: lot[0] (P001): upstream_password is written in clear in the file: whoever reads it can "
        "act as this lot upstream; write env:NAME or file:PATH instead",
        "note: lot[2] (P003): upstream_password and upstream_secret are written in clear in the file: "
        "whoever reads it can act as this lot upstream; write env:NAME or file:PATH instead",
    ]


def test_upstream_secrets_are_not_noted_without_t002(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With another sink the upstream keys are unused, so one written in clear is not noted."""
    with_key(tmp_path)
    lots = upstream_lot("P001", "u1", password="in-clear", secret="k1")
    path = write(tmp_path, config_text(tmp_path, lots=lots))
    status, _, err = check(capsys, path)
    assert (status, err) == (0, [])


@pytest.mark.usefixtures("upstream_env")
def test_t002_without_upstream_credentials_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A t002 configuration whose lot has no upstream account would not start: exit 1 naming the lot."""
    with_key(tmp_path)
    path = write(tmp_path, config_text(tmp_path, cloud=t002_cloud(), lots=standard_lot("P001", "u1")))
    assert_one_problem(*check(capsys, path), f"{path}: lot[0].upstream_username: required with sink 't002'")


def test_an_unset_secret_variable_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A secret read from an environment variable that is not set stops start-up: exit 1 naming it."""
    with_key(tmp_path)
    path = write(tmp_path, config_text(tmp_path, cloud='api_token = "env:CPMI_TEST_UNSET_TOKEN"'))
    assert_one_problem(
        *check(capsys, path),
        f"{path}: cloud.api_token: environment variable CPMI_TEST_UNSET_TOKEN is not set",
    )
