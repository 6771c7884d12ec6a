"""What the exported spans of a finished task must be, checked against independent records: the
task's history (one state span per transition), the tool service's idempotency records (one tool
span per key it holds for the task: each side effect once) and the task's journaled spend (one
model span per call, with its tokens)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, text

from app.runtime.engine import key_task_part
from deploy.local import Stack
from tests.fakes.otlp_receiver import ReceivedSpan, Receiver


def tool_service_keys(stack: Stack, agent: str, task_id: str) -> set[str]:
    """The Idempotency-Keys the tool service holds for the task's calls."""
    prefix = f"{agent}:{key_task_part(task_id)}:"
    engine = create_engine(stack.database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("select key from idempotency_keys")).scalars().all()
    finally:
        engine.dispose()
    return {key for key in rows if key.startswith(prefix)}


def finished_spans(receiver: Receiver, agent: str, task_id: str) -> list[ReceivedSpan]:
    """Every span received for the task, once its task span (exported with its end) is in."""
    return receiver.wait_for(lambda spans: any(s.name == f"invoke_agent {agent}" for s in spans), task_id)


def assert_one_span_per_executed_step(
    stack: Stack, receiver: Receiver, agent: str, task_id: str, view: dict[str, Any], resent_ok: bool = False
) -> dict[str, ReceivedSpan]:
    """Exactly one span per executed step of the finished task; returns them by span id.

    `resent_ok`: the agent service was killed during the run, so a batch may have been sent again
    (the collector accepted it, the cursor had not moved): each repeat must be the same span.
    """
    received = finished_spans(receiver, agent, task_id)
    by_id: dict[str, ReceivedSpan] = {}
    for span in received:
        if span.span_id in by_id:
            assert resent_ok, f"span {span.name} ({span.span_id}) received twice without a crash"
            assert span.raw == by_id[span.span_id].raw, f"span {span.span_id} sent again with other content"
        by_id[span.span_id] = span
    spans = list(by_id.values())
    assert len({s.trace_id for s in spans}) == 1, "a task's spans are one trace"

    roots = [s for s in spans if s.name == f"invoke_agent {agent}"]
    assert len(roots) == 1 and roots[0].attributes["agent.final_state"] == view["state"]
    states = [s for s in spans if s.name.startswith(f"{agent} ")]
    history = view["history"]
    assert sorted(s.attributes["agent.event.seq"] for s in states) == list(range(2, len(history) + 1))
    assert [s.attributes["agent.state"] for s in sorted(states, key=lambda s: s.start_ns)] == [
        entry["from_state"] for entry in history[1:]
    ]
    assert all(s.parent_span_id == roots[0].span_id for s in states)

    tools = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "execute_tool"]
    keys = [s.attributes["gen_ai.tool.call.id"] for s in tools]
    assert len(keys) == len(set(keys)), "one span per tool call"
    assert set(keys) == tool_service_keys(stack, agent, task_id), "a span for each side effect, no other"

    models = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "chat"]
    spend = view["spend"]
    assert len(models) == spend["llm_calls"]
    assert sum(s.attributes["gen_ai.usage.input_tokens"] for s in models) == spend["input_tokens"]
    assert sum(s.attributes["gen_ai.usage.output_tokens"] for s in models) == spend["output_tokens"]
    state_ids = {s.span_id for s in states}
    assert all(s.parent_span_id in state_ids for s in tools + models)
    return by_id
