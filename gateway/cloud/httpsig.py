"""HTTP Message Signatures (RFC 9421) for the gateway's requests to the cloud.

Every request the gateway sends to the cloud (CONTRACT §6) carries three
headers:

    Content-Digest: sha-256=:<base64 of SHA-256 of the body>:          (RFC 9530)
    Signature-Input: sig1=("@method" "@target-uri" "content-digest")
        ;created=<unix time>;keyid="<gateway id>";alg="ed25519"
    Signature: sig1=:<base64 of the 64-byte Ed25519 signature>:

The signature is the gateway's Ed25519 key over the signature base of
RFC 9421 §2.5, one line per covered component followed by the
``@signature-params`` line, joined by a single LF with no trailing newline:

    "@method": POST
    "@target-uri": https://cloud.example/events
    "content-digest": sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:
    "@signature-params": ("@method" "@target-uri" "content-digest");created=1732440000;keyid="gw-01";alg=...

(the header values are each one line; they are wrapped and cut here only
for width: the last line ends ``alg="ed25519"``).

The component order is fixed. ``@method`` is the method exactly as sent,
which must be an upper-case token (``POST``); ``@target-uri`` is the full
absolute URI as sent. ``created`` comes from the caller (the reactor's
clock), never from the wall clock here: the module is sans-IO and
deterministic.

A cloud checks a request by recomputing the body's digest, comparing it with
``Content-Digest``, rebuilding the base from ``Signature-Input`` and verifying
``Signature`` with the gateway's public key (``cpmictl pubkey``);
:func:`verify_request` does exactly that and documents the check. It accepts
only the shape :func:`sign_request` produces (a single ``sig1`` member with
these three components and these parameters, in this order); anything else
is ``False``. It does not judge ``created`` freshness or ``keyid``: callers
that want a replay window or a key lookup read them from
:func:`parse_signature_input`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping

from attrs import frozen
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

__all__ = [
    "ALG",
    "LABEL",
    "SignatureParams",
    "SignedHeaders",
    "content_digest",
    "parse_signature_input",
    "sign_request",
    "signature_base",
    "signature_params",
    "verify_request",
]

LABEL = "sig1"
ALG = "ed25519"
COMPONENTS = ("@method", "@target-uri", "content-digest")
_INNER_LIST = "(" + " ".join(f'"{c}"' for c in COMPONENTS) + ")"

# RFC 9110 token characters; the method must be upper case on top of that.
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Z-]+")
# RFC 8941 sf-integer: at most 15 digits.
_MAX_CREATED = 999_999_999_999_999
# RFC 8941 sf-string: printable ASCII, with '"' and '\' escaped by '\'.
_SF_STRING_BODY = r'(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*'
_PARAMS = re.compile(
    re.escape(_INNER_LIST) + r';created=(0|[1-9][0-9]{0,14});keyid="(' + _SF_STRING_BODY + r')";alg="ed25519"'
)
_SIGNATURE = re.compile(re.escape(LABEL) + r"=:([A-Za-z0-9+/=]*):")
_SIGNATURE_BYTES = 64


@frozen
class SignedHeaders:
    """The three header values to add to a signed request.

    ``content_digest`` goes in ``Content-Digest``, ``signature_input`` in
    ``Signature-Input`` and ``signature`` in ``Signature``.
    """

    content_digest: str
    signature_input: str
    signature: str

    def as_dict(self) -> dict[str, str]:
        """The headers by their canonical names."""
        return {
            "Content-Digest": self.content_digest,
            "Signature-Input": self.signature_input,
            "Signature": self.signature,
        }


@frozen
class SignatureParams:
    """The parameters read from a ``Signature-Input`` value."""

    created: int
    keyid: str


def content_digest(body: bytes) -> str:
    """The RFC 9530 ``Content-Digest`` value of ``body``: ``sha-256=:<base64>:``."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


def signature_params(*, created: int, keyid: str) -> str:
    """The serialized signature parameters (the Signature-Input value after ``sig1=``).

    Raises ValueError when ``created`` is not a non-negative sf-integer or
    ``keyid`` has characters an sf-string cannot hold (non-printable or
    non-ASCII).
    """
    if isinstance(created, bool) or not isinstance(created, int) or not 0 <= created <= _MAX_CREATED:
        raise ValueError(f"created must be an integer between 0 and {_MAX_CREATED}, not {created!r}")
    if any(not 0x20 <= ord(ch) <= 0x7E for ch in keyid):
        raise ValueError(f"keyid must be printable ASCII: {keyid!r}")
    quoted = keyid.replace("\\", "\\\\").replace('"', '\\"')
    return f'{_INNER_LIST};created={created};keyid="{quoted}";alg="{ALG}"'


