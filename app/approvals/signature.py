"""Signed approval webhooks: `X-Signature-256: sha256=<hex HMAC-SHA256 of "{timestamp}.{raw body}">`
with `X-Signature-Timestamp: <unix seconds>`, as Stripe and Slack sign theirs.

The timestamp is inside the signed text, so an old delivery cannot be replayed with a fresh
timestamp, and a delivery older (or newer) than the tolerance is refused: a captured request is
worthless after five minutes. Digests are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-Signature-256"
TIMESTAMP_HEADER = "X-Signature-Timestamp"
PREFIX = "sha256="
TOLERANCE_SECONDS = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Signature-256 value for `body` sent at `timestamp` (what a sender or agentctl puts)."""
    signed = str(timestamp).encode() + b"." + body
    return PREFIX + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signed_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Both headers of a delivery of `body`, signed now (or at `timestamp`)."""
    at = int(time.time()) if timestamp is None else timestamp
    return {TIMESTAMP_HEADER: str(at), HEADER: sign(secret, at, body)}


def verify(
    secret: str, body: bytes, header: str | None, timestamp_header: str | None, now: float | None = None
) -> str | None:
    """None for a valid, fresh signature; otherwise what is wrong with it, for the 401."""
    if not timestamp_header or not timestamp_header.strip().isdigit():
        return f"missing or malformed {TIMESTAMP_HEADER} (unix seconds)"
    timestamp = int(timestamp_header.strip())
    current = time.time() if now is None else now
    if abs(current - timestamp) > TOLERANCE_SECONDS:
        return f"{TIMESTAMP_HEADER} is outside the {TOLERANCE_SECONDS // 60}-minute window"
    if not header or not header.strip().startswith(PREFIX):
        return f"missing or malformed {HEADER}"
    if not hmac.compare_digest(sign(secret, timestamp, body), header.strip()):
        return f"{HEADER} does not match the body and timestamp"
    return None
