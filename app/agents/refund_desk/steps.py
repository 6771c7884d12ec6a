"""RefundDesk's step functions and the approval content of its gate."""

from __future__ import annotations

from app.agent import ApprovalRequest, Next, StepContext, TaskError
from app.agents.refund_desk.llm import PROPOSE
from app.agents.refund_desk.models import Order, PolicyVerdict, ProposeInput, RefundData, RevisionPolicy
from app.settings import get_settings

NOTHING = "0.00"


async def lookup(step: StepContext[RefundData]) -> Next:
    found = await step.call_tool("get_order", {"order_id": step.data.order_id})
    order = step.data.order = Order.model_validate(found.result)
    if order.refunded:
        return Next(target="DECLINED", note="already refunded", result={"declined": "already refunded"})
    return Next(target="ASSESS", note=f"{order.total} {order.currency}: {order.item}")


async def assess(step: StepContext[RefundData]) -> Next:
    assert step.data.order is not None
    request = ProposeInput(order=step.data.order, reason=step.data.reason, feedback=step.data.verdicts)
    step.data.proposal = await step.llm(PROPOSE, request)
    return Next(target="CHECK", note=f"proposes {step.data.proposal.amount}")


async def read_revision_policy() -> RevisionPolicy:
    """Runs only inside a journaled step: a restart with other settings never changes a loop."""
    return RevisionPolicy(max_revisions=get_settings().refund_max_revisions)


async def check(step: StepContext[RefundData]) -> Next:
    assert step.data.proposal is not None
    answer = await step.call_tool(
        "check_refund_policy", {"order_id": step.data.order_id, "amount": step.data.proposal.amount}
    )
    verdict = PolicyVerdict.model_validate(answer.result)
    step.data.verdicts.append(verdict)
    if verdict.allowed:
        return Next(
            target="WAIT_APPROVAL", note=f"{step.data.proposal.amount} within policy ({verdict.rule})"
        )
    if verdict.max_amount == NOTHING:
        return Next(target="DECLINED", note=verdict.rule, result={"declined": verdict.rule})
    policy = await step.run("revision policy", read_revision_policy, RevisionPolicy)
    revisions = len(step.data.verdicts) - 1
    if revisions < policy.max_revisions:
        # Back to ASSESS with the policy's answer: the loop the machine declares.
        return Next(
            target="ASSESS", note=f"revise {revisions + 1} of {policy.max_revisions}: {verdict.reason}"
        )
    error = TaskError(state="CHECK", code="policy_refused", message=verdict.reason)
    return Next(target="FAILED", error=error)


def approval_of_refund(step: StepContext[RefundData]) -> ApprovalRequest:
    """What the approver sees and approves: the order, the amount, the policy rule, the reason."""
    order, proposal = step.data.order, step.data.proposal
    assert order is not None and proposal is not None
    return ApprovalRequest(
        summary=(
            f"Refund {proposal.amount} {order.currency} of order {order.order_id} ({order.item}, "
            f"{order.total} on {order.purchased_on}) to {order.customer}: {step.data.reason[:200]}"
        ),
        details={
            "order": order.model_dump(mode="json"),
            "proposal": proposal.model_dump(mode="json"),
            "policy": step.data.verdicts[-1].model_dump(mode="json"),
        },
        # The tool service pays only against an approved ticket of this subject.
        subject=f"refund:{order.order_id}",
    )


async def issue(step: StepContext[RefundData]) -> Next:
    order, proposal = step.data.order, step.data.proposal
    assert order is not None and proposal is not None
    approval = step.approvals[-1]
    paid = await step.call_tool(
        "issue_refund",
        {
            "order_id": order.order_id,
            "amount": proposal.amount,
            "approved_by": approval.approver,
            "approval_ticket_id": approval.approval_ticket_id,
        },
    )
    step.data.refund_id = str(paid.result["refund_id"])
    return Next(
        target="COMPLETE",
        note=f"refunded {proposal.amount} as {step.data.refund_id}",
        result={
            "refund_id": step.data.refund_id,
            "amount": proposal.amount,
            "approved_by": approval.approver,
        },
    )
