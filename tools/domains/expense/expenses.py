"""Expenses: the claims people submit with a receipt, and the agent's read tools over them.

People submit an expense (the claim and a receipt image) with `POST /expenses` (multipart, see
tools/service/api.py); the ExpenseReport agent then reads it (`get_expense`), checks the receipt
against the claim (`ocr_receipt`), routes it (routing.py) and records it (ledger.py). The
record is the claim exactly as submitted: nothing edits it afterwards except its status, which
the ledger moves to `recorded`, so what was verified is what gets booked.

`ocr_receipt` also keeps the tool service's own record of what it read (`receipt_checks`): the
ledger books an expense only against that record, never against a reading the agent passes on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError
from sqlalchemy import Date, ForeignKey, Index, LargeBinary, Numeric, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from common.db import UTCDateTime, utc_now
from tools.domains.expense.ocr import ReceiptReading, read_receipt
from tools.service.db import Base
from tools.service.definition import Tool, ToolArgs, ToolCall, ToolError, ToolResult
from tools.service.errors import ApiError
from tools.service.idempotency import request_hash
from tools.service.money import Amount, Currency, format_amount
from tools.service.uploads import Form, decode_problem, sniff_image_type

# What the idempotency store records as the "tool" of a submission: a key used for one request
# kind cannot be reused for another.
SUBMIT_EXPENSE = "POST /expenses"
EXPENSE_ID_PREFIX = "EXP"
EXPENSE_ID_PATTERN = r"^EXP-[0-9a-f]{12}$"
# The character rules of user ids in the agent service (app/agents/agent_task.py).
EMPLOYEE_ID_PATTERN = r"^[A-Za-z0-9_.@:-]+$"
EMPLOYEE_ID_MAX_LENGTH = 128
MERCHANT_MAX_LENGTH = 200
DESCRIPTION_MAX_LENGTH = 2000
RECEIPT_FIELD = "receipt"
RECEIPT_MAX_BYTES = 5 * 1024 * 1024
# The receipt plus the text fields and the multipart framing around them.
SUBMISSION_MAX_BYTES = RECEIPT_MAX_BYTES + 64 * 1024
SUBMISSION_MAX_PARTS = 16
LIST_LIMIT = 100
# A claim may be dated up to one day after the service's UTC date (the employee's time zone may
# be ahead of UTC), and at most this many days before it unless the caller says otherwise
# (the service passes its EXPENSE_MAX_AGE_DAYS).
FUTURE_DATE_ALLOWANCE = dt.timedelta(days=1)
DEFAULT_MAX_AGE_DAYS = 365
SHA256_LENGTH = 64
OCR_ENGINE_MAX_LENGTH = 64

Category = Literal["travel", "meals", "lodging", "software", "office_supplies", "training", "other"]
CATEGORIES: tuple[str, ...] = get_args(Category)
ExpenseStatus = Literal["submitted", "recorded"]


def _to_date(value: object) -> object:
    # Only YYYY-MM-DD: pydantic alone would also take a timestamp or a datetime string, and a
    # claim's date must mean one day to everyone.
    if isinstance(value, str):
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError("must be a date as YYYY-MM-DD")
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"is not a date that exists ({value})") from None
    return value


def service_date() -> dt.date:
    """Today in UTC, by the service clock: what "in the future" and "too old" are measured from
    (a module-level function, so a test can move it)."""
    return utc_now().date()


def date_problem(value: dt.date, *, today: dt.date, max_age_days: int) -> PydanticCustomError | None:
    """Why an expense dated `value` cannot be claimed on `today`, or None when it can."""
    latest = today + FUTURE_DATE_ALLOWANCE
    if value > latest:
        return PydanticCustomError(
            "date_in_future",
            "must not be in the future: at most one day after today ({today}, UTC), so on or before {latest}",
            {"today": today.isoformat(), "latest": latest.isoformat()},
        )
    earliest = today - dt.timedelta(days=max_age_days)
    if value < earliest:
        return PydanticCustomError(
            "date_too_old",
            "is too old: expenses may be claimed for at most {max_age_days} days, so on or after {earliest}",
            {"max_age_days": max_age_days, "earliest": earliest.isoformat()},
        )
    return None


def _no_control_characters(value: str) -> str:
    # PostgreSQL refuses NUL in text, and no receipt or description needs a control character.
    if any(unicodedata.category(char) == "Cc" and char not in "\t\n\r" for char in value):
        raise ValueError("must not contain control characters")
    return value


def _one_line(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    if "\n" in value or "\r" in value:
        raise ValueError("must be a single line")
    return value


ExpenseId = Annotated[str, Field(pattern=EXPENSE_ID_PATTERN, description='"EXP-" and 12 hex digits')]
EmployeeId = Annotated[
    str, Field(min_length=1, max_length=EMPLOYEE_ID_MAX_LENGTH, pattern=EMPLOYEE_ID_PATTERN)
]
IsoDate = Annotated[dt.date, BeforeValidator(_to_date)]
Merchant = Annotated[
    str,
    Field(min_length=1, max_length=MERCHANT_MAX_LENGTH),
    AfterValidator(_no_control_characters),
    AfterValidator(_one_line),
]
Description = Annotated[str, Field(max_length=DESCRIPTION_MAX_LENGTH), AfterValidator(_no_control_characters)]


class Expense(Base):
    __tablename__ = "expenses"
    __table_args__ = (Index("ix_expenses_submitted_at", "submitted_at"),)

    # "EXP-" + 12 hex of sha256(Idempotency-Key) when the submission had one (a retry cannot
    # create a second expense); random otherwise.
    expense_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # The second guard behind the idempotency store (NULL for submissions without a key).
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    employee_id: Mapped[str] = mapped_column(String(EMPLOYEE_ID_MAX_LENGTH))
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    currency: Mapped[str] = mapped_column(String(3))
    expense_date: Mapped[dt.date] = mapped_column(Date)
    # The merchant as claimed; the receipt says what it says (ocr_receipt).
    merchant: Mapped[str] = mapped_column(String(MERCHANT_MAX_LENGTH))
    description: Mapped[str] = mapped_column(Text)
    # Deferred: listing expenses must not drag megabytes of images out of the database.
    receipt_image: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    receipt_content_type: Mapped[str] = mapped_column(String(32))
    receipt_size: Mapped[int]
    receipt_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    submitted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class ReceiptCheck(Base):
    """The tool service's own record of what OCR read on an expense's receipt (`ocr_receipt`):
    the evidence `record_expense` checks. One per expense; a later OCR replaces it."""

    __tablename__ = "receipt_checks"

    expense_id: Mapped[str] = mapped_column(ForeignKey("expenses.expense_id"), primary_key=True)
    # Which image was read: the ledger accepts the check only for the expense's own receipt.
    receipt_sha256: Mapped[str] = mapped_column(String(SHA256_LENGTH))
    readable: Mapped[bool]
    merchant: Mapped[str | None] = mapped_column(String(MERCHANT_MAX_LENGTH))
    receipt_date: Mapped[dt.date | None] = mapped_column(Date)
    total: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    consistent: Mapped[bool]
    engine: Mapped[str] = mapped_column(String(OCR_ENGINE_MAX_LENGTH))
    # The ocr_receipt call that wrote it.
    idempotency_key: Mapped[str] = mapped_column(String(255))
    checked_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


# --- the submission -------------------------------------------------------------------------


class ExpenseSubmission(BaseModel):
    """The text fields of `POST /expenses`; an unknown field is an error, never dropped."""

    model_config = ConfigDict(extra="forbid")

    employee_id: EmployeeId
    amount: Amount
    currency: Currency = "USD"
    date: IsoDate
    merchant: Merchant
    description: Description = ""

    @field_validator("date")
    @classmethod
    def _claimable(cls, value: dt.date, info: ValidationInfo) -> dt.date:
        # The day and the age limit come from the validation context (parse_submission); without
        # one, today and the default limit: a claim is never accepted unchecked.
        context = info.context if isinstance(info.context, dict) else {}
        today = context.get("today") or service_date()
        problem = date_problem(
            value, today=today, max_age_days=context.get("max_age_days", DEFAULT_MAX_AGE_DAYS)
        )
        if problem is not None:
            raise problem
        return value


@dataclass(frozen=True)
class Receipt:
    """A receipt image that passed every check: its bytes, its type (from the bytes) and hash."""

    data: bytes
    content_type: str
    sha256: str


@dataclass(frozen=True)
class Submission:
    fields: ExpenseSubmission
    receipt: Receipt

    def request_hash(self) -> str:
        """What "the same submission" means for an Idempotency-Key: the validated fields (so
        "18.5" and "18.50" are one amount) and the exact image bytes."""
        return request_hash(
            SUBMIT_EXPENSE,
            {**self.fields.model_dump(mode="json"), "receipt_sha256": self.receipt.sha256},
        )


def parse_submission(
    form: Form, *, today: dt.date | None = None, max_age_days: int = DEFAULT_MAX_AGE_DAYS
) -> Submission:
    """The submission in `form`, or an ApiError: 422 with every field problem at once (a date
    more than a day after `today` or more than `max_age_days` days before it is one), then for
    the receipt 413 (too large), 415 (not PNG or JPEG by its bytes) or 422 (does not decode).

    `today` defaults to the service's UTC date (`service_date`). Blocking (the image is decoded):
    call it from a worker thread.
    """
    errors: list[dict[str, Any]] = []
    for name in sorted({*form.fields, *form.files}):
        if len(form.fields.get(name, [])) + len(form.files.get(name, [])) > 1:
            errors.append(_form_error(name, "Give this field once; it was repeated", "repeated"))

    text_fields = {name: values[0] for name, values in form.fields.items() if name != RECEIPT_FIELD}
    fields: ExpenseSubmission | None = None
    try:
        fields = ExpenseSubmission.model_validate(
            text_fields, context={"today": today or service_date(), "max_age_days": max_age_days}
        )
    except ValidationError as exc:
        errors.extend(
            _form_error(".".join(str(part) for part in error["loc"]), error["msg"], error["type"])
            for error in exc.errors()
        )
    for name in form.files:
        if name != RECEIPT_FIELD:
            errors.append(_form_error(name, "Extra inputs are not permitted", "extra_forbidden"))
    if RECEIPT_FIELD in form.fields:
        errors.append(
            _form_error(RECEIPT_FIELD, "Send the receipt as a file, not a text field", "not_a_file")
        )
    elif RECEIPT_FIELD not in form.files:
        errors.append(_form_error(RECEIPT_FIELD, "Field required (a PNG or JPEG file)", "missing"))
    if errors or fields is None:
        raise ApiError(
            422, "validation_error", f"The expense is invalid ({len(errors)} error(s)); see details.", errors
        )
    return Submission(fields=fields, receipt=check_receipt(form.files[RECEIPT_FIELD][0].data))


def check_receipt(data: bytes) -> Receipt:
    """The receipt if it is a PNG or JPEG (by its magic number) of at most 5 MiB that decodes."""
    details = {"field": RECEIPT_FIELD, "size": len(data)}
    if len(data) > RECEIPT_MAX_BYTES:
        raise ApiError(
            413,
            "receipt_too_large",
            f"The receipt is {len(data)} bytes; at most {RECEIPT_MAX_BYTES} bytes (5 MiB) are accepted.",
            details,
        )
    if not data:
        raise ApiError(422, "invalid_receipt", "The receipt file is empty.", details)
    content_type = sniff_image_type(data)
    if content_type is None:
        raise ApiError(
            415,
            "unsupported_receipt_type",
            "The receipt must be a PNG or JPEG image; its content is neither "
            "(the type is read from the bytes, not from the file name or declared content type).",
            details,
        )
    problem = decode_problem(data, content_type)
    if problem is not None:
        raise ApiError(422, "invalid_receipt", f"The receipt is not a usable image: {problem}.", details)
    return Receipt(data=data, content_type=content_type, sha256=hashlib.sha256(data).hexdigest())


def _form_error(name: str, message: str, kind: str) -> dict[str, Any]:
    return {"loc": ["form", name], "msg": message, "type": kind}


# --- records and views ----------------------------------------------------------------------


class ExpenseRecord(ToolResult):
    """An expense as the agent reads it (`get_expense`): the claim, without the image."""

    expense_id: str
    employee_id: str
    amount: str
    currency: str
    date: dt.date
    merchant: str
    description: str
    status: ExpenseStatus
    submitted_at: dt.datetime


class ExpenseView(ExpenseRecord):
    """An expense as the REST endpoints show it: the record, and where its receipt is."""

    receipt_content_type: str
    receipt_size: int
    receipt_url: str


class ExpenseQuery(BaseModel):
    """The filters of `GET /expenses`; an unknown parameter is refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    employee_id: EmployeeId | None = None
    status: ExpenseStatus | None = None


