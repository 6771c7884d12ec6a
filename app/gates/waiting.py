"""How a task waits at an approval gate: an awakeable raced against durable timers.

Entering the gate is part of the transition into it (see `enter_gate`, called by the engine
before it writes the new state): the arbiter (`ApprovalGate`) is opened first, then the request
goes out through a journaled, idempotent tool call (ticket + notifications), and only then does
the task record say WAIT_APPROVAL, with its pending approval in the same write. So nobody is told
a task waits before a decision can be taken.

The task then suspends, costing no worker memory, until it is woken, the reminder time or the
deadline. A wake is never trusted by itself: anyone holding the awakeable's id can resolve or
reject it through Restate's ingress, so the task asks the arbiter what was decided. A wake the
arbiter did not send is recorded as an intrusion and the gate is re-armed with a fresh awakeable:
the task keeps waiting for a real decision. The reminder goes out once (journaled under a derived
key), optionally escalating; at the deadline the gate expires unless a decision won the race at
the arbiter. Whatever the outcome, the ticket is closed through the tool service.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import restate
from restate import ObjectContext, RestateDurableFuture, RunOptions, TerminalError
from restate.serde import BytesSerde

from app.gates.arbiter import (
    WAKE,
    attach_ticket,
    close_gate,
    escalate,
    expire,
    gate_key,
    open_gate,
    rearm,
    take_outcome,
)
from app.gates.models import (
    ApprovalRecord,
    ApprovalRequest,
    AttachTicket,
    Empty,
    Escalation,
    GateIntrusion,
    GatePolicy,
    GateReply,
    Outcome,
    PendingApproval,
    Rearm,
    approval_hash,
)
from app.settings import get_settings
from common.ids import APPROVAL_TICKET_PREFIX, derive_id

# Tools the gate itself calls; never offered to a planner, so a model cannot open or close gates.
GATE_TOOLS = frozenset({"request_approval", "remind_approval", "close_approval"})
# Tool calls made while entering a gate (request_approval); the wait's own calls number after them.
GATE_ENTRY_TOOL_CALLS = 1
REMINDER_SUMMARY_CHARS = 1500
INTRUSION_DETAIL_CHARS = 200

Wake = RestateDurableFuture[bytes]


@dataclass(frozen=True)
class Armed:
    """What wakes a task at the gate it entered in this invocation, and, if the caller has just
    read it from a journaled step, the time then (the wait needs no clock read of its own)."""

    woken: Wake
    at: float | None = None


class ToolAnswer(Protocol):
    """What a gate needs of a tool call's answer (the runtime's `ToolResult`)."""

    @property
    def result(self) -> dict[str, Any]: ...


class GateStep(Protocol):
    """The part of the engine's step context a gate needs (gates sit below the runtime)."""

    ctx: ObjectContext
    agent: str
    task_id: str
    state: str
    # The gate policy the task was seeded with (None for tasks created before it was), and the
    # end of the task's last journaled call in this invocation (None if none).
    gate_defaults: GatePolicy | None
    ended_at: float | None

    async def call_tool(self, name: str, args: dict[str, Any]) -> ToolAnswer: ...

    def next_idempotency_key(self) -> str:
        """The Idempotency-Key the next `call_tool` will send."""
        ...


def gate_defaults() -> GatePolicy:
    """The settings' gate policy as they are now. Read inside a journaled step (the task's seed,
    when it is created), so a restart with other settings never changes a task's gates."""
    settings = get_settings()
    return GatePolicy(
        timeout_seconds=settings.approval_timeout_seconds,
        reminder_before_seconds=settings.approval_reminder_before_seconds,
        approvers=list(dict.fromkeys(settings.approvers)),
        escalation_approver=settings.approval_escalation_approver,
        read_at=time.time(),
    )


def for_request(
    defaults: GatePolicy, approvers: list[str] | None, escalation_approver: str | None
) -> GatePolicy:
    """The policy of one gate: the agent's own approvers (e.g. from expense routing) win over the
    defaults. Pure, so it runs in the handler on journaled values."""
    return defaults.model_copy(
        update={
            "approvers": list(dict.fromkeys(approvers or defaults.approvers)),
            "escalation_approver": escalation_approver or defaults.escalation_approver,
        }
    )


