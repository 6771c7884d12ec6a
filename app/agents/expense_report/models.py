"""ExpenseReport's input, its task data, and the typed input and output of its LLM task."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

ExpenseCategory = Literal["travel", "meals", "lodging", "software", "office_supplies", "training", "other"]
EXPENSE_CATEGORIES: tuple[str, ...] = get_args(ExpenseCategory)


class ClassifyInput(BaseModel):
    """An expense to classify: the claim and what the receipt says (OCR)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    merchant: str
    description: str
    amount: str
    currency: str
    receipt_merchant: str | None = None


class Classification(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    category: ExpenseCategory = Field(description="The spend category, from the fixed list.")
    confidence: float = Field(ge=0.0, le=1.0, description="How sure the classification is, 0 to 1.")
    rationale: str = Field(description="One sentence: why this category.")


class RunExpenseReport(BaseModel):
    """The `run` handler's input (design.md)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    expense_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")


class ExpenseClaim(BaseModel):
    """The expense as submitted (the tool service's `get_expense`)."""

    model_config = ConfigDict(extra="ignore")

    expense_id: str
    employee_id: str
    amount: str
    currency: str
    date: str
    merchant: str
    description: str


class ReceiptCheck(BaseModel):
    """What OCR read and how it compares with the claim."""

    readable: bool
    merchant: str | None
    date: str | None
    total: str | None
    consistent: bool
    total_matches: bool
    date_matches: bool | None  # None: no date could be read
    problems: list[str] = Field(default_factory=list)


class Routing(BaseModel):
    model_config = ConfigDict(extra="ignore")

    approvers: list[str]
    escalation_approver: str | None = None
    rule: str


class ExpensePolicy(BaseModel):
    """The auto-approval policy and the receipt tolerance, read from settings once and journaled."""

    total_tolerance: str
    auto_approve_max_amount: str
    auto_approve_categories: list[str]
    auto_approve_min_confidence: float


class Posting(BaseModel):
    model_config = ConfigDict(extra="ignore")

    posting_id: str
    lines: list[dict[str, str]]
    already_posted: bool = False


class ExpenseData(BaseModel):
    expense_id: str
    expense: ExpenseClaim | None = None
    receipt: ReceiptCheck | None = None
    classification: Classification | None = None
    routing: Routing | None = None
    policy: ExpensePolicy | None = None
    approval: Literal["auto", "human"] | None = None
    posting: Posting | None = None