def new_expense_id() -> str:
    """The id of a submission without an Idempotency-Key: nothing to derive it from, so random."""
    return f"{EXPENSE_ID_PREFIX}-{secrets.token_hex(6)}"


def create_expense(
    session: Session,
    submission: Submission,
    *,
    expense_id: str,
    idempotency_key: str | None,
    now: dt.datetime,
) -> ExpenseView:
    """Insert the expense in the caller's transaction (never commits)."""
    fields, receipt = submission.fields, submission.receipt
    expense = Expense(
        expense_id=expense_id,
        idempotency_key=idempotency_key,
        employee_id=fields.employee_id,
        amount=fields.amount,
        currency=fields.currency,
        expense_date=fields.date,
        merchant=fields.merchant,
        description=fields.description,
        receipt_image=receipt.data,
        receipt_content_type=receipt.content_type,
        receipt_size=len(receipt.data),
        receipt_sha256=receipt.sha256,
        status="submitted",
        submitted_at=now,
    )
    session.add(expense)
    session.flush()
    return _view(expense)


def get_expense_view(session: Session, expense_id: str) -> ExpenseView | None:
    expense = session.get(Expense, expense_id)
    return None if expense is None else _view(expense)


def list_expenses(
    session: Session,
    *,
    employee_id: str | None = None,
    status: ExpenseStatus | None = None,
    limit: int = LIST_LIMIT,
) -> list[ExpenseView]:
    """The newest expenses first, optionally of one employee or status."""
    statement = select(Expense)
    if employee_id is not None:
        statement = statement.where(Expense.employee_id == employee_id)
    if status is not None:
        statement = statement.where(Expense.status == status)
    rows = session.scalars(statement.order_by(Expense.submitted_at.desc(), Expense.expense_id).limit(limit))
    return [_view(row) for row in rows]


