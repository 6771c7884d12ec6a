"""RefundDesk, the agent written only against the public API, end to end on the real stack in both
modes: a full refund, the ASSESS <-> CHECK loop when the policy refuses, a declined order, and a
refund nobody approved refused by the tool service itself."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy.orm import Session

from common.db import make_engine
from deploy.local import Stack
from tests.integration.flows import new_task_id, wait_parked
from tools.domains.refunds.orders import Order

END = {"COMPLETE", "DECLINED", "FAILED"}


def new_order(stack: Stack, total: str, days_ago: int) -> str:
    """An order of its own for each test, written into the stack's database as a shop would."""
    order_id = f"ORD-{random.randrange(10**9):09d}"
    engine = make_engine(stack.database_url)
    try:
        with Session(engine) as session, session.begin():
            session.add(
                Order(
                    order_id=order_id,
                    customer="c-test",
                    item="Desk lamp",
                    total=Decimal(total),
                    currency="USD",
                    purchased_on=datetime.now(UTC).date() - timedelta(days=days_ago),
                )
            )
    finally:
        engine.dispose()
    return order_id


def request_refund(stack: Stack, order_id: str, reason: str = "it arrived broken") -> str:
    task_id = new_task_id("refund")
    stack.send("RefundDesk", task_id, "run", {"order_id": order_id, "reason": reason})
    return task_id


def approve_and_finish(stack: Stack, task_id: str) -> dict[str, Any]:
    pending = wait_parked(stack, task_id, agent="RefundDesk")["pending_approval"]
    assert pending["approvers"] == ["ops-lead"]
    assert stack.decide("RefundDesk", task_id, "approve").status_code == 200
    return stack.wait_for_state("RefundDesk", task_id, END)


def states(view: dict[str, Any]) -> list[str]:
    return [entry["to_state"] for entry in view["history"]]


def test_a_recent_order_is_refunded_in_full_once_approved(any_stack: Stack) -> None:
    order_id = new_order(any_stack, "120.00", days_ago=5)
    task_id = request_refund(any_stack, order_id)
    view = approve_and_finish(any_stack, task_id)
    assert view["state"] == "COMPLETE", view
    assert states(view) == ["LOOKUP", "ASSESS", "CHECK", "WAIT_APPROVAL", "ISSUE", "COMPLETE"]
    assert view["result"]["amount"] == "120.00" and view["result"]["approved_by"] == "ops-lead"
    # A second request for the same order is declined: one refund per order.
    again = request_refund(any_stack, order_id)
    assert any_stack.wait_for_state("RefundDesk", again, END)["state"] == "DECLINED"


def test_a_refused_proposal_is_revised_within_the_policy(any_stack: Stack) -> None:
    order_id = new_order(any_stack, "400.00", days_ago=45)
    task_id = request_refund(any_stack, order_id, "changed my mind")
    view = approve_and_finish(any_stack, task_id)
    assert view["state"] == "COMPLETE", view
    # The loop: the full price was refused (over the half-refund limit), the revision allowed.
    assert states(view) == [
        "LOOKUP",
        "ASSESS",
        "CHECK",
        "ASSESS",
        "CHECK",
        "WAIT_APPROVAL",
        "ISSUE",
        "COMPLETE",
    ]
    assert [v["allowed"] for v in view["data"]["verdicts"]] == [False, True]
    assert view["result"]["amount"] == "200.00"
    revise = next(e for e in view["history"] if e["from_state"] == "CHECK" and e["to_state"] == "ASSESS")
    assert revise["note"].startswith("revise 1 of 2")


def test_an_order_past_the_window_is_declined_without_asking_anyone(stack: Stack) -> None:
    task_id = request_refund(stack, new_order(stack, "90.00", days_ago=90))
    view = stack.wait_for_state("RefundDesk", task_id, END)
    assert view["state"] == "DECLINED" and view["approvals"] == []
    assert view["result"] == {"declined": "no refund after 60 days"}


def test_the_tool_service_pays_no_refund_nobody_approved(stack: Stack) -> None:
    order_id = new_order(stack, "50.00", days_ago=1)
    args = {
        "order_id": order_id,
        "amount": "50.00",
        "approved_by": "ops-lead",
        "approval_ticket_id": "APR-000000000000",
    }
    url = f"{stack.tools_url}/tools/issue_refund"
    direct = httpx.post(
        url, json=args, headers={**stack.tools_auth, "Idempotency-Key": f"x-{order_id}"}, timeout=30
    )
    assert direct.status_code == 403 and direct.json()["error"]["code"] == "approval_not_recorded"
    # Another agent may not even call it.
    other = {**stack.tools_auth, "Idempotency-Key": f"y-{order_id}", "X-Agent": "AgentTask"}
    refused = httpx.post(url, json=args, headers=other, timeout=30)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "tool_not_granted"
    # Bad input at the start: 400, no task.
    bad = stack.call("RefundDesk", new_task_id("refund"), "run", {"order_id": "1001", "reason": "x"})
    assert bad.status_code == 400 and "order_id" in bad.text
