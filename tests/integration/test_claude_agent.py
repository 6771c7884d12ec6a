"""AgentTask with `AnthropicModel`: the real `anthropic` SDK against a local fake Messages API.

Shows the model's structured outputs driving the machine, and the error contract end to end: an
overloaded API is retried by Restate (the SDK itself never retries), a request the API refuses
fails the task with the reason recorded, and a negative verification ends in FAILED.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from app.agents.agent_task.llm import ANALYZE, PLAN, VERIFY
from app.audit.event_log import store_for
from deploy.local import Stack, running_stack, wait_until
from tests.fakes.anthropic_api import FakeAnthropicAPI
from tests.fakes.otlp_receiver import Receiver, running_receiver
from tests.integration.conftest import sqlite_url
from tests.integration.flows import END, start
from tests.integration.spans import assert_one_span_per_executed_step


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeAnthropicAPI]:
    with FakeAnthropicAPI(api_key="test-key") as fake:
        yield fake


@pytest.fixture(scope="module")
def claude_otlp() -> Iterator[tuple[Receiver, str]]:
    with running_receiver() as running:
        yield running


@pytest.fixture(scope="module", params=["normal", "always-replay"])
def claude_stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_llm: FakeAnthropicAPI,
    claude_otlp: tuple[Receiver, str],
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("claude-stack")
    env = {
        "ANTHROPIC_API_KEY": "test-key",
        "ANTHROPIC_BASE_URL": fake_llm.url,
        "ANTHROPIC_MODEL": "claude-test",
        # USD per million tokens: the spend below is these prices times the fake API's counts.
        "MODEL_PRICES": json.dumps({"claude-test": {"input": "3", "output": "15"}}),
    }
    with running_stack(
        workdir,
        sqlite_url(workdir),
        extra_env=env,
        always_replay=request.param == "always-replay",
        trace_endpoint=claude_otlp[1],
    ) as running:
        yield running


@pytest.fixture
def llm(fake_llm: FakeAnthropicAPI) -> FakeAnthropicAPI:
    fake_llm.reset()
    return fake_llm


def run_task(stack: Stack, text: str) -> dict[str, Any]:
    """Run a task, approving each plan it waits on (a replan waits again); the final view."""
    task_id = f"claude-{uuid.uuid4().hex[:10]}"
    start(stack, task_id, text)
    decided: set[str] = set()
    view: dict[str, Any] = {}

    def ended_or_newly_waiting() -> bool:
        view.update(stack.status("AgentTask", task_id))
        ticket = (view.get("pending_approval") or {}).get("approval_ticket_id")
        return view["state"] in END or (ticket is not None and ticket not in decided)

    while True:
        wait_until(ended_or_newly_waiting, timeout=120, interval=0.1, what=f"{task_id} to wait or end")
        if view["state"] in END:
            return view
        pending = view["pending_approval"]
        answer = stack.decide("AgentTask", task_id, "approve", approval_hash=pending["approval_hash"])
        assert answer.status_code == 200, answer.text
        decided.add(pending["approval_ticket_id"])


def test_structured_outputs_drive_the_task_to_complete(claude_stack: Stack, llm: FakeAnthropicAPI) -> None:
    view = run_task(claude_stack, "Open a ticket: the coffee machine leaks")
    assert view["state"] == "COMPLETE", view
    assert view["model"] == "claude-test"
    assert view["data"]["analysis"]["intent"]
    assert [step["tool"] for step in view["data"]["plan"]["steps"]] == ["create_ticket"]
    assert view["data"]["executed"][0]["result"]["ticket_id"].startswith("TCK-")
    assert llm.counts() == {ANALYZE.tool_name: 1, PLAN.tool_name: 1, VERIFY.tool_name: 1}
    sent = llm.requests_for(PLAN.tool_name)[0]["body"]
    assert sent["model"] == "claude-test"
    assert sent["tool_choice"] == {"type": "tool", "name": PLAN.tool_name}


def test_the_spend_is_exactly_what_the_api_counted_once_per_call(
    claude_stack: Stack, llm: FakeAnthropicAPI, claude_otlp: tuple[Receiver, str]
) -> None:
    """Tokens and cost in the view, the event log and the spans are the fake API's usage numbers,
    each call counted once: in always-replay mode too, where every step is replayed many times."""
    view = run_task(claude_stack, "Open a ticket: the printer jams")
    assert view["state"] == "COMPLETE", view
    answered = [request["usage"] for request in llm.requests if request["status"] == 200]
    # One span per call, each with the GenAI attributes of the answer the API gave it.
    spans = assert_one_span_per_executed_step(
        claude_stack, claude_otlp[0], "AgentTask", view["task_id"], view
    )
    chats = sorted(
        (s for s in spans.values() if s.name == "chat claude-test"), key=lambda span: span.start_ns
    )
    answers = [request for request in llm.requests if request["status"] == 200]
    assert [
        (
            s.attributes["gen_ai.usage.input_tokens"],
            s.attributes["gen_ai.usage.output_tokens"],
            s.attributes["gen_ai.response.id"],
            s.attributes["gen_ai.response.finish_reasons"],
            s.attributes["gen_ai.provider.name"],
        )
        for s in chats
    ] == [
        (a["usage"]["input_tokens"], a["usage"]["output_tokens"], a["response_id"], ["tool_use"], "anthropic")
        for a in answers
    ]
    assert [s.attributes["agent.step"] for s in chats] == [
        "ANALYZE llm analyze",
        "PLAN llm plan",
        "VERIFY llm verify",
    ]
    assert sum(Decimal(str(s.attributes["agent.llm.cost_usd"])) for s in chats) == Decimal(
        view["spend"]["cost_usd"]
    )
    assert len(answered) == 3
    tokens_in = sum(usage["input_tokens"] for usage in answered)
    tokens_out = sum(usage["output_tokens"] for usage in answered)
    spend = view["spend"]
    assert (spend["llm_calls"], spend["input_tokens"], spend["output_tokens"]) == (3, tokens_in, tokens_out)
    assert Decimal(spend["cost_usd"]) == (Decimal(3) * tokens_in + Decimal(15) * tokens_out) / 1_000_000
    assert spend["unpriced_calls"] == 0
    # lookup_user_history and create_ticket (the gate's own calls, to ask and close, are not counted)
    assert spend["tool_calls"] == 2
    # Per step, in the event log: each LLM step's usage with the transition that followed it.
    events = store_for(claude_stack.database_url).events("AgentTask", view["task_id"])
    logged = [usage for event in events for usage in event.payload.get("usage", [])]
    assert [usage["step"] for usage in logged] == [
        "ANALYZE llm analyze",
        "PLAN llm plan",
        "VERIFY llm verify",
    ]
    assert sum(usage["input_tokens"] for usage in logged) == tokens_in
    assert all(usage["model"] == "claude-test" and not usage["estimated"] for usage in logged)


def test_overloaded_api_is_retried_by_restate_not_by_the_sdk(
    claude_stack: Stack, llm: FakeAnthropicAPI
) -> None:
    llm.queue_error(529, tool=ANALYZE.tool_name, times=2)
    view = run_task(claude_stack, "Open a ticket: the lift is stuck")
    assert view["state"] == "COMPLETE", view
    # Two 529s then a success: three requests, each a separate journaled attempt of one step.
    assert llm.count(ANALYZE.tool_name) == 3
    assert [r["status"] for r in llm.requests_for(ANALYZE.tool_name)] == [529, 529, 200]
    assert llm.count(PLAN.tool_name) == 1 and llm.count(VERIFY.tool_name) == 1


def test_request_the_api_refuses_fails_the_task_with_the_reason(
    claude_stack: Stack, llm: FakeAnthropicAPI
) -> None:
    llm.queue_error(400, tool=PLAN.tool_name, message="prompt is too long")
    view = run_task(claude_stack, "Open a ticket: the window is broken")
    assert view["state"] == "FAILED"
    assert view["error"]["state"] == "PLAN"
    assert "prompt is too long" in view["error"]["message"]
    assert "test-key" not in str(view)
    # A permanent error is not retried: exactly one plan request, and nothing was executed.
    assert llm.count(PLAN.tool_name) == 1
    assert view["data"]["executed"] == []


def test_negative_verification_ends_in_failed_with_the_model_reason(
    claude_stack: Stack, llm: FakeAnthropicAPI
) -> None:
    for _ in range(2):  # the first plan, and the one replan the default AGENT_MAX_REPLANS allows
        llm.queue_tool_input(
            {"success": False, "reason": "the ticket names the wrong floor"}, tool=VERIFY.tool_name
        )
    view = run_task(claude_stack, "Open a ticket: the heating on floor 3 is off")
    assert view["state"] == "FAILED"
    assert llm.count(PLAN.tool_name) == 2 and llm.count(VERIFY.tool_name) == 2
    assert view["error"] == {
        "state": "VERIFY",
        "code": "verification_failed",
        "message": "the ticket names the wrong floor",
    }
    assert view["data"]["verification"] == {"success": False, "reason": "the ticket names the wrong floor"}


def test_a_failed_verification_replans_with_fresh_keys_and_a_new_approval(
    claude_stack: Stack, llm: FakeAnthropicAPI
) -> None:
    llm.queue_tool_input(
        {"success": False, "reason": "the ticket lacks the room number"}, tool=VERIFY.tool_name
    )
    view = run_task(claude_stack, "Open a ticket: the projector in room 4.12 is broken")
    assert view["state"] == "COMPLETE", view
    states = [entry["to_state"] for entry in view["history"]]
    assert states.count("PLAN") == 2 and states.count("WAIT_APPROVAL") == 2 and states.count("EXECUTE") == 2
    # The second plan was asked with the first one's failure, and was approved on its own.
    second_plan = llm.requests_for(PLAN.tool_name)[1]["body"]["messages"][0]["content"]
    assert "earlier_attempts" in second_plan and "lacks the room number" in second_plan
    assert len(view["approvals"]) == 2
    [attempt] = view["data"]["attempts"]
    first_key = attempt["executed"][0]["idempotency_key"]
    second_key = view["data"]["executed"][0]["idempotency_key"]
    assert first_key.endswith(":EXECUTE.1:0") and second_key.endswith(":EXECUTE.2:0")
