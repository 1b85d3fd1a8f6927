"""RFC 9421 request signatures and RFC 9530 content digests (gateway.cloud.httpsig)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey, VerifyKey

from gateway.cloud import httpsig
from gateway.cloud.httpsig import (
    SignatureParams,
    content_digest,
    parse_signature_input,
    sign_request,
    signature_base,
    verify_request,
)
from gateway.keys import parse_public_key_b64, public_key_b64

KEY = SigningKey(bytes(range(32)))
OTHER_KEY = SigningKey(bytes(range(1, 33)))
URI = "https://cloud.example/v1/events?batch=1"
BODY = b'[{"specversion":"1.0","id":"gw-01-7"}]'
CREATED = 1732440000
PARAMS = '("@method" "@target-uri" "content-digest");created=1732440000;keyid="gw-01";alg="ed25519"'

# RFC 9421 Appendix B.1.4 test-key-ed25519 (JWK "d" and "x", base64url).
RFC_ED25519_D = "n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU"
RFC_ED25519_X = "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs"


def _headers(**overrides: str) -> dict[str, str]:
    signed = sign_request("POST", URI, BODY, key=KEY, keyid="gw-01", created=CREATED)
    headers = signed.as_dict()
    headers.update(overrides)
    return headers


def _verify(
    headers: dict[str, str],
    *,
    method: str = "POST",
    uri: str = URI,
    body: bytes = BODY,
    key: VerifyKey = KEY.verify_key,
) -> bool:
    return verify_request(method, uri, body, headers, key)


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_content_digest_of_empty_body() -> None:
    """The empty body's digest is the base64 SHA-256 of no bytes, in sf-binary colons."""
    expected = base64.b64encode(hashlib.sha256(b"").digest()).decode()
    assert content_digest(b"") == f"sha-256=:{expected}:"
    assert content_digest(b"") == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"


def test_content_digest_of_known_body() -> None:
    """A body's digest matches an independent hashlib/base64 computation."""
    expected = base64.b64encode(hashlib.sha256(BODY).digest()).decode()
    assert content_digest(BODY) == f"sha-256=:{expected}:"


def test_content_digest_rfc9530_example() -> None:
    """RFC 9530's example: the 18-byte body {"hello": "world"} (no newline).

    With a trailing newline (19 bytes, as in RFC 9421's test request) the
    digest is a different, also-known value.
    """
    assert content_digest(b'{"hello": "world"}') == "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    assert content_digest(b'{"hello": "world"}\n') == "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:"


def test_signature_params_serialization() -> None:
    """The Signature-Input parameters are serialized in the documented fixed form."""
    assert httpsig.signature_params(created=CREATED, keyid="gw-01") == PARAMS


def test_signature_base_exact_bytes() -> None:
    """The base is RFC 9421 §2.5 exactly: LF-joined lines, no trailing newline."""
    digest = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    expected = (
        b'"@method": POST\n'
        b'"@target-uri": https://cloud.example/v1/events?batch=1\n'
        b'"content-digest": sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:\n'
        b'"@signature-params": ("@method" "@target-uri" "content-digest");created=1732440000;'
        b'keyid="gw-01";alg="ed25519"'
    )
    assert signature_base("POST", URI, digest, PARAMS) == expected


def test_signed_headers_shape() -> None:
    """sign_request's headers have the documented shapes and sign the documented base."""
    signed = sign_request("POST", URI, BODY, key=KEY, keyid="gw-01", created=CREATED)
    assert signed.content_digest == content_digest(BODY)
    assert signed.signature_input == "sig1=" + PARAMS
    assert signed.signature.startswith("sig1=:") and signed.signature.endswith(":")
    raw = base64.b64decode(signed.signature[len("sig1=:") : -1], validate=True)
    assert len(raw) == 64
    base = signature_base("POST", URI, content_digest(BODY), PARAMS)
    assert KEY.verify_key.verify(base, raw) == base