def read_gate_policy(approvers: list[str] | None, escalation_approver: str | None) -> GatePolicy:
    """A gate's policy from the settings as they are now, for a task whose seed has none (created
    before tasks were seeded with it); journaled, as the seed is."""
    return for_request(gate_defaults(), approvers, escalation_approver)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


async def enter_gate(step: GateStep, request: ApprovalRequest) -> tuple[PendingApproval, Wake]:
    """Open the arbiter, then ask for the approval; the pending approval and what wakes the task."""
    ctx = step.ctx
    if step.gate_defaults is not None and step.ended_at is not None:
        # The task's seeded policy, and the time of its last journaled call (microseconds ago:
        # the step that decided to come here): no journaled step of its own.
        policy = for_request(step.gate_defaults, request.approvers, request.escalation_approver)
        now = step.ended_at
    else:
        policy = await ctx.run_typed(
            f"{step.state} gate policy",
            read_gate_policy,
            RunOptions(type_hint=GatePolicy),
            approvers=request.approvers,
            escalation_approver=request.escalation_approver,
        )
        now = policy.read_at
    awakeable_id, woken = ctx.awakeable(serde=BytesSerde())
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
        # The ticket the request below opens (its id is derived from the call's key): the arbiter
        # shows it from the start, with no call to tell it after the ticket exists.
        approval_ticket_id=derive_id(APPROVAL_TICKET_PREFIX, step.next_idempotency_key()),
        requested_at=now,
        deadline=deadline,
        reminder_at=deadline - before if 0 < before < policy.timeout_seconds else None,
        escalation_approver=policy.escalation_approver,
    )
    key = gate_key(step.agent, step.task_id)
    await ctx.object_call(open_gate, key=key, arg=pending)
    args: dict[str, Any] = {
        "agent": step.agent,
        "task_id": step.task_id,
        "approval_hash": pending.approval_hash,
        "summary": pending.summary,
        "approvers": pending.approvers,
        "deadline": _iso(pending.deadline),
    }
    if request.subject is not None:
        args["subject"] = request.subject
    try:
        ticket = await step.call_tool("request_approval", args)
    except TerminalError:
        # The request was refused: close what was opened, so nothing can decide a gate that no
        # one was asked about, then let the transition fail.
        await ctx.object_call(close_gate, key=key, arg=Empty())
        raise
    ticket_id = str(ticket.result["approval_ticket_id"])
    if ticket_id != pending.approval_ticket_id:
        # The gate already had an open ticket (asked under another key by an earlier visit): tell
        # the arbiter which. One-way: the task need not wait for it.
        ctx.object_send(
            attach_ticket,
            key=key,
            arg=AttachTicket(approval_hash=pending.approval_hash, approval_ticket_id=ticket_id),
        )
    return pending.model_copy(update={"approval_ticket_id": ticket_id}), woken


async def await_gate(
    step: GateStep,
    pending: PendingApproval,
    armed: Armed | None,
    persist: Callable[[PendingApproval | None], None],
    intruded: Callable[[GateIntrusion], None],
) -> tuple[Outcome, ApprovalRecord]:
    """Wait at an entered gate for its outcome, then close everything.

    `armed` is None when the gate was entered by an earlier invocation (a resumed task): the gate
    is then re-armed with a fresh awakeable. `persist` saves the pending record, `intruded` a
    refused wake. The pending approval is left to the caller to clear, with the transition that
    follows (one write, not two).
    """
    ctx = step.ctx
    key = gate_key(step.agent, step.task_id)
    try:
        decided: GateReply | None = None
        now: float | None = None
        if armed is None:
            woken, decided, pending = await _rearm(step, pending, key)
            persist(pending)
        else:
            woken, now = armed.woken, armed.at
        if decided is None:
            decided, pending = await _wait(step, pending, woken, key, persist, intruded, now)
    except TerminalError:
        # The gate cannot end normally (a refused tool call): close what it opened, so no approval
        # is left waiting for a task that has failed, then let the task fail.
        await ctx.object_call(close_gate, key=key, arg=Empty())
        persist(None)
        raise
    decision = decided.decision
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


