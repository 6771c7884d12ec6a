"""Small helpers the tool service tests share: calling a tool, counting rows, a movable clock,
submitting an expense."""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from tools.db import utc_now
from tools.idempotency import IdempotencyStore
from tools.receipts import render_receipt

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

EXPENSE_FIELDS = {
    "employee_id": "u-1",
    "amount": "18.50",
    "currency": "USD",
    "date": "2025-03-14",
    "merchant": "Blue Bottle Cafe",
    "description": "Working lunch",
}


@lru_cache(maxsize=1)
def receipt_png() -> bytes:
    """A small real receipt (rendered once per test session)."""
    return render_receipt(
        "Blue Bottle Cafe",
        date(2025, 3, 14),
        [("Avocado toast", Decimal("11.50")), ("Cold brew coffee", Decimal("5.55"))],
        Decimal("0.085"),
    )


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


def new_expense(client: TestClient, amount: str = "18.50", currency: str = "USD") -> str:
    """The id of a freshly submitted expense claiming `amount`."""
    response = submit_expense(client, {**EXPENSE_FIELDS, "amount": amount, "currency": currency})
    assert response.status_code == 201, response.text
    expense_id: str = response.json()["expense_id"]
    return expense_id
