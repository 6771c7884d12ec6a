"""An outage stalls a task, never fails it: the tool service or the model API unreachable for longer
than a step's quick retries, then back; every task completes and nothing is done twice."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from app.audit.event_log import store_for
from deploy.local import Stack, running_stack, wait_until
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.figures import record_figure
from tests.integration.agentctl_runner import agentctl
from tests.integration.conftest import sqlite_url
from tests.integration.flows import END, new_task_id, start, wait_parked

RELIABILITY = {
    "check": "An outage stalls a step (visible in status, retried with capped backoff), never fails the task",
    "injected": (
        "tool service stopped after approval for 4+ retry rounds, then restarted; the model API overloaded"
        " (529) for 3 rounds; an operator's resume and cancel of a stalled task"
    ),
}

# Two quick attempts per round and rounds from 0.25 s apart, doubling, so an outage of several rounds
# takes seconds (in production: a step kind's own quick retries, then 5 s doubling to 5 minutes).
OUTAGE_ENV = {
    "STEP_MAX_QUICK_ATTEMPTS": "2",
    "STALL_RETRY_INITIAL_SECONDS": "0.25",
    "STALL_RETRY_MAX_SECONDS": "30",
}


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeAnthropicAPI]:
    with FakeAnthropicAPI(api_key="outage-key") as fake:
        yield fake


@pytest.fixture(scope="module")
def outage_stack(tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeAnthropicAPI) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("outage-stack")
    env = {
        **OUTAGE_ENV,
        "ANTHROPIC_API_KEY": "outage-key",
        "ANTHROPIC_BASE_URL": fake_llm.url,
        "ANTHROPIC_MODEL": "claude-outage",
    }
    with running_stack(workdir, sqlite_url(workdir), extra_env=env) as running:
        yield running


def wait_stalled(stack: Stack, task_id: str, rounds: int, timeout: float = 90) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def stalled() -> bool:
        seen.update(stack.status("AgentTask", task_id))
        assert seen["state"] not in END, f"the task ended during the outage: {seen}"
        return bool(seen.get("stall")) and seen["stall"]["rounds"] >= rounds

    wait_until(stalled, timeout=timeout, interval=0.2, what=f"{task_id} to stall for {rounds} rounds")
    return seen


def stalls_recorded(stack: Stack, task_id: str) -> list[dict[str, Any]]:
    events = store_for(stack.database_url).events("AgentTask", task_id)
    return [stall for event in events for stall in event.payload.get("stalls", [])]


def test_a_tool_service_outage_after_approval_stalls_and_completes_once_it_is_back(
    outage_stack: Stack,
) -> None:
    stack = outage_stack
    assert stack.tools is not None and stack.app is not None
    task_id = new_task_id("outage-tools")
    start(stack, task_id, "open a ticket: the lift is stuck")
    parked = wait_parked(stack, task_id)

    stack.tools.stop()
    try:
        # Approved while the tool service is down: the work after the approval waits out the outage.
        approved = stack.decide(
            "AgentTask", task_id, "approve", approval_hash=parked["pending_approval"]["approval_hash"]
        )
        assert approved.status_code == 200, approved.text
        stalled = wait_stalled(stack, task_id, rounds=4)
        stall = stalled["stall"]
        assert "tool service unreachable" in stall["last_error"]
        assert stall["state"] in {"WAIT_APPROVAL", "EXECUTE"}
        assert stall["next_retry_at"] >= stall["since"]
        # One concise line per failed attempt, no transport traceback in the agent service's log.
        log = stack.app.log_tail(4000)
        assert "attempt failed (retried)" in log and "stalled, retry round" in log
        assert "Traceback" not in log and "httpcore" not in log
    finally:
        stack.tools.start()

    done = stack.wait_for_state("AgentTask", task_id, END, timeout=120)
    assert done["state"] == "COMPLETE", done["error"]
    assert done.get("stall") is None
    ticket = done["data"]["executed"][0]["result"]["ticket_id"]
    tickets = [t["ticket_id"] for t in stack.tools_get("/tickets").json()["tickets"]]
    assert tickets.count(ticket) == 1
    recorded = stalls_recorded(stack, task_id)
    assert recorded and recorded[0]["rounds"] >= 4 and recorded[0]["until"] > recorded[0]["since"]
    outage = recorded[0]["until"] - recorded[0]["since"]
    record_figure(
        "outage survived",
        f"tool service down after approval: stalled {outage:.1f} s over {recorded[0]['rounds']} retry rounds"
        " (test backoff 0.25 s doubling; production 5 s doubling to 5 min, no limit), then completed once",
    )


def test_an_overloaded_model_api_stalls_the_step_and_the_task_goes_on(
    outage_stack: Stack, fake_llm: FakeAnthropicAPI
) -> None:
    fake_llm.reset()
    # Overloaded for 3 rounds of 2 quick attempts, then answering again.
    fake_llm.queue_error(529, message="Overloaded", times=6)
    task_id = new_task_id("outage-llm")
    start(stack := outage_stack, task_id, "open a ticket: the printer is jammed")
    parked = wait_parked(stack, task_id, timeout=90)
    assert fake_llm.pending == 0
    answer = stack.decide(
        "AgentTask", task_id, "approve", approval_hash=parked["pending_approval"]["approval_hash"]
    )
    assert answer.status_code == 200, answer.text
    done = stack.wait_for_state("AgentTask", task_id, END, timeout=120)
    assert done["state"] == "COMPLETE", done["error"]
    recorded = stalls_recorded(stack, task_id)
    assert [stall["rounds"] for stall in recorded] == [3]
    assert "529" in recorded[0]["last_error"] and recorded[0]["step"] == "ANALYZE llm analyze"


def test_a_refusal_still_fails_the_task_at_once(outage_stack: Stack, fake_llm: FakeAnthropicAPI) -> None:
    fake_llm.reset()
    fake_llm.queue_error(400, message="prompt is too long", times=1)
    task_id = new_task_id("refused")
    start(outage_stack, task_id, "open a ticket: refused")
    done = outage_stack.wait_for_state("AgentTask", task_id, END, timeout=60)
    assert done["state"] == "FAILED" and "400" in done["error"]["message"]
    assert stalls_recorded(outage_stack, task_id) == []


def test_status_of_a_stalled_task_never_shows_its_nudge_id(outage_stack: Stack) -> None:
    stack = outage_stack
    assert stack.tools is not None
    task_id = new_task_id("outage-view")
    start(stack, task_id, "open a ticket: the door squeaks")
    parked = wait_parked(stack, task_id)
    stack.tools.stop()
    try:
        answer = stack.decide(
            "AgentTask", task_id, "approve", approval_hash=parked["pending_approval"]["approval_hash"]
        )
        assert answer.status_code == 200, answer.text
        stalled = wait_stalled(stack, task_id, rounds=1)
        assert set(stalled["stall"]) == {"state", "step", "rounds", "since", "last_error", "next_retry_at"}
        raw = httpx.post(f"{stack.ingress_url}/AgentTask/{task_id}/status", timeout=10).text
        assert "nudge" not in raw
    finally:
        stack.tools.start()
    assert stack.wait_for_state("AgentTask", task_id, END, timeout=120)["state"] == "COMPLETE"


def stalled_behind_down_tools(stack: Stack, prefix: str, rounds: int) -> tuple[str, dict[str, Any]]:
    """A task approved while the tool service is down, stalled for `rounds` rounds (tools left down)."""
    assert stack.tools is not None
    task_id = new_task_id(prefix)
    start(stack, task_id, f"open a ticket: {prefix}")
    parked = wait_parked(stack, task_id)
    stack.tools.stop()
    answer = stack.decide(
        "AgentTask", task_id, "approve", approval_hash=parked["pending_approval"]["approval_hash"]
    )
    assert answer.status_code == 200, answer.text
    return task_id, wait_stalled(stack, task_id, rounds=rounds)["stall"]


def test_an_operator_resumes_a_stalled_task_before_its_next_round(outage_stack: Stack) -> None:
    stack = outage_stack
    assert stack.tools is not None
    try:
        # Round 5 waits 4 s before its retry. Resumed at once (the tool service still down), the
        # retry happens now and fails: round 6 starts well before round 5's scheduled retry.
        task_id, stall = stalled_behind_down_tools(stack, "resume", rounds=5)
        shown = agentctl(stack, "status", "AgentTask", task_id)
        assert (
            shown.returncode == 0
            and "stalled at" in shown.stdout
            and "tool service unreachable" in shown.stdout
        )
        # The operator's list shows it stalled, with why (Restate knows stalls; the log does not).
        listed = agentctl(stack, "list", "--state", "stalled", "--search", task_id, "--json")
        assert listed.returncode == 0, listed.stderr
        [row] = json.loads(listed.stdout)["tasks"]
        assert row["status"] == "stalled" and row["stall"]["rounds"] >= 5
        assert "tool service unreachable" in row["stall"]["last_error"]
        assert "nudge_id" not in row["stall"]
        resumed = agentctl(stack, "resume", "AgentTask", task_id)
        assert resumed.returncode == 0 and "retried now" in resumed.stdout, resumed.stderr
        sixth = wait_stalled(stack, task_id, rounds=6)["stall"]
        assert sixth["since"] == stall["since"]
        started = datetime.fromisoformat(sixth["next_retry_at"]).timestamp() - 8  # round 6 waits 8 s
        assert started < datetime.fromisoformat(stall["next_retry_at"]).timestamp()
    finally:
        stack.tools.start()
    # Back: resumed again, it completes now rather than after round 6's 8 s.
    resumed = agentctl(stack, "resume", "AgentTask", task_id)
    assert resumed.returncode == 0, resumed.stderr
    done = stack.wait_for_state("AgentTask", task_id, END, timeout=60)
    assert done["state"] == "COMPLETE", done["error"]
    assert stalls_recorded(stack, task_id)[-1]["rounds"] == 6
    after = json.loads(agentctl(stack, "list", "--search", task_id, "--json").stdout)["tasks"]
    assert [(row["status"], row["stall"]) for row in after] == [("complete", None)]
    # Resuming a task that is not stalled is refused, and says why.
    again = agentctl(stack, "resume", "AgentTask", task_id)
    assert again.returncode == 4 and "no run in progress" in again.stderr


def test_an_operator_cancels_a_stalled_task_and_it_fails_with_the_reason(outage_stack: Stack) -> None:
    stack = outage_stack
    assert stack.tools is not None
    try:
        task_id, _ = stalled_behind_down_tools(stack, "cancel", rounds=2)
        cancelled = agentctl(stack, "cancel", "AgentTask", task_id)
        assert cancelled.returncode == 0 and "cancel sent" in cancelled.stdout, cancelled.stderr
        done = stack.wait_for_state("AgentTask", task_id, END, timeout=60)
    finally:
        stack.tools.start()
    assert done["state"] == "FAILED"
    assert done["error"]["code"] == "cancelled" and done["error"]["message"] == "cancelled by an operator"
    assert done.get("stall") is None
    assert agentctl(stack, "cancel", "AgentTask", task_id).returncode == 4
    assert agentctl(stack, "cancel", "AgentTask", "no-such-task").returncode == 3
