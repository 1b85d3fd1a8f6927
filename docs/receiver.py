"""A minimal receiver for cpmi-gateway's signed CloudEvents batches (docs/cloud.md).

Usage: python3 docs/receiver.py URL PUBKEY

URL is the gateway's `cloud.url` exactly as configured: the gateway signs that URL, so a
receiver behind a proxy checks against it, not against the URL it sees. PUBKEY is what
`cpmictl pubkey conf/gateway.key` prints. For each POST on URL's port it checks that
Content-Digest is the body's SHA-256 and that the Ed25519 signature over the RFC 9421
signature base is the gateway's; then it prints a line per event and answers 204 (the whole
batch is acknowledged), else 401. A real receiver would also refuse stale `created` times and
drop events whose id it has seen. Needs PyNaCl (pip install pynacl).
"""

import base64
import hashlib
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlsplit

from nacl.signing import VerifyKey

URL, KEY = sys.argv[1], VerifyKey(base64.b64decode(sys.argv[2]))


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        digest = f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"
        params, sig = self.headers.get("Signature-Input", ""), self.headers.get("Signature", "")
        base = f'"@method": POST\n"@target-uri": {URL}\n"content-digest": {digest}\n"@signature-params": '
        try:  # params[5:] is what follows "sig1=", sig[6:-1] what is inside "sig1=:...:"
            KEY.verify((base + params[5:]).encode(), base64.b64decode(sig[6:-1], validate=True))
            ok = self.headers.get("Content-Digest") == digest
        except Exception:  # BadSignatureError, or a header that is missing or malformed
            ok = False
        for e in json.loads(body) if ok else []:
            print(e["id"], e["type"], e["source"], flush=True)
        self.send_error(204 if ok else 401)  # the status, Connection: close, for 401 a short page


HTTPServer(("", urlsplit(URL).port or 80), Receiver).serve_forever()
