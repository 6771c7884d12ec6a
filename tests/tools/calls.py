"""Small helpers the tool service tests share: calling a tool, counting rows, a movable clock."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from tools.db import utc_now
from tools.idempotency import IdempotencyStore

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
