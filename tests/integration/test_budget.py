"""Durable budgets against the real stack, normal and always-replay: a task whose next step would
go over its budget parks at BUDGET instead; a human extends it (the task resumes where it
stopped and acts once) or stops it (FAILED, nothing more done). A task's input may lower the
agent's budget, never raise it, and a malformed budget is a 400 that leaves nothing behind."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.agents.agent_task import AGENT
from app.audit.event_log import store_for
from deploy.local import Stack, wait_until
from tests.integration.flows import END, new_task_id, wait_parked


def tickets_titled(stack: Stack, marker: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = stack.tools_get("/tickets").json()["tickets"]
    return [ticket for ticket in found if marker in ticket["title"]]


def start_budgeted(stack: Stack, budget: dict[str, Any]) -> tuple[str, str]:
    """An AgentTask that acts (one ticket) under `budget`; (task id, the marker in its title)."""
    task_id, marker = new_task_id("budget"), uuid.uuid4().hex[:10]
    stack.send(
        "AgentTask", task_id, "run", {"user_id": "u-1", "task": f"Open a ticket: {marker}", "budget": budget}
    )
    return task_id, marker


def wait_at_budget(stack: Stack, task_id: str) -> dict[str, Any]:
    """Approve the plan when it waits for that, then wait for the budget gate's request."""
    plan = wait_parked(stack, task_id)
    assert plan["state"] == "WAIT_APPROVAL", plan
    assert (
        stack.decide(
            "AgentTask", task_id, approval_hash=plan["pending_approval"]["approval_hash"]
        ).status_code
        == 200
    )
    seen: dict[str, Any] = {}

    def at_budget() -> bool:
        seen.update(stack.status("AgentTask", task_id))
        assert seen["state"] not in END, seen
        return seen["state"] == "BUDGET" and bool((seen["pending_approval"] or {}).get("approval_ticket_id"))

    wait_until(at_budget, timeout=60, interval=0.1, what=f"{task_id} to wait at its budget gate")
    return seen


def budget_stops(stack: Stack) -> float:
    answer = httpx.get(f"{stack.approvals_url}/metrics", headers=stack.operator_auth, timeout=30)
    return sum(
        sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
        if sample.name == "agent_budget_stops_total"
        and sample.labels == {"agent": "AgentTask", "limit": "tool_calls"}
    )


def test_a_task_over_its_budget_parks_and_an_extension_lets_it_finish_once(any_stack: Stack) -> None:
    # One tool call allowed: the user's history. The ticket would be the second.
    stops_before = budget_stops(any_stack)
    task_id, marker = start_budgeted(any_stack, {"max_tool_calls": 1})
    waiting = wait_at_budget(any_stack, task_id)
    assert budget_stops(any_stack) == stops_before + 1  # once, however often the step replays
    pending = waiting["pending_approval"]
    assert pending["state"] == "BUDGET" and pending["approvers"] == ["ops-lead"]
    assert "1 of 1 tool calls made" in pending["summary"] and "extend tool_calls to 2" in pending["summary"]
    assert pending["details"]["stopped_in"] == "EXECUTE" and pending["details"]["limit"] == "tool_calls"
    assert waiting["spend"]["tool_calls"] == 1 and waiting["budget"]["max_tool_calls"] == 1
    assert tickets_titled(any_stack, marker) == []  # the step over the budget never started

    assert any_stack.decide("AgentTask", task_id, approval_hash=pending["approval_hash"]).status_code == 200
    view = any_stack.wait_for_state("AgentTask", task_id, END)
    assert view["state"] == "COMPLETE", view
    assert [ticket["title"] for ticket in tickets_titled(any_stack, marker)] == [f"Open a ticket: {marker}"]
    assert view["spend"]["tool_calls"] == 2 and view["budget"]["max_tool_calls"] == 2
    states = [entry["to_state"] for entry in view["history"]]
    assert states[-5:] == ["EXECUTE", "BUDGET", "EXECUTE", "VERIFY", "COMPLETE"]
    assert view["history"][-3]["note"] == "budget extended by ops-lead: tool_calls to 2"
    [plan, budget] = view["approvals"]
    assert (plan["state"], budget["state"], budget["outcome"]) == ("WAIT_APPROVAL", "BUDGET", "approve")
    events = store_for(any_stack.database_url).events("AgentTask", task_id)
    [stopped] = [event for event in events if event.to_state == "BUDGET"]
    assert stopped.payload["budget_stop"] == {
        "state": "EXECUTE",
        "limit": "tool_calls",
        "reason": "1 of 1 tool calls made",
    }
    assert [event.payload["budget"]["max_tool_calls"] for event in events if "budget" in event.payload] == [
        1,
        2,
    ]