def parse_signature_input(value: str) -> SignatureParams | None:
    """Read ``created`` and ``keyid`` from a Signature-Input value we would produce.

    Returns None for anything but ``sig1=`` followed by exactly the
    parameters :func:`signature_params` writes.
    """
    prefix = LABEL + "="
    if not value.startswith(prefix):
        return None
    match = _PARAMS.fullmatch(value[len(prefix) :])
    if match is None:
        return None
    keyid = re.sub(r"\\(.)", r"\1", match.group(2))
    return SignatureParams(created=int(match.group(1)), keyid=keyid)


def signature_base(method: str, target_uri: str, content_digest: str, params: str) -> bytes:
    """The RFC 9421 §2.5 signature base over our three components.

    ``params`` is the serialized signature parameters (see
    :func:`signature_params`). Raises ValueError when ``method`` is not an
    upper-case token or any value holds characters that cannot appear in a
    header line (controls, non-ASCII; spaces too for the URI).
    """
    if not _METHOD.fullmatch(method):
        raise ValueError(f"method must be an upper-case HTTP token: {method!r}")
    if not target_uri or any(not 0x21 <= ord(ch) <= 0x7E for ch in target_uri):
        raise ValueError(f"target URI must be non-empty visible ASCII: {target_uri!r}")
    for name, value in (("content-digest", content_digest), ("@signature-params", params)):
        if any(not 0x20 <= ord(ch) <= 0x7E for ch in value):
            raise ValueError(f"{name} must be printable ASCII: {value!r}")
    return _base_from_lines(
        [("@method", method), ("@target-uri", target_uri), ("content-digest", content_digest)], params
    )


def _base_from_lines(components: list[tuple[str, str]], params: str) -> bytes:
    """RFC 9421 §2.5: ``"name": value`` lines, then the ``@signature-params`` line, LF-joined."""
    lines = [f'"{name}": {value}' for name, value in components]
    lines.append(f'"@signature-params": {params}')
    return "\n".join(lines).encode("ascii")


def sign_request(
    method: str, target_uri: str, body: bytes, *, key: SigningKey, keyid: str, created: int
) -> SignedHeaders:
    """Sign a request; returns the Content-Digest, Signature-Input and Signature values.

    ``keyid`` is the gateway id; ``created`` is the Unix time from the
    caller's clock. Raises ValueError for a method, URI, keyid or created
    that cannot be signed (see :func:`signature_base`, :func:`signature_params`).
    """
    digest = content_digest(body)
    params = signature_params(created=created, keyid=keyid)
    base = signature_base(method, target_uri, digest, params)
    signature = key.sign(base).signature
    return SignedHeaders(
        content_digest=digest,
        signature_input=f"{LABEL}={params}",
        signature=f"{LABEL}=:" + base64.b64encode(signature).decode("ascii") + ":",
    )


def verify_request(
    method: str, target_uri: str, body: bytes, headers: Mapping[str, str], public_key: VerifyKey
) -> bool:
    """Whether the request carries a valid ``sig1`` signature by ``public_key``.

    Header names are matched case-insensitively. True only when
    ``Content-Digest`` equals the body's SHA-256 digest, ``Signature-Input``
    is ``sig1=`` with exactly our components and parameters, and
    ``Signature`` is ``sig1=:<base64>:`` holding an Ed25519 signature of the
    rebuilt base. Never raises for malformed input.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    digest = lowered.get("content-digest")
    signature_input = lowered.get("signature-input")
    signature_header = lowered.get("signature")
    if digest is None or signature_input is None or signature_header is None:
        return False
    if digest.strip() != content_digest(body):
        return False
    signature_input = signature_input.strip()
    if parse_signature_input(signature_input) is None:
        return False
    sig_match = _SIGNATURE.fullmatch(signature_header.strip())
    if sig_match is None:
        return False
    try:
        signature = base64.b64decode(sig_match.group(1), validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(signature) != _SIGNATURE_BYTES:
        return False
    try:
        base = signature_base(method, target_uri, digest.strip(), signature_input[len(LABEL) + 1 :])
    except ValueError:
        return False
    try:
        public_key.verify(base, signature)
    except BadSignatureError:
        return False
    return True
