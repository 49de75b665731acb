"""Schemathesis hooks for the tidings REST API.

A REST API token is only valid for the URL it names (its `aud` claim), so
one static `Authorization` header cannot serve every generated request:
this provider signs a fresh HS256 token for each case, with the access key
from TIDINGS_ACCESS_KEY and the case's own URL.

Every case names the server's `test` hub (TIDINGS_HUB), so that generated
requests reach the operations' logic instead of stopping at "no such hub".
The hub is set here, before the URL is signed.
"""

import base64
import hashlib
import hmac
import json
import os
import time

import schemathesis


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rest_token(key: str, url: str, ttl: int = 60) -> str:
    now = int(time.time())
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = _b64(json.dumps({"aud": url, "iat": now, "exp": now + ttl}).encode())
    signing_input = f"{header}.{claims}".encode()
    signature = hmac.new(key.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{claims}.{_b64(signature)}"


def _invalid_path(case) -> bool:
    """Whether the case's path parameters were generated to break the
    schema: its hub is left as generated, so that the request is refused."""
    meta = getattr(case, "_meta", None)
    if meta is None:
        return False
    for location, info in meta.components.items():
        if str(getattr(location, "value", location)) == "path":
            return str(getattr(info.mode, "value", info.mode)) == "negative"
    return False


# No caching: every case has its own URL, hence its own token.
@schemathesis.auth(refresh_interval=None)
class PerRequestToken:
    def get(self, case, context):
        return os.environ["TIDINGS_ACCESS_KEY"]

    def set(self, case, data, context):
        if case.path_parameters and "hub" in case.path_parameters and not _invalid_path(case):
            case.path_parameters["hub"] = os.environ.get("TIDINGS_HUB", "test")
        url = os.environ["TIDINGS_URL"].rstrip("/") + case.formatted_path
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {rest_token(data, url)}"