def test_sign_is_deterministic() -> None:
    """Same inputs, same headers: created comes from the caller, Ed25519 is deterministic."""
    first = sign_request("POST", URI, BODY, key=KEY, keyid="gw-01", created=CREATED)
    second = sign_request("POST", URI, BODY, key=KEY, keyid="gw-01", created=CREATED)
    assert first == second


def test_sign_then_verify() -> None:
    """A signed request verifies, with header names in any case."""
    headers = _headers()
    assert _verify(headers)
    assert _verify({name.lower(): value for name, value in headers.items()})
    assert _verify({name.upper(): value for name, value in headers.items()})


def test_verify_with_key_from_public_key_b64() -> None:
    """The public key as printed by cpmictl pubkey verifies the signature."""
    assert _verify(_headers(), key=parse_public_key_b64(public_key_b64(KEY)))


@pytest.mark.parametrize(
    ("change", "kwargs"),
    [
        ("body", {"body": BODY + b" "}),
        ("empty body", {"body": b""}),
        ("method", {"method": "PUT"}),
        ("lower-case method", {"method": "post"}),
        ("uri", {"uri": "https://cloud.example/v1/events?batch=2"}),
        ("uri host", {"uri": "https://evil.example/v1/events?batch=1"}),
        ("other key", {"key": OTHER_KEY.verify_key}),
    ],
)
def test_verify_rejects_altered_request(change: str, kwargs: dict[str, object]) -> None:
    """Changing the body, method or URI, or verifying with another key, fails."""
    assert not _verify(_headers(), **kwargs)  # type: ignore[arg-type]


def test_verify_rejects_altered_body_with_matching_digest() -> None:
    """A new body with its own correct Content-Digest still fails: the digest is signed."""
    body = b"tampered"
    assert not _verify(_headers(**{"Content-Digest": content_digest(body)}), body=body)


@pytest.mark.parametrize(
    "signature_input",
    [
        "sig1=" + PARAMS.replace("created=1732440000", "created=1732440001"),
        "sig1=" + PARAMS.replace('keyid="gw-01"', 'keyid="gw-02"'),
        "sig1=" + PARAMS.replace('alg="ed25519"', 'alg="hmac-sha256"'),
        "sig1=" + PARAMS.replace('"@method" "@target-uri"', '"@target-uri" "@method"'),
        "sig2=" + PARAMS,
        PARAMS,
        "",
    ],
)
def test_verify_rejects_altered_signature_input(signature_input: str) -> None:
    """Changing created, keyid, alg, component order or label fails."""
    assert not _verify(_headers(**{"Signature-Input": signature_input}))


def test_verify_rejects_altered_signature() -> None:
    """A flipped signature bit, a bad label, bad base64 or a short signature fails."""
    signature = _headers()["Signature"]
    raw = bytearray(base64.b64decode(signature[len("sig1=:") : -1]))
    raw[0] ^= 1
    flipped = "sig1=:" + base64.b64encode(bytes(raw)).decode() + ":"
    for bad in (
        flipped,
        signature.replace("sig1=", "sig2="),
        signature[:-1],
        "sig1=:!!!!:",
        "sig1=:" + base64.b64encode(bytes(raw[:32])).decode() + ":",
    ):
        assert not _verify(_headers(Signature=bad)), bad


def test_verify_rejects_missing_headers() -> None:
    """Each of the three headers is required."""
    for name in ("Content-Digest", "Signature-Input", "Signature"):
        headers = _headers()
        del headers[name]
        assert not _verify(headers), name


def test_verify_rejects_wrong_content_digest_header() -> None:
    """A Content-Digest that does not match the body fails."""
    assert not _verify(_headers(**{"Content-Digest": content_digest(b"other")}))


def test_keyid_with_quote_and_backslash_round_trips() -> None:
    """A keyid needing sf-string escapes is escaped, parsed back and verifies."""
    keyid = 'gw "a" \\ b'
    signed = sign_request("POST", URI, BODY, key=KEY, keyid=keyid, created=CREATED)
    assert 'keyid="gw \\"a\\" \\\\ b"' in signed.signature_input
    assert parse_signature_input(signed.signature_input) == SignatureParams(created=CREATED, keyid=keyid)
    assert verify_request("POST", URI, BODY, signed.as_dict(), KEY.verify_key)