def get_receipt(session: Session, expense_id: str) -> tuple[bytes, str] | None:
    """The receipt image and its content type."""
    row = session.execute(
        select(Expense.receipt_image, Expense.receipt_content_type).where(Expense.expense_id == expense_id)
    ).one_or_none()
    return None if row is None else (row.receipt_image, row.receipt_content_type)


def _record_fields(expense: Expense) -> dict[str, Any]:
    return {
        "expense_id": expense.expense_id,
        "employee_id": expense.employee_id,
        "amount": format_amount(expense.amount),
        "currency": expense.currency,
        "date": expense.expense_date,
        "merchant": expense.merchant,
        "description": expense.description,
        "status": expense.status,
        "submitted_at": expense.submitted_at,
    }


def _view(expense: Expense) -> ExpenseView:
    return ExpenseView(
        **_record_fields(expense),
        receipt_content_type=expense.receipt_content_type,
        receipt_size=expense.receipt_size,
        receipt_url=f"/expenses/{expense.expense_id}/receipt",
    )


# --- what the other expense tools share -----------------------------------------------------


def unknown_expense(expense_id: str) -> ToolError:
    return ToolError(
        404, "unknown_expense", f"There is no expense with id {expense_id!r}.", {"expense_id": expense_id}
    )


def find_expense(session: Session, expense_id: str, *, for_update: bool = False) -> Expense:
    """The expense, or a 404 ToolError. `for_update` locks its row until the call commits, with
    PostgreSQL's FOR NO KEY UPDATE: it serialises writers of the expense but, unlike FOR UPDATE,
    does not wait for transactions that merely reference it (a ledger posting's foreign key)."""
    statement = select(Expense).where(Expense.expense_id == expense_id)
    if for_update:
        statement = statement.with_for_update(key_share=True)
    expense = session.scalars(statement).one_or_none()
    if expense is None:
        raise unknown_expense(expense_id)
    return expense


