"""Decision proofs: what the approvals surface attaches to a decision once it has authenticated it.

The agents' `decide` handlers are public on the Restate ingress, which anyone may reach; the
approver named in a decision is only as good as whoever checked it. So the approvals surface,
after verifying a signed webhook or an approver's personal credential, mints a proof: an
HMAC-SHA256 over exactly that decision (agent, task, decision, approver, comment, hash), an
expiry and a nonce. `decide` recomputes it and refuses (401) anything else. The key is derived
from APPROVAL_WEBHOOK_SECRET with a purpose label, so a proof is not a webhook signature and the
service needs no second secret; only the agent service (which serves both) holds it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time

from pydantic import BaseModel

from app.gates.models import DecideInput

VERSION = "v1"
# Long enough for Restate to deliver the call, short enough that a leaked proof is soon worthless.
PROOF_TTL_SECONDS = 300
_PURPOSE = b"durable-agents/decision-proof/v1"


class ProofCheck(BaseModel):
    """The journaled verdict on a proof (never the proof's key, which stays out of the journal)."""

    ok: bool
    reason: str | None = None


def proof_key(webhook_secret: str) -> bytes:
    return hmac.new(webhook_secret.encode(), _PURPOSE, hashlib.sha256).digest()


def _mac(key: bytes, agent: str, task_id: str, decision: DecideInput, expires: int, nonce: str) -> str:
    claims = {
        "agent": agent,
        "task_id": task_id,
        "decision": decision.decision,
        "approver": decision.approver,
        "comment": decision.comment,
        "approval_hash": decision.approval_hash,
        "expires": expires,
        "nonce": nonce,
    }
    canonical = json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def mint(key: bytes, agent: str, task_id: str, decision: DecideInput, now: float | None = None) -> str:
    """`v1.<expires>.<nonce>.<hex mac>` for exactly this decision on this task."""
    expires = int(now if now is not None else time.time()) + PROOF_TTL_SECONDS
    nonce = secrets.token_hex(8)
    return f"{VERSION}.{expires}.{nonce}.{_mac(key, agent, task_id, decision, expires, nonce)}"


def check(
    key: bytes, proof: str, agent: str, task_id: str, decision: DecideInput, now: float | None = None
) -> ProofCheck:
    """Whether `proof` was minted for exactly this decision and has not expired."""
    parts = proof.split(".")
    if len(parts) != 4 or parts[0] != VERSION or not parts[1].isdigit():
        return ProofCheck(ok=False, reason="the decision proof is malformed")
    expires, nonce, mac = int(parts[1]), parts[2], parts[3]
    if not hmac.compare_digest(mac, _mac(key, agent, task_id, decision, expires, nonce)):
        return ProofCheck(ok=False, reason="the decision proof does not match this decision")
    if expires < (now if now is not None else time.time()):
        return ProofCheck(ok=False, reason="the decision proof has expired")
    return ProofCheck(ok=True)
