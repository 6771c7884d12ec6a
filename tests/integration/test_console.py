"""The console's API against the real stack: who may read it, the task list and its filters, a
task's page (diagram, timeline with its chain, approvals, journal, the receipt), the live stream,
and a tampered event log shown as broken."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.approvals.identity import credentials_for
from app.audit.event_log import event_log_url
from deploy.local import Stack, wait_until
from tests.integration.flows import END, new_task_id, start, wait_parked
from tests.integration.test_expense_report import run_report, seeded, wait_waiting

API = "/console/api"


@dataclass
class Tasks:
    """An expense waiting for travel-manager, one that failed at VERIFY, and an AgentTask waiting."""

    hotel: str
    hotel_expense: str
    taxi: str
    agent_task: str


@pytest.fixture(scope="module")
def tasks(stack: Stack) -> Tasks:
    expenses = seeded(stack)
    hotel, taxi = run_report(stack, expenses["hotel-stay"]), run_report(stack, expenses["mismatch-taxi"])
    agent_task = new_task_id("console")
    start(stack, agent_task, "open a ticket: the console test")
    wait_waiting(stack, hotel)
    stack.wait_for_state("ExpenseReport", taxi, END, timeout=90)
    wait_parked(stack, agent_task)
    return Tasks(hotel, expenses["hotel-stay"], taxi, agent_task)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def operator(stack: Stack) -> dict[str, str]:
    return stack.operator_auth


@pytest.fixture(scope="module")
def travel_manager(stack: Stack) -> dict[str, str]:
    return bearer(stack.approver_credential("travel-manager"))


def get(stack: Stack, path: str, headers: dict[str, str], **params: Any) -> httpx.Response:
    return httpx.get(f"{stack.approvals_url}{path}", headers=headers, params=params, timeout=30)


def test_the_page_and_its_library_hold_no_data_and_everything_else_needs_a_credential(
    stack: Stack, tasks: Tasks
) -> None:
    page = httpx.get(f"{stack.approvals_url}/console", timeout=10)
    assert page.status_code == 200 and "<title>Agent console</title>" in page.text
    assert page.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert "script-src 'self' 'sha256-" in page.text and "unsafe-eval" not in page.text
    library = httpx.get(f"{stack.approvals_url}/console/assets/mermaid.min.js", timeout=10)
    assert library.status_code == 200 and library.headers["content-type"].startswith("text/javascript")
    paths = [
        f"{API}/tasks",
        f"{API}/tasks/ExpenseReport/{tasks.hotel}",
        f"{API}/tasks/ExpenseReport/{tasks.hotel}/receipt",
        f"{API}/changes",
    ]
    # A stranger, a guessed token, the webhook's secret and a revoked credential are all refused.
    revoked = stack.approver_credential("console-revoked")
    assert credentials_for(stack.database_url).revoke("console-revoked") == 1
    for path in paths:
        for headers in ({}, bearer("guess"), bearer(stack.webhook_secret), bearer(revoked)):
            answer = get(stack, path, headers)
            assert answer.status_code == 401, (path, headers, answer.text)
            assert answer.json()["error"]["code"] == "unauthorized"


def test_the_list_shows_every_task_with_its_status_newest_first(
    stack: Stack, tasks: Tasks, operator: dict[str, str]
) -> None:
    answer = get(stack, f"{API}/tasks", operator, limit=500)
    assert answer.status_code == 200, answer.text
    page = answer.json()
    assert page["signed_in_as"] is None and {"AgentTask", "ExpenseReport"} <= set(page["agents"])
    rows = {row["task_id"]: row for row in page["tasks"]}
    assert rows[tasks.hotel]["status"] == "waiting" and rows[tasks.hotel]["state"] == "WAIT_APPROVAL"
    assert rows[tasks.taxi]["status"] == "failed" and rows[tasks.taxi]["error"]["code"] == "receipt_mismatch"
    assert rows[tasks.agent_task]["status"] == "waiting"
    created = [row["created_at"] for row in page["tasks"]]
    assert created == sorted(created, reverse=True)


def test_the_list_filters_pages_and_refuses_a_bad_query(
    stack: Stack, tasks: Tasks, travel_manager: dict[str, str]
) -> None:
    failed = get(stack, f"{API}/tasks", travel_manager, status="failed", agent="ExpenseReport").json()
    assert failed["signed_in_as"] == "travel-manager"
    assert tasks.taxi in [row["task_id"] for row in failed["tasks"]]
    assert all(row["status"] == "failed" for row in failed["tasks"])
    found = get(stack, f"{API}/tasks", travel_manager, search=tasks.hotel.removeprefix("report-")).json()
    assert [row["task_id"] for row in found["tasks"]] == [tasks.hotel]
    one = get(stack, f"{API}/tasks", travel_manager, limit=1, offset=1).json()
    assert len(one["tasks"]) == 1 and one["offset"] == 1 and one["total"] >= 3
    for params in (
        {"status": "sleeping"},
        {"limit": "0"},
        {"limit": "x"},
        {"offset": "-1"},
        {"agent": "Nope"},
    ):
        refused = get(stack, f"{API}/tasks", travel_manager, **params)
        assert refused.status_code == 422, (params, refused.text)
        assert refused.json()["error"]["code"] == "invalid_query"
    assert "registered agents" in get(stack, f"{API}/tasks", travel_manager, agent="Nope").text


def test_a_waiting_expense_page_says_what_is_approved_and_who_may(
    stack: Stack, tasks: Tasks, travel_manager: dict[str, str], operator: dict[str, str]
) -> None:
    answer = get(stack, f"{API}/tasks/ExpenseReport/{tasks.hotel}", travel_manager)
    assert answer.status_code == 200, answer.text
    detail = answer.json()
    assert detail["status"] == "waiting" and detail["may_decide"] is True
    pending = detail["view"]["pending_approval"]
    assert pending["approvers"] == ["travel-manager"] and "awakeable_id" not in pending
    assert pending["details"]["expense"]["expense_id"] == tasks.hotel_expense
    assert [event["seq"] for event in detail["events"]] == list(range(1, len(detail["events"]) + 1))
    assert detail["events"][-1]["to_state"] == "WAIT_APPROVAL"
    assert detail["chain"] == {"ok": True, "events": len(detail["events"]), "broken": None}
    diagram = detail["diagram"]
    assert diagram["mermaid"].startswith("stateDiagram-v2")
    assert "class WAIT_APPROVAL current" in diagram["mermaid"]
    assert "class CLASSIFY,FETCH,ROUTE,VERIFY visited" in diagram["mermaid"]
    [invocation] = detail["invocations"]
    assert invocation["describe"] == f"restate invocations describe {invocation['id']}"
    assert detail["restate_ui"] == f"{stack.admin_url}/ui/"
    assert detail["tools"]["record_expense"] is True and detail["tools"]["get_expense"] is False
    # The operator reads the same page but may not decide; nor may an approver of another gate.
    assert get(stack, f"{API}/tasks/ExpenseReport/{tasks.hotel}", operator).json()["may_decide"] is False
    lead = bearer(stack.approver_credential("ops-lead"))
    assert get(stack, f"{API}/tasks/ExpenseReport/{tasks.hotel}", lead).json()["may_decide"] is False
    # And the server refuses that approver's decision, whatever a page offered.
    refused = httpx.post(
        f"{stack.approvals_url}/inbox/decide",
        headers=lead,
        json={
            "agent": "ExpenseReport",
            "task_id": tasks.hotel,
            "decision": "approve",
            "approval_hash": pending["approval_hash"],
        },
        timeout=30,
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "not_an_approver"


def test_the_receipt_is_the_expenses_own_and_only_that(
    stack: Stack, tasks: Tasks, travel_manager: dict[str, str]
) -> None:
    detail = get(stack, f"{API}/tasks/ExpenseReport/{tasks.hotel}", travel_manager).json()
    receipt = get(stack, detail["receipt_url"], travel_manager)
    assert receipt.status_code == 200 and receipt.headers["content-type"] == "image/png"
    assert receipt.headers["x-content-type-options"] == "nosniff"
    original = stack.tools_get(f"/receipts/{tasks.hotel_expense}")
    assert receipt.content == original.content and len(receipt.content) > 1000
    none = get(stack, f"{API}/tasks/AgentTask/{tasks.agent_task}/receipt", travel_manager)
    assert none.status_code == 404 and none.json()["error"]["code"] == "no_receipt"
    assert (
        get(stack, f"{API}/tasks/AgentTask/{tasks.agent_task}", travel_manager).json()["receipt_url"] is None
    )


def test_a_failed_task_and_an_unknown_one(stack: Stack, tasks: Tasks, operator: dict[str, str]) -> None:
    detail = get(stack, f"{API}/tasks/ExpenseReport/{tasks.taxi}", operator).json()
    assert detail["status"] == "failed" and detail["view"]["error"]["code"] == "receipt_mismatch"
    assert "class FAILED current" in detail["diagram"]["mermaid"]
    for path, code in (
        (f"{API}/tasks/ExpenseReport/no-such-task", "unknown_task"),
        (f"{API}/tasks/Nope/{tasks.taxi}", "unknown_agent"),
        (f"{API}/tasks/Nope/{tasks.taxi}/receipt", "unknown_agent"),
    ):
        answer = get(stack, path, operator)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == code, answer.text


def test_a_plan_shows_which_calls_have_side_effects(
    stack: Stack, tasks: Tasks, operator: dict[str, str]
) -> None:
    detail = get(stack, f"{API}/tasks/AgentTask/{tasks.agent_task}", operator).json()
    steps = detail["view"]["pending_approval"]["details"]["plan"]["steps"]
    assert steps and all(step["tool"] in detail["tools"] for step in steps)
    assert detail["tools"]["create_ticket"] is True and detail["tools"]["lookup_user_history"] is False
    # Waiting after ANALYZE and PLAN: two model calls (offline: free), each in the event log.
    spend = detail["view"]["spend"]
    assert (spend["llm_calls"], spend["cost_usd"]) == (2, "0")
    used = [usage["step"] for event in detail["events"] for usage in event["payload"].get("usage", [])]
    assert used == ["ANALYZE llm analyze", "PLAN llm plan"]


@pytest.fixture
def stream(stack: Stack, operator: dict[str, str]) -> Iterator[list[dict[str, Any]]]:
    """The live stream, read by a thread into a list of its events until the test ends."""
    received: list[dict[str, Any]] = []
    connection: list[socket.socket] = []

    def read() -> None:
        with httpx.Client(timeout=httpx.Timeout(60, read=30)) as client:
            with client.stream("GET", f"{stack.approvals_url}{API}/changes", headers=operator) as answer:
                assert answer.status_code == 200 and answer.headers["content-type"].startswith(
                    "text/event-stream"
                )
                connection.append(answer.extensions["network_stream"].get_extra_info("socket"))
                name = ""
                try:
                    for line in answer.iter_lines():
                        if line.startswith("event: "):
                            name = line.removeprefix("event: ")
                        elif line.startswith("data: "):
                            received.append({"event": name, **json.loads(line.removeprefix("data: "))})
                except httpx.HTTPError:
                    return  # the test is over: its end shut the connection

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_until(lambda: any(item["event"] == "ready" for item in received), timeout=30, what="the stream")
    yield received
    # Shut the connection down: the reader is blocked until the next line (a heartbeat: 15 s).
    connection[0].shutdown(socket.SHUT_RDWR)
    reader.join(timeout=10)
    assert not reader.is_alive()


def test_the_live_stream_says_when_a_task_moves(stack: Stack, stream: list[dict[str, Any]]) -> None:
    task_id = new_task_id("live")
    start(stack, task_id, "open a ticket: seen live")

    def seen_waiting() -> bool:
        moves = [move for item in stream if item["event"] == "moved" for move in item["moves"]]
        return any(m["task_id"] == task_id and m["state"] == "WAIT_APPROVAL" for m in moves)

    wait_until(seen_waiting, timeout=60, what=f"the stream to show {task_id} waiting")


def test_an_edited_event_shows_as_a_broken_chain(
    stack: Stack, tasks: Tasks, operator: dict[str, str]
) -> None:
    """Someone with the database edits the failed expense's second event: the page says where."""
    path = Path(event_log_url(stack.database_url).removeprefix("sqlite:///"))
    where = "WHERE agent = 'ExpenseReport' AND task_id = ? AND seq = 2"
    with sqlite3.connect(path) as connection:
        [(original,)] = connection.execute(f"SELECT payload FROM task_events {where}", (tasks.taxi,))
        connection.execute(f"UPDATE task_events SET payload = ? {where}", ('{"note": "edited"}', tasks.taxi))
    try:
        detail = get(stack, f"{API}/tasks/ExpenseReport/{tasks.taxi}", operator).json()
    finally:
        # Put it back: this stack's other tests verify every chain.
        with sqlite3.connect(path) as connection:
            connection.execute(f"UPDATE task_events SET payload = ? {where}", (original, tasks.taxi))
    assert detail["chain"]["ok"] is False
    assert detail["chain"]["broken"]["seq"] == 2
    assert detail["chain"]["broken"]["problem"] == "content does not match its hash"
    restored = get(stack, f"{API}/tasks/ExpenseReport/{tasks.taxi}", operator).json()
    assert restored["chain"]["ok"] is True