def check_claim(expense: Expense, amount: Decimal, currency: str) -> None:
    """422 `amount_mismatch` unless amount and currency are the expense's claim: routing and the
    ledger work on the claim that was verified, never on a figure an LLM passed along."""
    if amount == expense.amount and currency == expense.currency:
        return
    raise ToolError(
        422,
        "amount_mismatch",
        f"The expense {expense.expense_id!r} claims {format_amount(expense.amount)} {expense.currency}, "
        f"not {format_amount(amount)} {currency}.",
        {
            "expense_id": expense.expense_id,
            "claimed": {"amount": format_amount(expense.amount), "currency": expense.currency},
            "given": {"amount": format_amount(amount), "currency": currency},
        },
    )


# --- the tools ------------------------------------------------------------------------------


class GetExpenseArgs(ToolArgs):
    expense_id: ExpenseId


class OcrReceiptArgs(ToolArgs):
    expense_id: ExpenseId


class OcrReceiptResult(ToolResult):
    expense_id: str
    # Merchant and total were found: enough to compare with the claim.
    readable: bool
    merchant: str | None
    date: dt.date | None
    total: str | None
    subtotal: str | None
    tax: str | None
    # TOTAL == SUBTOTAL + TAX to the cent: a misread digit or a doctored total shows here.
    consistent: bool
    text: str
    engine: str


