"""ExpenseReport's step functions, its pure rules, and the approval content of its gate."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from app.agent import ApprovalRequest, Next, StepContext, TaskError
from app.agents.expense_report.llm import CLASSIFY
from app.agents.expense_report.models import (
    Classification,
    ClassifyInput,
    ExpenseClaim,
    ExpenseData,
    ExpensePolicy,
    Posting,
    ReceiptCheck,
    Routing,
)
from app.settings import get_settings


async def read_expense_policy() -> ExpensePolicy:
    settings = get_settings()
    return ExpensePolicy(
        total_tolerance=str(settings.expense_total_tolerance),
        auto_approve_max_amount=str(settings.auto_approve_max_amount),
        auto_approve_categories=settings.auto_approve_categories,
        auto_approve_min_confidence=settings.auto_approve_min_confidence,
    )


def _decimal(value: str | None) -> Decimal | None:
    try:
        return Decimal(value) if value is not None else None
    except InvalidOperation:
        return None


def compare_receipt(claim: ExpenseClaim, reading: dict[str, object], tolerance: Decimal) -> ReceiptCheck:
    """Pure: the OCR reading against the claim (total within the tolerance, same date if read)."""
    total = _decimal(str(reading["total"])) if reading.get("total") is not None else None
    claimed = Decimal(claim.amount)
    read_date = str(reading["date"]) if reading.get("date") else None
    problems: list[str] = []
    readable = bool(reading.get("readable")) and total is not None
    total_matches = total is not None and abs(total - claimed) <= tolerance
    date_matches = None if read_date is None else read_date == claim.date
    if not readable:
        problems.append("the receipt could not be read (no merchant or total found)")
    elif not total_matches:
        problems.append(f"the receipt total {total} does not match the claimed {claimed} {claim.currency}")
    if date_matches is False:
        problems.append(f"the receipt date {read_date} does not match the claimed date {claim.date}")
    return ReceiptCheck(
        readable=readable,
        merchant=str(reading["merchant"]) if reading.get("merchant") else None,
        date=read_date,
        total=str(total) if total is not None else None,
        consistent=bool(reading.get("consistent")),
        total_matches=total_matches,
        date_matches=date_matches,
        problems=problems,
    )


async def fetch(step: StepContext[ExpenseData]) -> Next:
    found = await step.call_tool("get_expense", {"expense_id": step.data.expense_id})
    step.data.expense = ExpenseClaim.model_validate(found.result)
    claim = step.data.expense
    return Next(target="VERIFY", note=f"{claim.amount} {claim.currency} at {claim.merchant}")


async def verify(step: StepContext[ExpenseData]) -> Next:
    assert step.data.expense is not None
    step.data.policy = await step.run("expense policy", read_expense_policy, ExpensePolicy)
    reading = await step.call_tool("ocr_receipt", {"expense_id": step.data.expense_id})
    check = compare_receipt(step.data.expense, reading.result, Decimal(step.data.policy.total_tolerance))
    step.data.receipt = check
    if check.problems:
        code = "receipt_unreadable" if not check.readable else "receipt_mismatch"
        return Next(
            target="FAILED", error=TaskError(state="VERIFY", code=code, message="; ".join(check.problems))
        )
    return Next(target="CLASSIFY", note=f"receipt total {check.total} matches")


async def classify(step: StepContext[ExpenseData]) -> Next:
    claim = step.data.expense
    assert claim is not None and step.data.receipt is not None
    request = ClassifyInput(
        merchant=claim.merchant,
        description=claim.description,
        amount=claim.amount,
        currency=claim.currency,
        receipt_merchant=step.data.receipt.merchant,
    )
    step.data.classification = await step.llm(CLASSIFY, request)
    found = step.data.classification
    return Next(target="ROUTE", note=f"{found.category} ({found.confidence:.2f})")


def auto_approvable(claim: ExpenseClaim, found: Classification, policy: ExpensePolicy) -> bool:
    """Pure: the only way around the human gate, decided by numbers the model cannot change."""
    return (
        Decimal(claim.amount) <= Decimal(policy.auto_approve_max_amount)
        and found.category in policy.auto_approve_categories
        and found.confidence >= policy.auto_approve_min_confidence
    )


async def route(step: StepContext[ExpenseData]) -> Next:
    claim, found, policy = step.data.expense, step.data.classification, step.data.policy
    assert claim is not None and found is not None and policy is not None
    routed = await step.call_tool(
        "route_expense",
        {
            "expense_id": claim.expense_id,
            "category": found.category,
            "amount": claim.amount,
            "currency": claim.currency,
        },
    )
    step.data.routing = Routing.model_validate(routed.result)
    if auto_approvable(claim, found, policy):
        step.data.approval = "auto"
        return Next(target="RECORD", note="auto-approved by policy")
    step.data.approval = "human"
    return Next(target="WAIT_APPROVAL", note=f"to {', '.join(step.data.routing.approvers)}")


def approval_of_expense(step: StepContext[ExpenseData]) -> ApprovalRequest:
    """What the approver sees and approves: the claim, the receipt check, the category."""
    claim, found, routing = step.data.expense, step.data.classification, step.data.routing
    assert claim is not None and found is not None and routing is not None and step.data.receipt is not None
    return ApprovalRequest(
        summary=(
            f"Expense {claim.expense_id} by {claim.employee_id}: {claim.amount} {claim.currency} at "
            f"{claim.merchant} on {claim.date}, {found.category} (confidence {found.confidence:.2f})."
        ),
        details={
            "expense": claim.model_dump(mode="json"),
            "receipt": step.data.receipt.model_dump(mode="json"),
            "classification": found.model_dump(mode="json"),
            "routing_rule": routing.rule,
        },
        approvers=routing.approvers,
        escalation_approver=routing.escalation_approver,
        # The ledger posts a human-approved expense only against an approved ticket of this subject.
        subject=f"expense:{claim.expense_id}",
    )


async def record(step: StepContext[ExpenseData]) -> Next:
    claim, found = step.data.expense, step.data.classification
    assert claim is not None and found is not None
    approved_by = "policy:auto-approval"
    evidence: dict[str, str] = {}
    if step.data.approval == "human":
        decided = step.approvals[-1] if step.approvals else None
        approved_by = decided.approver if decided and decided.approver else "unknown"
        # The tool service checks the ticket itself: approved, of this expense, by this approver.
        if decided is not None and decided.approval_ticket_id:
            evidence["approval_ticket_id"] = decided.approval_ticket_id
    posted = await step.call_tool(
        "record_expense",
        {
            "expense_id": claim.expense_id,
            "category": found.category,
            "amount": claim.amount,
            "currency": claim.currency,
            "approved_by": approved_by,
            "approval": step.data.approval or "human",
            **evidence,
        },
    )
    step.data.posting = Posting.model_validate(posted.result)
    return Next(
        target="COMPLETE",
        note=f"posted {step.data.posting.posting_id}",
        result={
            "posting_id": step.data.posting.posting_id,
            "category": found.category,
            "amount": claim.amount,
            "currency": claim.currency,
            "approved_by": approved_by,
            "approval": step.data.approval,
        },
    )
