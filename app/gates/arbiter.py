"""`ApprovalGate`: one virtual object per gated task, the single arbiter of how a gate ends.

The task's own object is locked while its exclusive `run` waits, so it cannot take a decision
itself; and a decision checked in a shared handler could race the deadline. Here `decide` and
`expire` are exclusive handlers of the same key, so exactly one of them closes the gate: a
decision answered "recorded" is never lost to a timeout that fires at the same moment, and a
decision that arrives after the deadline is refused with 409 instead of being dropped silently.

The whole object is `ingress_private`: only the agents' handlers reach it, so nobody can open,
expire, escalate or read a gate (its state holds the task's awakeable id) from the ingress. A
decision reaches `decide` only through an agent's public `decide`, after its proof was checked.
"""

from __future__ import annotations

from datetime import timedelta

from restate import ObjectContext, TerminalError, VirtualObject
from restate.serde import BytesSerde

from app.gates.models import (
    AttachTicket,
    DecideInput,
    Decision,
    Empty,
    Escalation,
    GateReply,
    GateState,
    PendingApproval,
    Rearm,
)

GATE = "gate"
# What the arbiter resolves a task's awakeable with. The task never trusts the awakeable's value
# (anyone holding its id could resolve it): it asks the arbiter what was decided.
WAKE = b"decided"

approval_gate = VirtualObject(
    "ApprovalGate",
    description="Arbiter of one task's approval gate: open, decide, expire, close. Internal.",
    journal_retention=timedelta(days=7),
    ingress_private=True,
)


def gate_key(agent: str, task_id: str) -> str:
    return f"{agent}/{task_id}"


def _reply(state: GateState | None) -> GateReply:
    if state is None:
        return GateReply(status="missing")
    return GateReply(status=state.status, decision=state.decision)


@approval_gate.handler()
async def open_gate(ctx: ObjectContext, pending: PendingApproval) -> GateReply:
    """Open the gate for a waiting task (replacing a closed one of an earlier visit)."""
    ctx.set(GATE, GateState(status="open", pending=pending))
    return GateReply(status="open")


@approval_gate.handler()
async def attach_ticket(ctx: ObjectContext, ticket: AttachTicket) -> GateReply:
    """Record the approval ticket the task opened, so the approvals list can show it."""
    state = await ctx.get(GATE, type_hint=GateState)
    if state is not None and state.status == "open" and state.pending.approval_hash == ticket.approval_hash:
        pending = state.pending.model_copy(update={"approval_ticket_id": ticket.approval_ticket_id})
        ctx.set(GATE, state.model_copy(update={"pending": pending}))
    return _reply(state)


@approval_gate.handler()
async def decide(ctx: ObjectContext, request: DecideInput) -> GateReply:
    """Validate a decision against the open gate, record it, and wake the waiting task."""
    state = await ctx.get(GATE, type_hint=GateState)
    if state is None:
        raise TerminalError(f"task {ctx.key()} is not waiting for an approval", status_code=409)
    if state.status != "open":
        earlier = state.decision
        how = f"{earlier.decision} by {earlier.approver}" if earlier else state.status
        raise TerminalError(f"the approval of {ctx.key()} is already closed ({how})", status_code=409)
    if request.approval_hash != state.pending.approval_hash:
        raise TerminalError(
            f"stale approval_hash: task {ctx.key()} is waiting for approval of "
            f"{state.pending.approval_hash}, not {request.approval_hash}",
            status_code=409,
        )
    if request.approver not in state.pending.approvers:
        raise TerminalError(
            f"{request.approver} may not decide this approval; "
            f"approvers: {', '.join(state.pending.approvers)}",
            status_code=403,
        )
    decision = Decision(
        decision=request.decision,
        approver=request.approver,
        comment=request.comment,
        approval_hash=request.approval_hash,
        decided_at=await ctx.time(),
    )
    closed = state.model_copy(
        update={"status": "approved" if request.decision == "approve" else "rejected", "decision": decision}
    )
    ctx.set(GATE, closed)
    ctx.resolve_awakeable(state.pending.awakeable_id, WAKE, serde=BytesSerde())
    return GateReply(status=closed.status, decision=decision)


@approval_gate.handler()
async def take_outcome(ctx: ObjectContext, _: Empty) -> GateReply:
    """The task was woken: the decision if one was recorded (and forget the gate); else `open`.

    `open` means the wake did not come from `decide`: someone resolved the task's awakeable
    directly. The gate stays open, and the task re-arms it with a fresh awakeable.
    """
    state = await ctx.get(GATE, type_hint=GateState)
    if state is not None and state.status != "open":
        ctx.clear(GATE)
    return _reply(state)


@approval_gate.handler()
async def rearm(ctx: ObjectContext, request: Rearm) -> GateReply:
    """Point an open gate at the task's new awakeable; a closed gate answers its outcome instead."""
    state = await ctx.get(GATE, type_hint=GateState)
    if state is not None and state.status == "open":
        pending = state.pending.model_copy(update={"awakeable_id": request.awakeable_id})
        ctx.set(GATE, state.model_copy(update={"pending": pending}))
    return _reply(state)


@approval_gate.handler()
async def expire(ctx: ObjectContext, _: Empty) -> GateReply:
    """The deadline passed: close and forget the gate; a decision that got there first wins."""
    state = await ctx.get(GATE, type_hint=GateState)
    ctx.clear(GATE)
    if state is not None and state.status == "open":
        return GateReply(status="expired")
    return _reply(state)


@approval_gate.handler()
async def escalate(ctx: ObjectContext, escalation: Escalation) -> GateReply:
    """The reminder went out: mark it, and let the escalation approver decide too."""
    state = await ctx.get(GATE, type_hint=GateState)
    if state is None or state.status != "open":
        return _reply(state)
    approvers = list(state.pending.approvers)
    if escalation.approver and escalation.approver not in approvers:
        approvers.append(escalation.approver)
    pending = state.pending.model_copy(update={"reminded": True, "approvers": approvers})
    ctx.set(GATE, state.model_copy(update={"pending": pending}))
    return GateReply(status="open")


@approval_gate.handler()
async def close_gate(ctx: ObjectContext, _: Empty) -> GateReply:
    """The task cannot go on waiting (it failed): forget the gate, so nothing can decide it."""
    state = await ctx.get(GATE, type_hint=GateState)
    ctx.clear(GATE)
    return _reply(state)
