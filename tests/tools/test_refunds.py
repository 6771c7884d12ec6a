"""The refunds domain (tools/domains/refunds): the policy by age, and `issue_refund` paying only
within it, once per order, against an approved ticket of that refund; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from tests.tools.calls import approval_ticket, call_tool, count_rows
from tools.domains.refunds.orders import Order, Refund, policy_limit


def order(client: TestClient, order_id: str, total: str, days_ago: int) -> str:
    with Session(client.app.state.engine) as session, session.begin():  # type: ignore[attr-defined]
        session.add(
            Order(
                order_id=order_id,
                customer="c-1",
                item="Lamp",
                total=Decimal(total),
                currency="USD",
                purchased_on=datetime.now(UTC).date() - timedelta(days=days_ago),
            )
        )
    return order_id


def issue(client: TestClient, key: str, **body: Any) -> Any:
    return call_tool(client, "issue_refund", body, key)


@pytest.mark.parametrize(
    ("days", "limit", "rule"),
    [
        (0, "80.00", "full"),
        (30, "80.00", "full"),
        (31, "40.00", "half"),
        (60, "40.00", "half"),
        (61, "0.00", "no"),
    ],
)
def test_the_policy_refunds_by_age(days: int, limit: str, rule: str) -> None:
    today = date(2026, 6, 1)
    lamp = Order(order_id="ORD-0001", total=Decimal("80.00"), purchased_on=today - timedelta(days=days))
    amount, why = policy_limit(lamp, today)
    assert (f"{amount:.2f}", why.split()[0]) == (limit, rule)


def test_the_demo_orders_are_seeded(client: TestClient) -> None:
    answer = call_tool(client, "get_order", {"order_id": "ORD-1002"}, "k-order")
    assert (
        answer.status_code == 200
        and answer.json()["total"] == "400.00"
        and answer.json()["refunded"] is False
    )


def test_check_refund_policy_says_the_limit(client: TestClient) -> None:
    order_id = order(client, "ORD-2001", "400.00", 45)
    refused = call_tool(client, "check_refund_policy", {"order_id": order_id, "amount": "400.00"}, "k-1")
    assert refused.json() == {
        "allowed": False,
        "max_amount": "200.00",
        "rule": "half refund within 60 days",
        "reason": "400.00 exceeds the limit of 200.00 USD",
    }
    allowed = call_tool(client, "check_refund_policy", {"order_id": order_id, "amount": "200.00"}, "k-2")
    assert allowed.json()["allowed"] is True


def test_an_approved_refund_is_paid_once(client: TestClient) -> None:
    order_id = order(client, "ORD-2002", "120.00", 5)
    ticket = approval_ticket(client, order_id, decided_by="ops-lead", subject=f"refund:{order_id}")
    body = {"order_id": order_id, "amount": "120.00", "approved_by": "ops-lead", "approval_ticket_id": ticket}
    first = issue(client, "k-pay", **body)
    assert first.status_code == 200 and first.json()["already_refunded"] is False
    assert issue(client, "k-pay", **body).json() == first.json()  # the same key replays
    again = issue(client, "k-pay-again", **body)  # another key: the order is refunded already
    assert again.json()["already_refunded"] is True and again.json()["refund_id"] == first.json()["refund_id"]
    assert count_rows(client, Refund, order_id=order_id) == 1


@pytest.mark.parametrize(
    ("case", "changes", "code"),
    [
        ("no such ticket", {"approval_ticket_id": "APR-000000000000"}, "approval_not_recorded"),
        ("another order's ticket", {"subject": "refund:ORD-9999"}, "approval_not_recorded"),
        ("an expense's ticket", {"subject": "expense:EXP-0123456789ab"}, "approval_not_recorded"),
        ("a rejected ticket", {"outcome": "rejected"}, "approval_not_recorded"),
        ("an open ticket", {"outcome": None}, "approval_not_recorded"),
        ("approved by someone else", {"approved_by": "mallory"}, "approval_not_recorded"),
        ("over the policy", {"amount": "100.00"}, "refund_over_policy"),
    ],
)
def test_a_refund_without_its_evidence_is_refused_and_pays_nothing(
    client: TestClient, case: str, changes: dict[str, Any], code: str
) -> None:
    order_id = order(client, "ORD-3001", "120.00", 45)  # half refund: at most 60.00
    ticket_args = {key: changes[key] for key in ("outcome", "subject") if key in changes}
    ticket = approval_ticket(
        client, order_id, decided_by="ops-lead", **{"subject": f"refund:{order_id}", **ticket_args}
    )
    body = {"order_id": order_id, "amount": "60.00", "approved_by": "ops-lead", "approval_ticket_id": ticket}
    body.update({key: value for key, value in changes.items() if key in body})
    refused = issue(client, f"k-{case}", **body)
    assert refused.status_code == 403, (case, refused.text)
    assert refused.json()["error"]["code"] == code
    assert count_rows(client, Refund, order_id=order_id) == 0
