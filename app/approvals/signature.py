"""HMAC-SHA256 signatures of approval webhooks (`X-Signature-256: sha256=<hex>`), as GitHub signs them."""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Signature-256"
PREFIX = "sha256="


def sign(secret: str, body: bytes) -> str:
    """The header value for `body`: what a sender (or `agentctl approve`) puts in X-Signature-256."""
    return PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """True only for a well-formed header whose digest matches the raw body (constant-time compare)."""
    if not header or not header.startswith(PREFIX):
        return False
    return hmac.compare_digest(sign(secret, body), header.strip())
