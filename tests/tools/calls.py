"""Small helpers the tool service tests share: calling a tool, counting rows, a movable clock,
submitting an expense, and the evidence record_expense requires (an OCR'd receipt, an approved
ticket)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from common.db import utc_now
from tools.domains.expense.ocr import ReceiptReading, read_receipt
from tools.domains.expense.receipts import render_receipt
from tools.service.idempotency import IdempotencyStore

TICKET = {"title": "Printer on fire", "body": "Third floor, again.", "priority": "high", "requester": "u-1"}


def call_tool(client: TestClient, name: str, body: Any, key: str | None) -> Any:
    """POST a tool call (the response is starlette's TestClient response)."""
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post(f"/tools/{name}", json=body, headers=headers)


def count_rows(client: TestClient, model: type, **equals: Any) -> int:
    statement = select(func.count()).select_from(model)
    for column, value in equals.items():
        statement = statement.where(getattr(model, column) == value)
    with Session(client.app.state.engine) as session:  # type: ignore[attr-defined]
        return int(session.scalar(statement) or 0)


def store_of(client: TestClient) -> IdempotencyStore:
    return client.app.state.store  # type: ignore[attr-defined,no-any-return]


def derived(prefix: str, key: str) -> str:
    """The id a request with this (stored) Idempotency-Key creates."""
    return f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


class MovableClock:
    """The service clock, which a test moves forward instead of sleeping past a lease."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return utc_now() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


# --- expenses -------------------------------------------------------------------------------

# Recent, as the service requires (it refuses claims older than EXPENSE_MAX_AGE_DAYS).
EXPENSE_DATE = datetime.now(UTC).date() - timedelta(days=10)
EXPENSE_FIELDS = {
    "employee_id": "u-1",
    "amount": "18.50",
    "currency": "USD",
    "date": EXPENSE_DATE.isoformat(),
    "merchant": "Blue Bottle Cafe",
    "description": "Working lunch",
}


@lru_cache(maxsize=1)
def receipt_png() -> bytes:
    """A small real receipt totalling 18.50 (rendered once per test session)."""
    return render_receipt(
        "Blue Bottle Cafe",
        EXPENSE_DATE,
        [("Avocado toast", Decimal("11.50")), ("Cold brew coffee", Decimal("5.55"))],
        Decimal("0.085"),
    )


@lru_cache(maxsize=32)
def receipt_totalling(total: str) -> bytes:
    """A real receipt whose TOTAL is `total` (one item, no tax); 18.50 is receipt_png()."""
    if Decimal(total) == Decimal("18.50"):
        return receipt_png()
    return render_receipt("Blue Bottle Cafe", EXPENSE_DATE, [("Catering", Decimal(total))], Decimal("0"))


def submit_expense(
    client: TestClient,
    fields: dict[str, str] | None = None,
    *,
    receipt: bytes | None = None,
    filename: str = "receipt.png",
    declared_type: str = "image/png",
    key: str | None = None,
) -> Any:
    """POST /expenses as a browser form would (the response is starlette's TestClient response)."""
    headers = {} if key is None else {"Idempotency-Key": key}
    files = {"receipt": (filename, receipt_png() if receipt is None else receipt, declared_type)}
    return client.post(
        "/expenses", data=EXPENSE_FIELDS if fields is None else fields, files=files, headers=headers
    )


def new_expense(
    client: TestClient, amount: str = "18.50", currency: str = "USD", *, receipt_total: str | None = None
) -> str:
    """The id of a freshly submitted expense claiming `amount`, with a receipt that totals
    `receipt_total` (by default the amount claimed)."""
    response = submit_expense(
        client,
        {**EXPENSE_FIELDS, "amount": amount, "currency": currency},
        receipt=receipt_totalling(receipt_total or amount),
    )
    assert response.status_code == 201, response.text
    expense_id: str = response.json()["expense_id"]
    return expense_id


# --- the evidence record_expense requires ---------------------------------------------------


@lru_cache(maxsize=64)
def cached_read_receipt(image: bytes, *, timeout_seconds: float = 20) -> ReceiptReading:
    """`ocr.read_receipt`, run once per distinct image per test session: Tesseract reads the same
    bytes the same way, and a test module that records many expenses patches this in as
    `expenses.read_receipt` to stay fast (the tool still runs and records its check)."""
    return read_receipt(image, timeout_seconds=timeout_seconds)


def ocr_expense(client: TestClient, expense_id: str, key: str | None = None) -> dict[str, Any]:
    """Run `ocr_receipt` for the expense through the API: the receipt check record_expense needs."""
    response = call_tool(client, "ocr_receipt", {"expense_id": expense_id}, key or f"ocr:{expense_id}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def verified_expense(
    client: TestClient, amount: str = "18.50", currency: str = "USD", *, receipt_total: str | None = None
) -> str:
    """A freshly submitted expense whose receipt the tool service has OCR'd."""
    expense_id = new_expense(client, amount, currency, receipt_total=receipt_total)
    ocr_expense(client, expense_id)
    return expense_id


APPROVAL_REQUEST = {
    "agent": "ExpenseReport",
    "approval_hash": "ab" * 32,
    "summary": "Expense to approve",
    "approvers": ["team-lead", "finance-lead"],
    "deadline": "2030-01-01T12:00:00Z",
}


def approval_ticket(
    client: TestClient,
    expense_id: str,
    *,
    outcome: str | None = "approved",
    decided_by: str | None = "team-lead",
    subject: str | None = None,
    task_id: str | None = None,
) -> str:
    """The id of an approval ticket whose subject is the expense (or `subject`), closed with
    `outcome` by `decided_by` (left open when `outcome` is None), as the agent's gate does it."""
    body = {
        **APPROVAL_REQUEST,
        "task_id": task_id or f"task-{expense_id}",
        "subject": subject or f"expense:{expense_id}",
    }
    key = f"{body['task_id']}:WAIT_APPROVAL.0:0"
    opened = call_tool(client, "request_approval", body, key)
    assert opened.status_code == 200, opened.text
    ticket_id: str = opened.json()["approval_ticket_id"]
    if outcome is not None:
        closed = call_tool(
            client,
            "close_approval",
            {"approval_ticket_id": ticket_id, "outcome": outcome, "decided_by": decided_by},
            f"{key}:close",
        )
        assert closed.status_code == 200, closed.text
    return ticket_id
