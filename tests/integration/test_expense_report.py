"""ExpenseReport end to end against the real stack: real OCR, routing, the human gate, the ledger.

Runs in the normal and in the always-replay mode; every test seeds its own expenses through the
tool service's real `POST /expenses` (rendered receipts), so ledger counts are exact per test.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from app.settings import DEV_WEBHOOK_SECRET
from deploy.local import Stack
from tests.integration.flows import END, wait_parked
from tools.domains.expense.seed import seed_expenses

AUTO_APPROVED_PATH = ["FETCH", "VERIFY", "CLASSIFY", "ROUTE", "RECORD", "COMPLETE"]


def seeded(stack: Stack) -> dict[str, str]:
    """Seed a fresh batch of the sample expenses; label -> expense id."""
    with httpx.Client(base_url=stack.tools_url, timeout=60, headers=stack.expenses_auth) as client:
        return {item.label: item.expense_id for item in seed_expenses(client, batch=uuid.uuid4().hex[:8])}


def postings(stack: Stack, expense_id: str) -> list[dict[str, Any]]:
    response = stack.tools_get("/ledger", {"expense_id": expense_id})
    response.raise_for_status()
    rows: list[dict[str, Any]] = response.json()["postings"]
    return rows


def run_report(stack: Stack, expense_id: str) -> str:
    task_id = f"report-{expense_id}"
    stack.send("ExpenseReport", task_id, "run", {"expense_id": expense_id})
    return task_id


def wait_waiting(stack: Stack, task_id: str) -> dict[str, Any]:
    return wait_parked(stack, task_id, timeout=90, agent="ExpenseReport")


def decide(stack: Stack, task_id: str, view: dict[str, Any], decision: str) -> httpx.Response:
    pending = view["pending_approval"]
    body = {
        "agent": "ExpenseReport",
        "task_id": task_id,
        "decision": decision,
        "approver": pending["approvers"][0],
        "comment": f"{decision} in the test",
        "approval_hash": pending["approval_hash"],
    }
    return stack.signed_webhook(body, DEV_WEBHOOK_SECRET)


def assert_balanced(posting: dict[str, Any]) -> None:
    debits = sum(float(line["debit"]) for line in posting["lines"])
    credits = sum(float(line["credit"]) for line in posting["lines"])
    assert debits == credits > 0, posting


def test_small_meal_is_auto_approved_and_posted_once(any_stack: Stack) -> None:
    expense_id = seeded(any_stack)["small-lunch"]
    task_id = run_report(any_stack, expense_id)
    view = any_stack.wait_for_state("ExpenseReport", task_id, END, timeout=90)
    assert view["state"] == "COMPLETE", view
    assert [e["to_state"] for e in view["history"]] == AUTO_APPROVED_PATH
    assert view["approvals"] == []
    assert view["result"]["approval"] == "auto" and view["result"]["approved_by"] == "policy:auto-approval"
    assert view["data"]["classification"]["category"] == "meals"
    [posting] = postings(any_stack, expense_id)
    assert posting["posting_id"] == view["result"]["posting_id"]
    assert_balanced(posting)


def test_hotel_stay_waits_for_the_routed_approver_then_posts_once(any_stack: Stack) -> None:
    expense_id = seeded(any_stack)["hotel-stay"]
    task_id = run_report(any_stack, expense_id)
    waiting = wait_waiting(any_stack, task_id)
    routing = waiting["data"]["routing"]
    assert waiting["pending_approval"]["approvers"] == routing["approvers"]
    assert waiting["data"]["receipt"]["total_matches"] is True
    assert postings(any_stack, expense_id) == []

    assert decide(any_stack, task_id, waiting, "approve").status_code == 200
    view = any_stack.wait_for_state("ExpenseReport", task_id, END, timeout=90)
    assert view["state"] == "COMPLETE", view
    assert view["result"]["approval"] == "human"
    assert view["result"]["approved_by"] == routing["approvers"][0]
    [posting] = postings(any_stack, expense_id)
    assert posting["approved_by"] == routing["approvers"][0]
    assert_balanced(posting)


def test_rejected_report_fails_and_posts_nothing(any_stack: Stack) -> None:
    expense_id = seeded(any_stack)["conference-flight"]
    task_id = run_report(any_stack, expense_id)
    waiting = wait_waiting(any_stack, task_id)
    assert decide(any_stack, task_id, waiting, "reject").status_code == 200
    view = any_stack.wait_for_state("ExpenseReport", task_id, END, timeout=90)
    assert view["state"] == "FAILED"
    assert view["error"]["code"] == "approval_rejected"
    assert postings(any_stack, expense_id) == []


def test_mismatching_receipt_fails_at_verify_before_anything_else(any_stack: Stack) -> None:
    expense_id = seeded(any_stack)["mismatch-taxi"]
    task_id = run_report(any_stack, expense_id)
    view = any_stack.wait_for_state("ExpenseReport", task_id, END, timeout=90)
    assert view["state"] == "FAILED"
    assert view["error"]["state"] == "VERIFY" and view["error"]["code"] == "receipt_mismatch"
    assert "does not match the claimed" in view["error"]["message"]
    assert view["data"]["classification"] is None and view["data"]["routing"] is None
    assert postings(any_stack, expense_id) == []


def test_unknown_expense_fails_with_the_tool_services_reason(stack: Stack) -> None:
    task_id = run_report(stack, "EXP-000000000000")
    view = stack.wait_for_state("ExpenseReport", task_id, END, timeout=60)
    assert view["state"] == "FAILED" and view["error"]["state"] == "FETCH"
    assert "404" in view["error"]["message"]


def test_malformed_run_input_is_a_400(stack: Stack) -> None:
    response = stack.call("ExpenseReport", "bad-report", "run", {"expense": "x"})
    assert response.status_code == 400
    assert "expense_id" in response.text
