"""`ApprovalGate`: one virtual object per gated task, the single arbiter of how a gate ends.

The task's own object is locked while its exclusive `run` waits, so it cannot take a decision
itself; and a decision checked in a shared handler could race the deadline. Here `decide` and
`expire` are exclusive handlers of the same key, so exactly one of them closes the gate: a
decision answered "recorded" is never lost to a timeout that fires at the same moment, and a
decision that arrives after the deadline is refused with 409 instead of being dropped silently.
"""

from __future__ import annotations

from datetime import timedelta

from restate import ObjectContext, ObjectSharedContext, TerminalError, VirtualObject

from app.approvals.models import (
    DecideInput,
    Decision,
    Empty,
    Escalation,
    GateReply,
    GateState,
    PendingApproval,
)

GATE = "gate"

approval_gate = VirtualObject(
    "ApprovalGate",
    description="Arbiter of one task's approval gate: open, decide, expire, close.",
    journal_retention=timedelta(days=7),
)


def gate_key(agent: str, task_id: str) -> str:
    return f"{agent}/{task_id}"


@approval_gate.handler()
async def open_gate(ctx: ObjectContext, pending: PendingApproval) -> GateReply:
    """Open the gate for a waiting task (replacing a closed one of an earlier visit)."""
    ctx.set(GATE, GateState(status="open", pending=pending))
    return GateReply(status="open")


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
    ctx.resolve_awakeable(state.pending.awakeable_id, decision)
    return GateReply(status=closed.status, decision=decision)


@approval_gate.handler()
async def expire(ctx: ObjectContext, _: Empty) -> GateReply:
    """The deadline passed: close the gate unless a decision got there first (then return it)."""
    state = await ctx.get(GATE, type_hint=GateState)
    if state is None:
        raise TerminalError(f"no approval gate for {ctx.key()}", status_code=409)
    if state.status == "open":
        state = state.model_copy(update={"status": "expired"})
        ctx.set(GATE, state)
    return GateReply(status=state.status, decision=state.decision)


@approval_gate.handler()
async def escalate(ctx: ObjectContext, escalation: Escalation) -> GateReply:
    """The reminder went out: mark it, and let the escalation approver decide too."""
    state = await ctx.get(GATE, type_hint=GateState)
    if state is None or state.status != "open":
        return GateReply(
            status=state.status if state else "expired", decision=state.decision if state else None
        )
    approvers = list(state.pending.approvers)
    if escalation.approver and escalation.approver not in approvers:
        approvers.append(escalation.approver)
    pending = state.pending.model_copy(update={"reminded": True, "approvers": approvers})
    ctx.set(GATE, state.model_copy(update={"pending": pending}))
    return GateReply(status="open")


@approval_gate.handler()
async def close_gate(ctx: ObjectContext, _: Empty) -> GateReply:
    """The task has taken the outcome: forget the gate, so a late decision finds nothing open."""
    state = await ctx.get(GATE, type_hint=GateState)
    ctx.clear(GATE)
    if state is None:
        return GateReply(status="expired")
    return GateReply(status=state.status, decision=state.decision)


@approval_gate.handler(kind="shared")
async def view(ctx: ObjectSharedContext) -> GateState | None:
    """The gate's current state, if one is open or awaiting its task."""
    return await ctx.get(GATE, type_hint=GateState)


async def decide_at_gate(ctx: ObjectSharedContext, agent: str, request: DecideInput) -> GateReply:
    """An agent's shared `decide` handler: hand the decision to the task's arbiter and wait for it.

    Returns once the gate has durably recorded the decision and woken the task; the arbiter's
    refusals (409 not waiting, already closed or stale hash; 403 not an approver) pass through.
    """
    return await ctx.object_call(decide, key=gate_key(agent, ctx.key()), arg=request)
