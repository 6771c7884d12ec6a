"""How a task waits at an approval gate: an awakeable raced against durable timers.

Entering the gate opens the arbiter (`ApprovalGate`), records the pending approval in the task,
and sends the request through a journaled, idempotent tool call (ticket + notifications). The
task then suspends, costing no worker memory, until a decision or the reminder time; the
reminder goes out once (its tool call is journaled under a derived key, so a replay never sends
it again), optionally escalating; at the deadline the gate expires unless a decision won the
race at the arbiter. Whatever the outcome, the ticket is closed through the tool service, so
nothing is left waiting anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import restate
from restate import ObjectContext, RestateDurableFuture, RunOptions, TerminalError

from app.approvals.gate import close_gate, escalate, expire, gate_key, open_gate
from app.approvals.models import (
    ApprovalRecord,
    ApprovalRequest,
    Decision,
    Empty,
    Escalation,
    GatePolicy,
    Outcome,
    PendingApproval,
    approval_hash,
)
from app.settings import get_settings
from app.tool_client import ToolResult

# Tools the gate itself calls; never offered to a planner, so a model cannot open or close gates.
GATE_TOOLS = frozenset({"request_approval", "remind_approval", "close_approval"})
REMINDER_SUMMARY_CHARS = 1500
# The approver named when a decision that bypassed the arbiter is refused.
GATE_GUARD = "system:gate-guard"


class GateStep(Protocol):
    """The part of the engine's step context a gate needs."""

    ctx: ObjectContext
    agent: str
    task_id: str
    state: str

    async def call_tool(self, name: str, args: dict[str, Any]) -> ToolResult: ...


def read_gate_policy(approvers: list[str] | None, escalation_approver: str | None) -> GatePolicy:
    """Settings as they are now; journaled, so a restart with other settings never changes a gate.

    The agent's own approvers (e.g. from expense routing) win over the settings' defaults.
    """
    settings = get_settings()
    return GatePolicy(
        timeout_seconds=settings.approval_timeout_seconds,
        reminder_before_seconds=settings.approval_reminder_before_seconds,
        approvers=list(dict.fromkeys(approvers or settings.approvers)),
        escalation_approver=escalation_approver or settings.approval_escalation_approver,
    )


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


async def await_gate(
    step: GateStep, request: ApprovalRequest, persist: Callable[[PendingApproval | None], None]
) -> tuple[Outcome, ApprovalRecord]:
    """Open the gate, wait for its outcome, close everything; `persist` saves the pending record."""
    ctx = step.ctx
    policy = await ctx.run_typed(
        f"{step.state} gate policy",
        read_gate_policy,
        RunOptions(type_hint=GatePolicy),
        approvers=request.approvers,
        escalation_approver=request.escalation_approver,
    )
    now = await ctx.time()
    awakeable_id, decided = ctx.awakeable(type_hint=Decision)
    deadline = now + policy.timeout_seconds
    before = policy.reminder_before_seconds
    pending = PendingApproval(
        agent=step.agent,
        task_id=step.task_id,
        state=step.state,
        awakeable_id=awakeable_id,
        summary=request.summary,
        details=request.details,
        approval_hash=approval_hash(request.summary, request.details),
        approvers=policy.approvers,
        requested_at=now,
        deadline=deadline,
        reminder_at=deadline - before if 0 < before < policy.timeout_seconds else None,
        escalation_approver=policy.escalation_approver,
    )
    key = gate_key(step.agent, step.task_id)
    await ctx.object_call(open_gate, key=key, arg=pending)
    persist(pending)
    try:
        return await _wait_and_close(step, pending, decided, key, now, persist)
    except TerminalError:
        # The gate cannot end normally (a refused tool call): close what it opened, so no approval
        # is left waiting for a task that has failed, then let the task fail.
        await ctx.object_call(close_gate, key=key, arg=Empty())
        persist(None)
        raise


async def _wait_and_close(
    step: GateStep,
    pending: PendingApproval,
    decided: RestateDurableFuture[Decision],
    key: str,
    now: float,
    persist: Callable[[PendingApproval | None], None],
) -> tuple[Outcome, ApprovalRecord]:
    ctx = step.ctx
    ticket = await step.call_tool(
        "request_approval",
        {
            "agent": step.agent,
            "task_id": step.task_id,
            "approval_hash": pending.approval_hash,
            "summary": pending.summary,
            "approvers": pending.approvers,
            "deadline": _iso(pending.deadline),
        },
    )
    pending = pending.model_copy(update={"approval_ticket_id": ticket.result["approval_ticket_id"]})
    persist(pending)

    decision: Decision | None = None
    if pending.reminder_at is not None:
        match await restate.select(
            decision=decided, reminder=ctx.sleep(timedelta(seconds=pending.reminder_at - now))
        ):
            case ["decision", value]:
                decision = value
            case _:
                pending = await _remind(step, pending, key)
                persist(pending)
    if decision is None:
        remaining = max(0.0, pending.deadline - await ctx.time())
        match await restate.select(decision=decided, timeout=ctx.sleep(timedelta(seconds=remaining))):
            case ["decision", value]:
                decision = value
            case _:
                # The arbiter closes the gate, unless a decision reached it first: then that wins.
                decision = (await ctx.object_call(expire, key=key, arg=Empty())).decision
    recorded = (await ctx.object_call(close_gate, key=key, arg=Empty())).decision
    if decision is not None and decision != recorded:
        # The awakeable was resolved without passing the arbiter (straight through Restate's
        # ingress with its id): no hash or approver check was made, so it approves nothing.
        decision = Decision(
            decision="reject",
            approver=GATE_GUARD,
            comment=f"refused: a decision by {decision.approver!r} bypassed the approval gate",
            approval_hash=pending.approval_hash,
            decided_at=await ctx.time(),
        )

    outcome: Outcome = "timeout" if decision is None else decision.decision
    await step.call_tool(
        "close_approval",
        {
            "approval_ticket_id": pending.approval_ticket_id,
            "outcome": {"approve": "approved", "reject": "rejected", "timeout": "expired"}[outcome],
            "decided_by": decision.approver if decision else None,
            "comment": decision.comment if decision else None,
        },
    )
    persist(None)
    record = ApprovalRecord(
        state=step.state,
        outcome=outcome,
        decision=decision.decision if decision else None,
        approver=decision.approver if decision else None,
        comment=decision.comment if decision else None,
        decided_at=decision.decided_at if decision else await ctx.time(),
        approval_hash=pending.approval_hash,
        approval_ticket_id=pending.approval_ticket_id,
        reminded=pending.reminded,
    )
    return outcome, record


async def _remind(step: GateStep, pending: PendingApproval, key: str) -> PendingApproval:
    recipients = list(pending.approvers)
    if pending.escalation_approver and pending.escalation_approver not in recipients:
        recipients.append(pending.escalation_approver)
    await step.call_tool(
        "remind_approval",
        {
            "approval_ticket_id": pending.approval_ticket_id,
            "recipients": recipients,
            "message": (
                f"Reminder: {pending.agent} {pending.task_id} is waiting for your approval until "
                f"{_iso(pending.deadline)}: {pending.summary[:REMINDER_SUMMARY_CHARS]}"
            ),
        },
    )
    await step.ctx.object_call(escalate, key=key, arg=Escalation(approver=pending.escalation_approver))
    return pending.model_copy(update={"reminded": True, "approvers": recipients})
