"""OpenTelemetry traces against the real stack: the agent service exports over OTLP/HTTP to a
receiver on loopback (tests/fakes/otlp_receiver.py, decoded with opentelemetry-proto), Restate is
told to trace so it sends its trace context, and always-replay mode replays every step many times.

Each executed step is one span: counted against the task's history, the tool service's
idempotency records and the task's journaled spend (tests/integration/spans.py). The crash matrix
(test_crash_matrix.py) checks the same across SIGKILLs of the agent service.
"""

from __future__ import annotations

from deploy.local import Stack, wait_until
from tests.fakes.otlp_receiver import Receiver
from tests.integration.flows import END, new_task_id, run_approved, start, wait_parked
from tests.integration.spans import assert_one_span_per_executed_step, finished_spans

SPAN_KIND_INTERNAL, SPAN_KIND_CLIENT = 1, 3
STATUS_OK, STATUS_ERROR = 1, 2


def test_an_approved_task_is_one_trace_with_one_span_per_executed_step(
    any_stack: Stack, otlp: tuple[Receiver, str]
) -> None:
    receiver, _ = otlp
    task_id = new_task_id("traced")
    view = run_approved(any_stack, task_id, "open a ticket: the scanner is offline")
    assert view["state"] == "COMPLETE", view
    spans = list(assert_one_span_per_executed_step(any_stack, receiver, "AgentTask", task_id, view).values())

    # Joined to Restate's trace of the run invocation: its trace id, and its attempt span as parent.
    (invocation,) = any_stack.sql(
        f"select trace_id from sys_invocation where target_service_key = '{task_id}' "
        "and target_handler_name = 'run'"
    )
    assert {s.trace_id for s in spans} == {invocation["trace_id"]}
    (root,) = [s for s in spans if s.name == "invoke_agent AgentTask"]
    assert root.parent_span_id and root.parent_span_id not in {s.span_id for s in spans}
    assert root.status_code == STATUS_OK and root.service_name == "durable-agents"
    # Each call links to the Restate attempt that executed it (in always-replay mode, many attempts).
    calls = [s for s in spans if s.attributes.get("gen_ai.operation.name") in ("chat", "execute_tool")]
    assert calls and all(len(s.links) == 1 and s.links[0][0] == root.trace_id for s in calls)

    # The GenAI conventions on model calls, with the journaled usage (the offline model's estimates).
    chats = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "chat"]
    assert {s.name for s in chats} == {"chat offline"} and len(chats) == 3
    for chat in chats:
        assert chat.kind == SPAN_KIND_CLIENT
        assert chat.attributes["gen_ai.request.model"] == "offline"
        assert chat.attributes["gen_ai.provider.name"] == "offline"
        assert chat.attributes["gen_ai.response.finish_reasons"] == ["tool_use"]
        assert chat.attributes["gen_ai.usage.input_tokens"] > 0
        assert chat.attributes["agent.llm.tokens_estimated"] is True
        assert chat.attributes["agent.llm.cost_usd"] == 0.0
        assert chat.attributes["gen_ai.agent.name"] == "AgentTask"
    tools = {s.attributes["gen_ai.tool.name"] for s in spans if s.name.startswith("execute_tool ")}
    assert {"request_approval", "create_ticket"} <= tools
    assert all(
        s.attributes["agent.tool.replayed"] is False for s in spans if s.name.startswith("execute_tool ")
    )

    # The approval gate's wait, from the request to the decision.
    (gate,) = [s for s in spans if s.name == "gate_wait WAIT_APPROVAL"]
    assert gate.attributes["agent.gate.outcome"] == "approve"
    assert gate.attributes["agent.gate.approver"] == "ops-lead"
    assert 0 <= gate.end_ns - gate.start_ns < 120 * 10**9

    # Nothing secret and no prompt goes out: not the stack's secrets, not the task's own words.
    for secret in (any_stack.webhook_secret, "dev-operator-token", "dev-tools-api-token"):
        assert all(secret.encode() not in s.raw for s in spans), secret
    assert all(b"scanner is offline" not in s.raw for s in spans)


def test_a_failed_task_says_so_on_its_spans(stack: Stack, otlp: tuple[Receiver, str]) -> None:
    receiver, _ = otlp
    task_id = new_task_id("traced-reject")
    start(stack, task_id, "open a ticket: the badge reader is broken")
    wait_parked(stack, task_id)
    assert stack.decide("AgentTask", task_id, "reject", comment="not now").status_code == 200
    view = stack.wait_for_state("AgentTask", task_id, END)
    assert view["state"] == "FAILED", view
    spans = finished_spans(receiver, "AgentTask", task_id)
    (root,) = [s for s in spans if s.name == "invoke_agent AgentTask"]
    assert root.status_code == STATUS_ERROR and "rejected by ops-lead" in root.status_message
    (gate,) = [s for s in spans if s.name == "gate_wait WAIT_APPROVAL"]
    assert gate.attributes["agent.gate.outcome"] == "reject"
    (left,) = [s for s in spans if s.name == "AgentTask WAIT_APPROVAL"]
    assert left.status_code == STATUS_ERROR and left.attributes["agent.next_state"] == "FAILED"
    assert not [s for s in spans if s.attributes.get("gen_ai.tool.name") == "create_ticket"]


def test_a_collector_that_refuses_loses_no_span_and_doubles_none(
    stack: Stack, otlp: tuple[Receiver, str]
) -> None:
    """The collector refuses every batch while a task runs to its gate: the cursor does not move,
    and once it accepts again every span arrives, each once."""
    receiver, _ = otlp
    task_id = new_task_id("traced-refused")
    with receiver.lock:
        receiver.refuse_next = 10**6
        refused_before = receiver.requests
    try:
        start(stack, task_id, "open a ticket: the projector is broken")
        wait_parked(stack, task_id)

        def refused_some() -> bool:
            with receiver.lock:
                return receiver.requests - refused_before >= 2

        wait_until(refused_some, timeout=30, what="the exporter to try the refusing collector")
        assert receiver.of_task(task_id) == []
    finally:
        with receiver.lock:
            receiver.refuse_next = 0
    assert stack.decide("AgentTask", task_id, "approve").status_code == 200
    view = stack.wait_for_state("AgentTask", task_id, END)
    assert view["state"] == "COMPLETE", view
    assert_one_span_per_executed_step(stack, receiver, "AgentTask", task_id, view)
