"""
Seal records: the gateway's Ed25519 signature over the journal's chain head (no I/O).

The chain (:mod:`gateway.journal.record`) shows that no record was altered,
inserted or removed between two records; it cannot show that records were cut
off the end, nor that someone rewrote a whole journal with a new chain. A seal
can: it is a record of kind ``seal`` whose body signs the seq and chain of the
record just before it::

    {"gateway": "gw-01", "seq": 41, "chain": "<32 hex>", "key": "<base64 public key>",
     "signature": "<base64 Ed25519 signature of seal_message(gateway, seq, chain)>"}

Whoever holds the gateway's public key (``cpmictl pubkey``) can check that
everything up to ``seq`` is what the gateway wrote. The key is in the body so
that a journal says which key sealed it; a checker that trusts the journal
alone can at least see that the key never changed.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

__all__ = ["check_seal", "seal_body", "seal_message"]


def seal_message(gateway: str, seq: int, chain: str) -> bytes:
    """The bytes a seal signs: a fixed label, the gateway id, the seq and the chain, a line each."""
    return f"cpmi-journal-seal\n{gateway}\n{seq}\n{chain}".encode()


def seal_body(key: SigningKey, gateway: str, seq: int, chain: str) -> dict[str, object]:
    """The body of a seal over the record ``seq`` whose chain is ``chain``."""
    signature = key.sign(seal_message(gateway, seq, chain)).signature
    return {
        "gateway": gateway,
        "seq": seq,
        "chain": chain,
        "key": base64.b64encode(bytes(key.verify_key)).decode("ascii"),
        "signature": base64.b64encode(signature).decode("ascii"),
    }


def check_seal(body: object, key: VerifyKey) -> str | None:
    """Why the seal ``body`` is not ``key``'s valid signature, or None when it is."""
    if not isinstance(body, Mapping):
        return "seal body is not an object"
    gateway, seq, chain, signature = (body.get(name) for name in ("gateway", "seq", "chain", "signature"))
    if not (isinstance(gateway, str) and type(seq) is int and isinstance(chain, str)):
        return "seal body lacks gateway, seq or chain"
    if not isinstance(signature, str):
        return "seal body lacks a signature"
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(seal_message(gateway, seq, chain), raw)
    except (binascii.Error, ValueError, BadSignatureError):
        return "seal signature does not verify with the public key"
    return None