def test_parse_signature_input() -> None:
    """created and keyid are read back from a Signature-Input value; other shapes give None."""
    assert parse_signature_input("sig1=" + PARAMS) == SignatureParams(created=CREATED, keyid="gw-01")
    assert parse_signature_input("sig1=" + PARAMS + ';nonce="x"') is None
    assert parse_signature_input("sig1=" + PARAMS.replace("=1732440000", "=01732440000")) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "post"}, "method"),
        ({"method": "PO ST"}, "method"),
        ({"uri": "https://a.example/ x"}, "target URI"),
        ({"uri": "https://a.example/\r\nx"}, "target URI"),
        ({"uri": ""}, "target URI"),
        ({"keyid": "gw\n01"}, "keyid"),
        ({"keyid": "gw-é"}, "keyid"),
        ({"created": -1}, "created"),
        ({"created": 10**15}, "created"),
    ],
)
def test_sign_rejects_unsignable_input(kwargs: dict[str, object], message: str) -> None:
    """Values that cannot be put in a header line or the base raise ValueError."""
    args: dict[str, object] = {"method": "POST", "uri": URI, "keyid": "gw-01", "created": CREATED}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        sign_request(
            args["method"],  # type: ignore[arg-type]
            args["uri"],  # type: ignore[arg-type]
            BODY,
            key=KEY,
            keyid=args["keyid"],  # type: ignore[arg-type]
            created=args["created"],  # type: ignore[arg-type]
        )


def test_verify_never_raises_on_bad_request_line() -> None:
    """verify_request returns False, not an exception, for an unsignable method or URI."""
    assert not _verify(_headers(), method="PO ST")
    assert not _verify(_headers(), uri="https://a.example/\nx")


def test_rfc9421_b26_ed25519_test_vector() -> None:
    """RFC 9421 Appendix B.2.6: test-key-ed25519 over the published base gives the published signature.

    Checks our base layout (_base_from_lines) and Ed25519 signing against the
    RFC's own example, which covers different components than ours.
    """
    key = SigningKey(_b64url(RFC_ED25519_D))
    assert bytes(key.verify_key) == _b64url(RFC_ED25519_X)
    params = (
        '("date" "@method" "@path" "@authority" "content-type" "content-length")'
        ';created=1618884473;keyid="test-key-ed25519"'
    )
    base = httpsig._base_from_lines(
        [
            ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
            ("@method", "POST"),
            ("@path", "/foo"),
            ("@authority", "example.com"),
            ("content-type", "application/json"),
            ("content-length", "18"),
        ],
        params,
    )
    assert base == (
        b'"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
        b'"@method": POST\n'
        b'"@path": /foo\n'
        b'"@authority": example.com\n'
        b'"content-type": application/json\n'
        b'"content-length": 18\n'
        b'"@signature-params": ("date" "@method" "@path" "@authority" "content-type" "content-length")'
        b';created=1618884473;keyid="test-key-ed25519"'
    )
    signature = base64.b64encode(key.sign(base).signature).decode()
    assert signature == (
        "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw=="
    )


_URI_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


@given(
    body=st.binary(max_size=2048),
    path=st.text(_URI_CHARS, max_size=80),
    method=st.sampled_from(["POST", "PUT", "GET", "PATCH", "DELETE"]),
    created=st.integers(min_value=0, max_value=10**15 - 1),
    keyid=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
)
def test_sign_verify_round_trip(body: bytes, path: str, method: str, created: int, keyid: str) -> None:
    """Any body, URI, method, created and printable keyid round-trip sign -> verify."""
    uri = "https://cloud.example/" + path
    signed = sign_request(method, uri, body, key=KEY, keyid=keyid, created=created)
    assert verify_request(method, uri, body, signed.as_dict(), KEY.verify_key)
    assert parse_signature_input(signed.signature_input) == SignatureParams(created=created, keyid=keyid)
    assert not verify_request(method, uri, body + b"x", signed.as_dict(), KEY.verify_key)