def test_a_human_stops_a_task_at_its_budget_and_nothing_more_is_done(any_stack: Stack) -> None:
    task_id, marker = start_budgeted(any_stack, {"max_tool_calls": 1})
    pending = wait_at_budget(any_stack, task_id)["pending_approval"]
    answer = any_stack.decide(
        "AgentTask", task_id, "reject", comment="enough", approval_hash=pending["approval_hash"]
    )
    assert answer.status_code == 200, answer.text
    view = any_stack.wait_for_state("AgentTask", task_id, END)
    assert view["state"] == "FAILED"
    assert view["error"]["code"] == "budget_stopped" and view["error"]["state"] == "EXECUTE"
    assert "stopped by ops-lead at its budget: 1 of 1 tool calls made" in view["error"]["message"]
    assert tickets_titled(any_stack, marker) == []
    assert view["spend"]["tool_calls"] == 1


def test_an_input_may_lower_the_budget_never_raise_it(stack: Stack) -> None:
    task_id = new_task_id("budget")
    budget = {"max_tool_calls": 10_000, "max_cost_usd": "0.25"}
    stack.send(
        "AgentTask", task_id, "run", {"user_id": "u-1", "task": "Summarize my history", "budget": budget}
    )
    view = stack.wait_for_state("AgentTask", task_id, END)
    assert view["state"] == "COMPLETE", view
    assert view["budget"]["max_tool_calls"] == AGENT.budget.max_tool_calls  # not raised
    assert view["budget"]["max_cost_usd"] == "0.25"  # lowered
    assert view["budget"]["max_tokens"] == AGENT.budget.max_tokens


def test_a_malformed_budget_is_a_400_naming_it_and_leaves_no_task(stack: Stack) -> None:
    task_id = new_task_id("budget")
    answer = stack.call(
        "AgentTask", task_id, "run", {"user_id": "u-1", "task": "x", "budget": {"max_tool_calls": -1}}
    )
    assert answer.status_code == 400, answer.text
    assert "budget.max_tool_calls" in answer.text
    unknown = stack.call(
        "AgentTask", task_id, "run", {"user_id": "u-1", "task": "x", "budget": {"max_fun": 1}}
    )
    assert unknown.status_code == 400 and "budget.max_fun" in unknown.text
    assert stack.call("AgentTask", task_id, "status").status_code == 404


def test_a_task_out_of_time_parks_and_each_extension_gives_it_as_much_again(any_stack: Stack) -> None:
    """The wall-clock limit, from journaled times only: a task allowed a millisecond passes its
    first check (no time gone yet) and is stopped at the next; an extension gives it a millisecond
    more from the decision, which is gone before its next call, so it parks again; stopping it then
    ends it with nothing acted on."""
    task_id, marker = start_budgeted(any_stack, {"max_seconds": 0.001})
    requests: list[str] = []

    def at_budget_again() -> bool:
        view = any_stack.status("AgentTask", task_id)
        assert view["state"] not in END, view
        pending = view["pending_approval"] or {}
        ready = view["state"] == "BUDGET" and pending.get("approval_ticket_id")
        if ready and pending["approval_hash"] not in requests:
            assert pending["details"]["limit"] == "seconds", pending
            assert "seconds gone" in pending["details"]["reason"]
            requests.append(pending["approval_hash"])
            return True
        return False

    wait_until(at_budget_again, timeout=60, interval=0.1, what=f"{task_id} to run out of time")
    assert any_stack.decide("AgentTask", task_id, approval_hash=requests[0]).status_code == 200
    wait_until(at_budget_again, timeout=60, interval=0.1, what=f"{task_id} to run out of time again")
    answer = any_stack.decide("AgentTask", task_id, "reject", approval_hash=requests[1])
    assert answer.status_code == 200, answer.text
    view = any_stack.wait_for_state("AgentTask", task_id, END)
    assert view["state"] == "FAILED" and view["error"]["code"] == "budget_stopped", view
    assert view["budget"]["max_seconds"] > 0.001  # extended once, from the decision
    assert [a["outcome"] for a in view["approvals"]] == ["approve", "reject"]
    assert tickets_titled(any_stack, marker) == []