async def _wait(
    step: GateStep,
    pending: PendingApproval,
    woken: Wake,
    key: str,
    persist: Callable[[PendingApproval | None], None],
    intruded: Callable[[GateIntrusion], None],
    now: float | None = None,
) -> tuple[GateReply, PendingApproval]:
    """Until the arbiter reports a decision or the deadline passes: its final reply. `now` is the
    time if the caller has just read it from the journal."""
    ctx = step.ctx
    if now is None:
        now = await ctx.time()
    deadline = ctx.sleep(timedelta(seconds=max(0.0, pending.deadline - now)))
    reminder = None
    if pending.reminder_at is not None and not pending.reminded:
        reminder = ctx.sleep(timedelta(seconds=max(0.0, pending.reminder_at - now)))
    while True:
        waiting: list[RestateDurableFuture[Any]] = [woken, deadline]
        if reminder is not None:
            waiting.append(reminder)
        completed, _ = await restate.wait_completed(*waiting)
        if woken in completed:
            wake = await _wake_of(woken)
            reply = await ctx.object_call(take_outcome, key=key, arg=Empty())
            if reply.status in ("approved", "rejected"):
                if wake is not None:
                    # A forged wake raced the real decision; the arbiter's record is what counts.
                    intruded(await _intrusion(step, wake))
                return reply, pending
            # Not the arbiter's wake: refuse it, record it, and keep waiting on a fresh awakeable.
            intruded(await _intrusion(step, wake or ("resolved", "with the arbiter's own value")))
            woken, decided, pending = await _rearm(step, pending, key)
            persist(pending)
            if decided is not None:
                return decided, pending
        elif reminder is not None and reminder in completed:
            reminder = None
            pending = await _remind(step, pending, key)
            persist(pending)
        else:
            # The arbiter closes the gate, unless a decision reached it first: then that wins.
            return await ctx.object_call(expire, key=key, arg=Empty()), pending


async def _wake_of(woken: Wake) -> tuple[str, str] | None:
    """None for the arbiter's own wake; else how the awakeable was completed, for the record."""
    try:
        value = await woken
    except TerminalError as exc:
        return "rejected", f"rejected with {exc.message[:INTRUSION_DETAIL_CHARS]!r}"
    if value == WAKE:
        return None
    return "resolved", f"resolved with {value[:INTRUSION_DETAIL_CHARS]!r}"


async def _intrusion(step: GateStep, wake: tuple[str, str]) -> GateIntrusion:
    how, detail = wake
    return GateIntrusion(
        state=step.state,
        at=await step.ctx.time(),
        how="rejected" if how == "rejected" else "resolved",
        detail=f"the task's awakeable was {detail} without the arbiter; refused, the gate stays open",
    )


async def _rearm(
    step: GateStep, pending: PendingApproval, key: str
) -> tuple[Wake, GateReply | None, PendingApproval]:
    """A fresh awakeable for the gate; the arbiter's outcome instead if it was decided meanwhile."""
    ctx = step.ctx
    awakeable_id, woken = ctx.awakeable(serde=BytesSerde())
    pending = pending.model_copy(update={"awakeable_id": awakeable_id})
    reply = await ctx.object_call(rearm, key=key, arg=Rearm(awakeable_id=awakeable_id))
    if reply.status == "missing":
        # The arbiter has no gate (it was never opened, or closed by a failed earlier attempt):
        # open it again for the same approval.
        await ctx.object_call(open_gate, key=key, arg=pending)
        return woken, None, pending
    if reply.status == "open":
        return woken, None, pending
    # Decided (or expired) before the new awakeable was in place: take that outcome.
    return woken, await ctx.object_call(take_outcome, key=key, arg=Empty()), pending


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
