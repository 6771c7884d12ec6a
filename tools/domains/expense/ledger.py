"""The accounting ledger: `record_expense` books an approved expense as a double-entry posting.

A posting debits the category's expense account and credits what the company owes the employee
(2100), for exactly the claimed amount: the lines always balance, and the amount is the one the
receipt was checked against, never one passed along by the agent (that is refused).

Nothing is booked on the caller's word. Before it writes anything, `record_expense` checks the
evidence the tool service recorded itself, and refuses (403, stored under the key) without it:

- its own OCR of the expense's receipt (`receipt_checks`, written by `ocr_receipt`): readable, of
  the expense's receipt image (same sha256), and a total within EXPENSE_TOTAL_TOLERANCE of the
  claim;
- for a human approval, an approval ticket (`approval_ticket_id`) whose subject is this expense,
  closed `approved`, by the `approved_by` the call names;
- for an auto approval, the tool service's own copy of the policy: `approved_by` is
  "policy:auto-approval", the amount is at most AUTO_APPROVE_MAX_AMOUNT and the category is one
  of AUTO_APPROVE_CATEGORIES.

An expense is booked once, whatever happens upstream. The Idempotency-Key makes a retry replay
its answer; beyond that, the posting is unique per expense, so a second request under another key
(a new visit of the state, a second agent run) gets the existing posting back with
`already_posted: true` and writes nothing, and the unique constraint settles two that race.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from sqlalchemy import CheckConstraint, ForeignKey, Numeric, String, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from common.db import UTCDateTime
from tools.domains.expense.expenses import (
    Category,
    Expense,
    ExpenseId,
    ReceiptCheck,
    check_claim,
    find_expense,
)
from tools.service.approval_tickets import ApprovalTicket, TicketId
from tools.service.db import Base
from tools.service.definition import Tool, ToolArgs, ToolCall, ToolError, ToolFailure, ToolResult
from tools.service.money import Amount, Currency, format_amount
from tools.service.settings import ToolsSettings

Approval = Literal["auto", "human"]
# The approver-name rules of the agent service (app/gates/models.py); "auto" approvals name
# the policy or agent that approved.
APPROVED_BY_PATTERN = r"^[A-Za-z0-9_.@:+-]+$"
# The one approver an auto approval may name: the agent's auto-approval policy.
AUTO_APPROVER = "policy:auto-approval"
LIST_LIMIT = 100

EXPENSE_ACCOUNTS: dict[str, str] = {
    "travel": "6100 Travel",
    "lodging": "6150 Lodging",
    "meals": "6200 Meals",
    "software": "6300 Software",
    "office_supplies": "6400 Office supplies",
    "training": "6500 Training",
    "other": "6900 Other expenses",
}
PAYABLE_ACCOUNT = "2100 Employee reimbursements payable"
ZERO = Decimal("0.00")


class LedgerPosting(Base):
    __tablename__ = "ledger_postings"

    # "JE-" + 12 hex of sha256(Idempotency-Key): a re-execution produces the same id.
    posting_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # One posting per expense: the domain's own guard, whatever key a request comes with.
    expense_id: Mapped[str] = mapped_column(ForeignKey("expenses.expense_id"), unique=True)
    # The second guard behind the idempotency store: one posting per key.
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    category: Mapped[str] = mapped_column(String(32))
    approved_by: Mapped[str] = mapped_column(String(128))
    approval: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LedgerLine(Base):
    __tablename__ = "ledger_lines"
    __table_args__ = (
        # Each line is a debit or a credit, never negative, never both.
        CheckConstraint(
            "debit >= 0 AND credit >= 0 AND (debit = 0 OR credit = 0)", name="ck_ledger_lines_one_side"
        ),
    )

    posting_id: Mapped[str] = mapped_column(ForeignKey("ledger_postings.posting_id"), primary_key=True)
    line_no: Mapped[int] = mapped_column(primary_key=True)
    account: Mapped[str] = mapped_column(String(64))
    debit: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    credit: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    currency: Mapped[str] = mapped_column(String(3))


class RecordExpenseArgs(ToolArgs):
    expense_id: ExpenseId
    category: Category
    amount: Amount
    currency: Currency
    approved_by: str = Field(min_length=1, max_length=128, pattern=APPROVED_BY_PATTERN)
    approval: Approval
    # The approval ticket that approved this expense (its subject is "expense:{expense_id}"):
    # required for a human approval, refused for an auto one.
    approval_ticket_id: TicketId | None = Field(None, validate_default=True)

    @field_validator("approval_ticket_id")
    @classmethod
    def _ticket_for_human_approvals(cls, value: str | None, info: ValidationInfo) -> str | None:
        approval = info.data.get("approval")  # absent when `approval` itself is invalid
        if approval == "human" and value is None:
            raise ValueError(
                "is required for a human approval: the id of the approved ticket whose subject is "
                "expense:{expense_id}"
            )
        if approval == "auto" and value is not None:
            raise ValueError("must be left out for an auto approval (the policy approves, not a ticket)")
        return value


def approval_subject(expense_id: str) -> str:
    """The subject an approval ticket of the expense names (request_approval's `subject`)."""
    return f"expense:{expense_id}"


class PostingLine(ToolResult):
    account: str
    debit: str
    credit: str
    currency: str


class ExpenseRecorded(ToolResult):
    posting_id: str
    expense_id: str
    lines: list[PostingLine]
    # True when the expense had been booked before (under another key): nothing was written.
    already_posted: bool


class PostingView(ToolResult):
    """A posting as `GET /ledger` shows it."""

    posting_id: str
    expense_id: str
    category: str
    approved_by: str
    approval: str
    created_at: datetime
    lines: list[PostingLine]


class AccountBalance(ToolResult):
    account: str
    currency: str
    debits: str
    credits: str


class CurrencyTotals(ToolResult):
    currency: str
    debits: str
    credits: str


class LedgerBalance(ToolResult):
    """`GET /ledger/balance`: totals per account and per currency; `balanced` when every
    currency's debits equal its credits."""

    accounts: list[AccountBalance]
    totals: list[CurrencyTotals]
    balanced: bool


class LedgerQuery(BaseModel):
    """The filters of `GET /ledger`; an unknown parameter is refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    expense_id: ExpenseId | None = None


def record_expense(call: ToolCall, args: RecordExpenseArgs) -> ExpenseRecorded:
    settings = call.settings
    if settings is None:
        # The API always passes them; only a ToolCall built by hand lacks them. Without the
        # policy nothing can be checked, and nothing is booked unchecked.
        raise ToolFailure(
            "expense_policy_unavailable",
            "record_expense needs the service's settings (the expense policy) to check its evidence, "
            "and this call carries none.",
        )
    # Locked until commit: two requests for one expense under different keys serialise here, and
    # the second finds the first's posting below. (ocr_receipt takes the same lock, so the receipt
    # check cannot change while it is being checked.)
    expense = find_expense(call.session, args.expense_id, for_update=True)
    check_claim(expense, args.amount, args.currency)
    # Every call shows its evidence, also one that will find the expense booked: the answer
    # "already posted" is for the expense's legitimate bookers, not for anyone who asks.
    check_receipt_evidence(call.session, expense, settings)
    if args.approval == "human":
        check_human_approval(call.session, expense, args)
    else:
        check_auto_approval(expense, args, settings)
    existing = _posting_of(call.session, expense.expense_id)
    if existing is not None:
        return _recorded(call.session, existing, already_posted=True)

    posting = LedgerPosting(
        posting_id=call.derived_id("JE"),
        expense_id=expense.expense_id,
        idempotency_key=call.idempotency_key,
        category=args.category,
        approved_by=args.approved_by,
        approval=args.approval,
        created_at=call.now,
    )
    lines = [
        LedgerLine(line_no=1, account=EXPENSE_ACCOUNTS[args.category], debit=expense.amount, credit=ZERO),
        LedgerLine(line_no=2, account=PAYABLE_ACCOUNT, debit=ZERO, credit=expense.amount),
    ]
    try:
        with call.session.begin_nested():
            call.session.add(posting)
            call.session.flush()
            for line in lines:
                line.posting_id = posting.posting_id
                line.currency = expense.currency
            call.session.add_all(lines)
            call.session.flush()
    except IntegrityError:
        # A writer that did not take the expense's lock booked it after our lookup. PostgreSQL
        # reports the unique violation once that transaction committed, so its posting is
        # visible now. (SQLite serialises writers at BEGIN, so it never gets here.)
        existing = _posting_of(call.session, expense.expense_id)
        if existing is None:
            raise
        return _recorded(call.session, existing, already_posted=True)
    expense.status = "recorded"
    return _recorded(call.session, posting, already_posted=False)


# --- the evidence ---------------------------------------------------------------------------


def check_receipt_evidence(session: Session, expense: Expense, settings: ToolsSettings) -> None:
    """403 unless the tool service's own OCR of this expense's receipt backs the claim."""
    expense_id = expense.expense_id
    check = session.get(ReceiptCheck, expense_id)
    if check is None:
        raise _refused(
            "receipt_not_verified",
            f"The receipt of expense {expense_id!r} has not been checked: the tool service has no OCR "
            "reading of it. Call ocr_receipt for the expense before recording it.",
            {"expense_id": expense_id},
        )
    if check.receipt_sha256 != expense.receipt_sha256:
        raise _refused(
            "receipt_not_verified",
            f"The OCR reading on record for expense {expense_id!r} is of another image "
            f"(sha256 {check.receipt_sha256}) than the expense's receipt (sha256 "
            f"{expense.receipt_sha256}). Call ocr_receipt for the expense again.",
            {
                "expense_id": expense_id,
                "checked_sha256": check.receipt_sha256,
                "receipt_sha256": expense.receipt_sha256,
            },
        )
    if not check.readable or check.total is None:
        raise _refused(
            "receipt_not_verified",
            f"The receipt of expense {expense_id!r} could not be read (OCR found no merchant or no "
            "total), so nothing backs the claim.",
            {"expense_id": expense_id, "readable": False},
        )
    tolerance = settings.expense_total_tolerance
    if abs(check.total - expense.amount) > tolerance:
        raise _refused(
            "receipt_total_mismatch",
            f"The receipt of expense {expense_id!r} totals {format_amount(check.total)}, but "
            f"{format_amount(expense.amount)} {expense.currency} is claimed (tolerance "
            f"{format_amount(tolerance)}).",
            {
                "expense_id": expense_id,
                "claimed": format_amount(expense.amount),
                "receipt_total": format_amount(check.total),
                "tolerance": format_amount(tolerance),
            },
        )


def check_human_approval(session: Session, expense: Expense, args: RecordExpenseArgs) -> None:
    """403 unless the named ticket approved this expense, decided by `approved_by`."""
    ticket_id = args.approval_ticket_id
    assert ticket_id is not None  # RecordExpenseArgs requires it for a human approval
    subject = approval_subject(expense.expense_id)
    details: dict[str, Any] = {"expense_id": expense.expense_id, "approval_ticket_id": ticket_id}
    ticket = session.get(ApprovalTicket, ticket_id)
    if ticket is None:
        raise _refused(
            "approval_not_recorded",
            f"There is no approval ticket {ticket_id!r}: nothing approved expense {expense.expense_id!r}.",
            details,
        )
    if ticket.subject != subject:
        approves = "no named subject" if ticket.subject is None else repr(ticket.subject)
        raise _refused(
            "approval_not_recorded",
            f"The approval ticket {ticket_id!r} approves {approves}, not {subject!r}.",
            {**details, "subject": ticket.subject, "expected_subject": subject},
        )
    if ticket.status != "approved":
        raise _refused(
            "approval_not_recorded",
            f"The approval ticket {ticket_id!r} of {subject!r} is {ticket.status}, not approved.",
            {**details, "status": ticket.status},
        )
    if ticket.decided_by != args.approved_by:
        raise _refused(
            "approval_not_recorded",
            f"The approval ticket {ticket_id!r} of {subject!r} was approved by {ticket.decided_by!r}, "
            f"not by {args.approved_by!r}.",
            {**details, "decided_by": ticket.decided_by, "approved_by": args.approved_by},
        )


def check_auto_approval(expense: Expense, args: RecordExpenseArgs, settings: ToolsSettings) -> None:
    """403 unless the tool service's copy of the auto-approval policy allows this expense.

    The agent also requires the classifier's confidence to reach its threshold; that figure
    comes from a model the tool service does not run, so it cannot be checked here. What is
    checked are the numbers no model can change: the approver, the amount and the category.
    """
    details: dict[str, Any] = {"expense_id": expense.expense_id}
    if args.approved_by != AUTO_APPROVER:
        raise _refused(
            "auto_approval_not_allowed",
            f"Expense {expense.expense_id!r} cannot be auto-approved by {args.approved_by!r}: an "
            f"auto approval is made by {AUTO_APPROVER!r}, and one by a person is approval 'human' "
            "with its approval ticket.",
            {**details, "approved_by": args.approved_by},
        )
    limit = settings.auto_approve_max_amount
    if expense.amount > limit:
        raise _refused(
            "auto_approval_not_allowed",
            f"Expense {expense.expense_id!r} claims {format_amount(expense.amount)} {expense.currency}, "
            f"above the auto-approval limit of {format_amount(limit)}: it needs a human approval.",
            {**details, "amount": format_amount(expense.amount), "limit": format_amount(limit)},
        )
    categories = settings.auto_approve_categories
    if args.category not in categories:
        raise _refused(
            "auto_approval_not_allowed",
            f"The category {args.category!r} is not auto-approved (only {', '.join(categories) or 'none'}): "
            f"expense {expense.expense_id!r} needs a human approval.",
            {**details, "category": args.category, "categories": categories},
        )


def _refused(code: str, message: str, details: dict[str, Any]) -> ToolError:
    return ToolError(403, code, message, details)


def _posting_of(session: Session, expense_id: str) -> LedgerPosting | None:
    return session.scalars(select(LedgerPosting).where(LedgerPosting.expense_id == expense_id)).one_or_none()


def _recorded(session: Session, posting: LedgerPosting, *, already_posted: bool) -> ExpenseRecorded:
    return ExpenseRecorded(
        posting_id=posting.posting_id,
        expense_id=posting.expense_id,
        lines=_lines_of(session, [posting.posting_id])[posting.posting_id],
        already_posted=already_posted,
    )


def _lines_of(session: Session, posting_ids: list[str]) -> dict[str, list[PostingLine]]:
    lines: dict[str, list[PostingLine]] = {posting_id: [] for posting_id in posting_ids}
    rows = session.scalars(
        select(LedgerLine)
        .where(LedgerLine.posting_id.in_(posting_ids))
        .order_by(LedgerLine.posting_id, LedgerLine.line_no)
    )
    for row in rows:
        lines[row.posting_id].append(
            PostingLine(
                account=row.account,
                debit=format_amount(row.debit),
                credit=format_amount(row.credit),
                currency=row.currency,
            )
        )
    return lines


# --- inspection -----------------------------------------------------------------------------


def list_postings(
    session: Session, *, expense_id: str | None = None, limit: int = LIST_LIMIT
) -> list[PostingView]:
    """The newest postings first, with their lines, optionally of one expense."""
    statement = select(LedgerPosting)
    if expense_id is not None:
        statement = statement.where(LedgerPosting.expense_id == expense_id)
    postings = list(
        session.scalars(
            statement.order_by(LedgerPosting.created_at.desc(), LedgerPosting.posting_id).limit(limit)
        )
    )
    lines = _lines_of(session, [posting.posting_id for posting in postings])
    return [
        PostingView(
            posting_id=posting.posting_id,
            expense_id=posting.expense_id,
            category=posting.category,
            approved_by=posting.approved_by,
            approval=posting.approval,
            created_at=posting.created_at,
            lines=lines[posting.posting_id],
        )
        for posting in postings
    ]


def ledger_balance(session: Session) -> LedgerBalance:
    """Debits and credits per account and currency, summed by the database."""
    rows = session.execute(
        select(
            LedgerLine.account,
            LedgerLine.currency,
            func.sum(LedgerLine.debit).label("debits"),
            func.sum(LedgerLine.credit).label("credits"),
        )
        .group_by(LedgerLine.account, LedgerLine.currency)
        .order_by(LedgerLine.account, LedgerLine.currency)
    ).all()
    accounts: list[AccountBalance] = []
    totals: dict[str, tuple[Decimal, Decimal]] = {}
    for row in rows:
        debits, credits = Decimal(row.debits), Decimal(row.credits)
        accounts.append(
            AccountBalance(
                account=row.account,
                currency=row.currency,
                debits=format_amount(debits),
                credits=format_amount(credits),
            )
        )
        total_debits, total_credits = totals.get(row.currency, (ZERO, ZERO))
        totals[row.currency] = (total_debits + debits, total_credits + credits)
    return LedgerBalance(
        accounts=accounts,
        totals=[
            CurrencyTotals(currency=currency, debits=format_amount(debits), credits=format_amount(credits))
            for currency, (debits, credits) in sorted(totals.items())
        ],
        balanced=all(debits == credits for debits, credits in totals.values()),
    )


TOOLS: tuple[Tool[Any, Any], ...] = (
    Tool(
        name="record_expense",
        description=(
            "Book an approved expense in the ledger: debit the category's expense account, credit "
            "2100 Employee reimbursements payable, for the claimed amount (another amount is "
            "refused). Needs the tool service's own evidence, else 403: an ocr_receipt of the "
            "expense whose total matches the claim, and for approval 'human' the "
            "approval_ticket_id of a ticket with subject 'expense:{expense_id}' approved by "
            "approved_by; for approval 'auto', approved_by 'policy:auto-approval' within the "
            "auto-approval policy. Once per expense: if it is already booked, returns that "
            "posting with already_posted true and writes nothing."
        ),
        side_effects=True,
        args_model=RecordExpenseArgs,
        result_model=ExpenseRecorded,
        run=record_expense,
    ),
)
