"""Ids derived from an Idempotency-Key, the one rule both services rely on.

The tool service names the row a request creates after the request's key, never at random, so a
re-execution after a crash creates the very same id and the database refuses a second row. The
agent service knows its own keys, so it knows such an id before the call returns: a gate's
arbiter is told its approval ticket when it opens, with no call after the ticket exists.
"""

from __future__ import annotations

import hashlib

# The approval ticket a gate's `request_approval` call opens is `APR-…` of that call's key.
APPROVAL_TICKET_PREFIX = "APR"


def derive_id(prefix: str, idempotency_key: str) -> str:
    """`{prefix}-` + 12 hex of sha256(key): the id of the row the request with that key creates."""
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()
    return f"{prefix}-{digest[:12]}"