def get_expense(call: ToolCall, args: GetExpenseArgs) -> ExpenseRecord:
    return ExpenseRecord(**_record_fields(find_expense(call.session, args.expense_id)))


@dataclass(frozen=True)
class _ReceiptRead:
    expense_id: str
    # The sha256 of the very bytes OCR read.
    receipt_sha256: str
    reading: ReceiptReading


def _read_expense_receipt(sessions: sessionmaker[Session], args: OcrReceiptArgs) -> _ReceiptRead | None:
    # The prepare step: the image comes out in a short transaction of its own, and OCR (up to
    # OCR_TIMEOUT_SECONDS) runs with no transaction open.
    with sessions.begin() as session:
        image = session.scalar(select(Expense.receipt_image).where(Expense.expense_id == args.expense_id))
    if image is None:
        return None  # ocr_receipt answers 404 in its transaction, where the answer is stored
    return _ReceiptRead(
        expense_id=args.expense_id,
        receipt_sha256=hashlib.sha256(image).hexdigest(),
        reading=read_receipt(image),
    )


def ocr_receipt(call: ToolCall, args: OcrReceiptArgs) -> OcrReceiptResult:
    prepared = call.prepared
    if not isinstance(prepared, _ReceiptRead) or prepared.expense_id != args.expense_id:
        raise unknown_expense(args.expense_id)
    # Locked until commit, as record_expense locks it: an OCR and a booking of one expense
    # serialise, and so do two OCRs under different keys (one replaces the other's check).
    expense = find_expense(call.session, args.expense_id, for_update=True)
    reading = prepared.reading
    record_receipt_check(call, expense, prepared.receipt_sha256, reading)
    return OcrReceiptResult(
        expense_id=args.expense_id,
        readable=reading.readable,
        merchant=reading.merchant,
        date=reading.date,
        total=_optional_amount(reading.total),
        subtotal=_optional_amount(reading.subtotal),
        tax=_optional_amount(reading.tax),
        consistent=reading.consistent,
        text=reading.text,
        engine=reading.engine,
    )


def record_receipt_check(
    call: ToolCall, expense: Expense, receipt_sha256: str, reading: ReceiptReading
) -> None:
    """Write (or replace) the service's record of what OCR read on the expense's receipt."""
    check = call.session.get(ReceiptCheck, expense.expense_id)
    if check is None:
        check = ReceiptCheck(expense_id=expense.expense_id)
        call.session.add(check)
    check.receipt_sha256 = receipt_sha256
    check.readable = reading.readable
    # PostgreSQL refuses NUL in text; what OCR made of the first line is only for people.
    check.merchant = None if reading.merchant is None else reading.merchant.replace("\x00", "")
    check.receipt_date = reading.date
    check.total = reading.total
    check.consistent = reading.consistent
    check.engine = reading.engine[:OCR_ENGINE_MAX_LENGTH]
    check.idempotency_key = call.idempotency_key
    check.checked_at = call.now
    call.session.flush()


def _optional_amount(amount: Decimal | None) -> str | None:
    return None if amount is None else format_amount(amount)


TOOLS: tuple[Tool[Any, Any], ...] = (
    Tool(
        name="get_expense",
        description=(
            "Read an expense claim: employee, amount (a decimal string), currency, date, claimed "
            "merchant, description and status (submitted or recorded)."
        ),
        side_effects=False,
        args_model=GetExpenseArgs,
        result_model=ExpenseRecord,
        run=get_expense,
    ),
    Tool(
        name="ocr_receipt",
        description=(
            "Read the expense's receipt image with OCR (Tesseract): merchant, date, subtotal, tax "
            "and total as printed, whether TOTAL = SUBTOTAL + TAX (consistent), and the raw text. "
            "An unreadable receipt is an answer (readable: false), not an error. The tool service "
            "keeps what it read as the receipt check record_expense requires (a later OCR of the "
            "expense replaces it)."
        ),
        # Still false, although it now writes: the receipt check is the tool service's internal
        # record of its own reading, not an effect on the world (nothing is paid, booked, sent or
        # shown to anyone), and running it again only writes the same reading again. The flag
        # tells a planner which calls need a human's approval; this one needs none.
        side_effects=False,
        args_model=OcrReceiptArgs,
        result_model=OcrReceiptResult,
        run=ocr_receipt,
        prepare=_read_expense_receipt,
    ),
)
