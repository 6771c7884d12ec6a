"""AgentTask against the real Restate server, through the ingress, in both modes."""

from __future__ import annotations

import re
from typing import Any

from deploy.local import Stack
from tests.integration.flows import (
    END,
    HAPPY_PATH,
    assert_one_event_per_transition,
    new_task_id,
    run_approved,
    start,
    wait_parked,
)


def tickets(stack: Stack) -> list[dict[str, Any]]:
    response = stack.tools_get("/tickets")
    response.raise_for_status()
    found: list[dict[str, Any]] = response.json()["tickets"]
    return found


def test_task_reaches_complete_through_the_ingress(any_stack: Stack) -> None:
    task_id = new_task_id()
    view = run_approved(any_stack, task_id, "Open a ticket: the VPN is broken")
    assert view["task_id"] == task_id
    assert view["state"] == "COMPLETE" and view["terminal"] is True
    assert view["error"] is None
    assert view["model"] == "offline"
    states = [entry["to_state"] for entry in view["history"]]
    assert states == HAPPY_PATH
    assert [entry["from_state"] for entry in view["history"][1:]] == states[:-1]
    assert all(entry["at"] for entry in view["history"])
    assert view["result"]["tool_calls"] == 1
    executed = view["data"]["executed"]
    assert [call["tool"] for call in executed] == ["create_ticket"]
    # Agent, task, the task's unguessable salt, state, visit and call index.
    assert re.fullmatch(rf"AgentTask:{task_id}:[0-9a-f]{{24}}:EXECUTE\.1:0", executed[0]["idempotency_key"])

    assert_one_event_per_transition(any_stack, "AgentTask", task_id, view)
    # status (shared) reports the same view, and the ticket exists exactly once.
    assert any_stack.status("AgentTask", task_id) == view
    ticket_id = executed[0]["result"]["ticket_id"]
    assert [t["ticket_id"] for t in tickets(any_stack)].count(ticket_id) == 1


def test_read_only_plan_goes_straight_on_without_approval(any_stack: Stack) -> None:
    task_id = new_task_id("ro")
    response = any_stack.call("AgentTask", task_id, "run", {"user_id": "u-1", "task": "Summarize my history"})
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["state"] == "COMPLETE"
    assert "WAIT_APPROVAL" not in [entry["to_state"] for entry in view["history"]]
    assert view["approvals"] == [] and view["data"]["side_effect_tools"] == []
    assert [call["tool"] for call in view["data"]["executed"]] == ["lookup_user_history"]


def test_running_a_finished_task_again_does_not_act_again(stack: Stack) -> None:
    task_id = new_task_id()
    body = {"user_id": "u-2", "task": "Please open a ticket for the broken printer"}
    first = run_approved(stack, task_id, body["task"], body["user_id"])
    before = len(tickets(stack))
    again = stack.call("AgentTask", task_id, "run", body)
    assert again.status_code == 200
    assert again.json() == first
    assert len(tickets(stack)) == before


def test_same_task_id_with_different_input_is_refused(stack: Stack) -> None:
    task_id = new_task_id()
    stack.call("AgentTask", task_id, "run", {"user_id": "u-1", "task": "summarize my history"})
    refused = stack.call("AgentTask", task_id, "run", {"user_id": "u-1", "task": "something else"})
    assert refused.status_code == 409
    assert "different input" in refused.text


def test_failing_verification_reaches_failed_with_its_reason(any_stack: Stack) -> None:
    task_id = new_task_id()
    # Nothing in this task maps to a tool, so the plan is empty and verification must fail.
    view = any_stack.call(
        "AgentTask", task_id, "run", {"user_id": "u-1", "task": "Ponder the meaning of life"}
    )
    assert view.status_code == 200, view.text
    body = view.json()
    assert body["state"] == "FAILED"
    assert body["error"]["state"] == "VERIFY"
    assert body["error"]["code"] == "verification_failed"
    assert "no tool was planned" in body["error"]["message"]
    # It replanned once (AGENT_MAX_REPLANS, 1 by default), with the failure on record, then failed.
    states = [e["to_state"] for e in body["history"]]
    assert states[-5:] == ["VERIFY", "PLAN", "EXECUTE", "VERIFY", "FAILED"]
    replan = next(e for e in body["history"] if e["from_state"] == "VERIFY" and e["to_state"] == "PLAN")
    assert replan["note"].startswith("replan 1 of 1: no tool was planned")
    [attempt] = body["data"]["attempts"]
    assert attempt["verification"]["success"] is False and attempt["plan"]["steps"] == []
    assert any_stack.status("AgentTask", task_id)["state"] == "FAILED"


def test_malformed_input_is_a_400_and_leaves_no_task(stack: Stack) -> None:
    for bad, problem in [
        ({"user_id": "u-1"}, "task: Field required"),
        ({"user_id": "", "task": "x"}, "user_id"),
        ({"user_id": "u-1", "task": "x", "extra": 1}, "extra: Extra inputs are not permitted"),
        (b"{not json", "invalid input"),
        ([1, 2], "invalid input"),
    ]:
        task_id = new_task_id("bad")
        response = stack.call("AgentTask", task_id, "run", bad)
        assert response.status_code == 400, (bad, response.status_code, response.text)
        assert problem in response.text, (bad, response.text)
        assert stack.call("AgentTask", task_id, "status").status_code == 404


def test_status_of_an_unknown_task_is_404(stack: Stack) -> None:
    response = stack.call("AgentTask", new_task_id("unknown"), "status")
    assert response.status_code == 404
    assert "no AgentTask task" in response.text


def attempts_logged(stack: Stack, task_id: str) -> int:
    assert stack.app is not None
    return stack.app.log_path.read_text().count(f"AgentTask/{task_id} run: attempt started")


def test_always_replay_mode_really_suspends_and_replays(replay_stack: Stack, stack: Stack) -> None:
    body = {"user_id": "u-1", "task": "summarize my history"}
    replayed, normal = new_task_id("replay"), new_task_id("normal")
    assert replay_stack.call("AgentTask", replayed, "run", body).json()["state"] == "COMPLETE"
    assert stack.call("AgentTask", normal, "run", body).json()["state"] == "COMPLETE"
    # Normal mode runs the handler once; always-replay resumes it after every journaled await.
    assert attempts_logged(stack, normal) == 1
    assert attempts_logged(replay_stack, replayed) > len(HAPPY_PATH)


def test_status_answers_while_run_waits_at_the_gate(stack: Stack) -> None:
    task_id = new_task_id("busy")
    start(stack, task_id, "open a ticket: keyboard is broken")
    view = wait_parked(stack, task_id)
    assert view["terminal"] is False
    assert stack.decide("AgentTask", task_id, "reject", comment="not now").status_code == 200
    assert stack.wait_for_state("AgentTask", task_id, END)["state"] == "FAILED"
