"""The approval types that cross the journal, the gate's state and the public decision surfaces."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DecisionKind = Literal["approve", "reject"]
GateStatus = Literal["open", "approved", "rejected", "expired"]
# What the arbiter answers; `missing`: no gate (never opened, or already closed and forgotten).
GateReplyStatus = Literal["open", "approved", "rejected", "expired", "missing"]
Outcome = Literal["approve", "reject", "timeout"]

APPROVER_PATTERN = r"^[A-Za-z0-9_.@:+-]+$"
HASH_PATTERN = r"^[0-9a-f]{64}$"
AGENT_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
SUBJECT_PATTERN = r"^[a-z_]+:[A-Za-z0-9_.:-]+$"
PROOF_MAX_LENGTH = 512


class ApprovalRequest(BaseModel):
    """What an agent asks a human to approve: a summary, the exact content, and who may decide."""

    summary: str
    details: dict[str, Any]
    approvers: list[str] | None = None  # None: the approvers from settings
    escalation_approver: str | None = None  # None: the escalation approver from settings
    # What the approval is of, as the tool service knows it (e.g. "expense:EXP-..."): its ledger
    # posts only what a ticket with that subject approved.
    subject: str | None = Field(None, max_length=128, pattern=SUBJECT_PATTERN)


def approval_hash(summary: str, details: dict[str, Any]) -> str:
    """The hash of exactly what is being approved; a decision must name it, so it cannot be stale."""
    canonical = json.dumps({"summary": summary, "details": details}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class GatePolicy(BaseModel):
    """The gate's timing and people, read from settings once per gate and journaled."""

    timeout_seconds: float
    reminder_before_seconds: float
    approvers: list[str]
    escalation_approver: str | None
    # When the policy was read (the gate opens then): the gate's clock without a journal entry of
    # its own.
    read_at: float = 0.0


class PendingApproval(BaseModel):
    """A gate that is waiting: kept in the task record (and, authoritative, in the gate object)."""

    agent: str
    task_id: str
    state: str
    awakeable_id: str
    summary: str
    details: dict[str, Any]
    approval_hash: str
    approvers: list[str]
    requested_at: float
    deadline: float
    reminder_at: float | None
    escalation_approver: str | None = None
    reminded: bool = False
    approval_ticket_id: str | None = None


class DecideInput(BaseModel):
    """A decision as the arbiter takes it: the approver is already authenticated."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    decision: DecisionKind
    approver: str = Field(min_length=1, max_length=128, pattern=APPROVER_PATTERN)
    comment: str | None = Field(None, max_length=2000)
    approval_hash: str = Field(pattern=HASH_PATTERN)


class ProvenDecision(DecideInput):
    """The agents' public `decide` input (design.md): a decision plus the proof the approvals
    surface minted for exactly it, after authenticating the approver (app/gates/proof.py)."""

    proof: str = Field(min_length=1, max_length=PROOF_MAX_LENGTH)

    def decide_input(self) -> DecideInput:
        return DecideInput.model_validate(self.model_dump(exclude={"proof"}))


class Decision(BaseModel):
    """A validated decision, as the gate resolves the awakeable with it."""

    decision: DecisionKind
    approver: str
    comment: str | None
    approval_hash: str
    decided_at: float


class GateState(BaseModel):
    """The arbiter's record for one gate: `open` until exactly one of decide or expire closes it."""

    status: GateStatus
    pending: PendingApproval
    decision: Decision | None = None


class GateReply(BaseModel):
    """What the gate answers `decide`, `expire` and `remind`: its status and decision, if any."""

    status: GateReplyStatus
    decision: Decision | None = None


class Escalation(BaseModel):
    approver: str | None


class AttachTicket(BaseModel):
    approval_hash: str
    approval_ticket_id: str


class Rearm(BaseModel):
    awakeable_id: str


class GateIntrusion(BaseModel):
    """A wake of a waiting task that did not come from the arbiter: refused, and kept on record."""

    state: str
    at: float
    how: Literal["resolved", "rejected"]
    detail: str


class Empty(BaseModel):
    """No input (Restate calls between handlers always carry one)."""


class ApprovalRecord(BaseModel):
    """How a gate ended, kept in the task record and shown by `status`."""

    state: str
    outcome: Outcome
    decision: DecisionKind | None
    approver: str | None
    comment: str | None
    decided_at: float
    approval_hash: str
    approval_ticket_id: str | None
    reminded: bool


class InboxDecision(BaseModel):
    """A decision from the inbox: no approver field, the approver is whoever signed in."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    agent: str = Field(pattern=AGENT_PATTERN)
    task_id: str = Field(min_length=1, max_length=256)
    decision: DecisionKind
    comment: str | None = Field(None, max_length=2000)
    approval_hash: str = Field(pattern=HASH_PATTERN)

    def decide_input(self, approver: str) -> DecideInput:
        return DecideInput(
            decision=self.decision, approver=approver, comment=self.comment, approval_hash=self.approval_hash
        )


class WebhookDecision(InboxDecision):
    """The approval webhook's body (design.md): a signed integration vouches for the approver."""

    approver: str = Field(min_length=1, max_length=128, pattern=APPROVER_PATTERN)
