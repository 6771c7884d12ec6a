"""The accounting ledger: `record_expense` books an approved expense as a double-entry posting.

A posting debits the category's expense account and credits what the company owes the employee
(2100), for exactly the claimed amount: the lines always balance, and the amount is the one the
receipt was checked against, never one passed along by the agent (that is refused).

An expense is booked once, whatever happens upstream. The Idempotency-Key makes a retry replay
its answer; beyond that, the posting is unique per expense, so a second request under another key
(a new visit of the state, a second agent run) gets the existing posting back with
`already_posted: true` and writes nothing, and the unique constraint settles two that race.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import CheckConstraint, ForeignKey, Numeric, String, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from tools.db import Base, UTCDateTime
from tools.definition import Tool, ToolArgs, ToolCall, ToolResult
from tools.expenses import (
    Amount,
    Category,
    Currency,
    ExpenseId,
    check_claim,
    find_expense,
    format_amount,
)

Approval = Literal["auto", "human"]
# The approver-name rules of the agent service (app/approvals/models.py); "auto" approvals name
# the policy or agent that approved.
APPROVED_BY_PATTERN = r"^[A-Za-z0-9_.@:+-]+$"
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
    # Locked until commit: two requests for one expense under different keys serialise here, and
    # the second finds the first's posting below.
    expense = find_expense(call.session, args.expense_id, for_update=True)
    check_claim(expense, args.amount, args.currency)
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
            "refused). Once per expense: if it is already booked, returns that posting with "
            "already_posted true and writes nothing."
        ),
        side_effects=True,
        args_model=RecordExpenseArgs,
        result_model=ExpenseRecorded,
        run=record_expense,
    ),
)
