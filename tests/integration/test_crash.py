"""A crash in the middle: SIGKILL the agent service while a tool call is in flight, then restart it.

The model here is the real `anthropic` SDK talking to a local fake Messages API, so the test can
count LLM calls: a finished step must never be called again after the crash, and the tool's side
effect must exist exactly once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from deploy.local import Stack, running_stack, wait_until
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.integration.conftest import sqlite_url
from tests.integration.flows import (
    assert_one_event_per_transition,
    idempotency_status,
    slow_tools_env,
    start,
    tool_key,
    wait_parked,
)

RELIABILITY = {
    "check": (
        "Crash during a tool call: the task completes, the side effect exists once, no finished LLM"
        " step is called again; SIGTERM with a task waiting"
    ),
    "injected": (
        "SIGKILL of the agent service while a tool call is in flight; SIGTERM while a task waits at its gate"
    ),
}


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeAnthropicAPI]:
    with FakeAnthropicAPI() as fake:
        yield fake


@pytest.fixture(scope="module")
def crash_stack(tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeAnthropicAPI) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("crash-stack")
    env = {
        "ANTHROPIC_API_KEY": "test-key",
        "ANTHROPIC_BASE_URL": fake_llm.url,
        "ANTHROPIC_MODEL": "claude-test",
        **slow_tools_env("create_ticket"),
    }
    with running_stack(workdir, sqlite_url(workdir), extra_env=env) as running:
        yield running


def llm_calls_for(fake: FakeAnthropicAPI, marker: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for request in fake.requests:
        if marker in str(request["body"]):
            counts[request["tool"]] = counts.get(request["tool"], 0) + 1
    return counts


def test_sigkill_during_a_tool_call_resumes_without_repeating_anything(
    crash_stack: Stack, fake_llm: FakeAnthropicAPI
) -> None:
    assert crash_stack.app is not None
    task_id = f"crash-{uuid.uuid4().hex[:10]}"
    marker = uuid.uuid4().hex
    start(crash_stack, task_id, f"Open a ticket: printer on fire ({marker})")
    wait_parked(crash_stack, task_id)
    assert crash_stack.decide("AgentTask", task_id, "approve").status_code == 200

    # Wait until the EXECUTE step's first tool call is claimed at the tool service: it is in flight.
    key = tool_key(crash_stack, "AgentTask", task_id, "EXECUTE.1:0")
    wait_until(
        lambda: idempotency_status(crash_stack, key) == "in_flight", timeout=60, what=f"{key} in flight"
    )
    crash_stack.app.kill()
    assert not crash_stack.app.alive()

    crash_stack.app.start()
    view = crash_stack.wait_for_state("AgentTask", task_id, {"COMPLETE", "FAILED"}, timeout=120)

    assert view["state"] == "COMPLETE", view
    assert view["model"] == "claude-test"
    assert idempotency_status(crash_stack, key) == "done"
    ticket_id = view["data"]["executed"][0]["result"]["ticket_id"]
    tickets = crash_stack.tools_get("/tickets").json()
    tickets = tickets["tickets"] if isinstance(tickets, dict) else tickets
    assert [t["ticket_id"] for t in tickets].count(ticket_id) == 1
    # The event log has one event per transition: the crash and the replay added none and lost none.
    assert_one_event_per_transition(crash_stack, "AgentTask", task_id, view)
    # Every LLM step ran exactly once: ANALYZE and PLAN had finished before the crash and were
    # replayed from the journal, VERIFY ran once after the restart.
    assert llm_calls_for(fake_llm, marker) == {
        "submit_analysis": 1,
        "submit_plan": 1,
        "submit_verification": 1,
    }


def test_agent_service_exits_cleanly_on_sigterm_with_a_task_waiting(crash_stack: Stack) -> None:
    # The SDK installs its own SIGTERM hook on the first invocation, and this one is still open
    # (waiting at the gate) when the signal comes: the service must still stop, with exit code 0.
    assert crash_stack.app is not None
    task_id = f"sigterm-{uuid.uuid4().hex[:10]}"
    start(crash_stack, task_id, "Open a ticket: the fax is broken")
    wait_parked(crash_stack, task_id)
    assert crash_stack.app.stop(timeout=20) == 0
    crash_stack.app.start()
    assert crash_stack.decide("AgentTask", task_id, "approve").status_code == 200
    view = crash_stack.wait_for_state("AgentTask", task_id, {"COMPLETE", "FAILED"}, timeout=120)
    assert view["state"] == "COMPLETE", view
