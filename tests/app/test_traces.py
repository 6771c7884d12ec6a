"""Spans from events (app/audit/traces.py) and the event log's export as spans
(app/audit/trace_export.py), on a real SQLite file and the local PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from app.audit.event_log import GENESIS, Event, EventDraft, EventStore, _row_of, new_event
from app.audit.trace_export import Endings, ExportRefused, TraceExporter
from app.audit.traces import SpanRecord, TaskTrace, TraceParent, spans_of
from tests.app.test_events import store  # noqa: F401 (the fixture: SQLite and PostgreSQL)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
RESTATE_SPAN = "00f067aa0ba902b7"
ENDINGS = {"AgentTask": Endings(frozenset({"COMPLETE", "FAILED"}), "FAILED")}


def flow(task_id: str, trace: bool = True) -> list[Event]:
    """A task as the engine logs it: created, a model call and a tool call in PLAN, an approval."""
    created: dict[str, object] = {"input": {}, "model": "claude-x"}
    if trace:
        created["trace"] = {"trace_id": TRACE, "parent_span_id": RESTATE_SPAN}
    payloads: list[tuple[str, str | None, str, float, dict[str, object]]] = [
        ("created", None, "PLAN", 100.0, created),
        (
            "transition",
            "PLAN",
            "WAIT_APPROVAL",
            103.0,
            {
                "note": None,
                "calls": [
                    {
                        "kind": "llm",
                        "step": "PLAN llm plan",
                        "started": 100.5,
                        "ended": 101.5,
                        "attempt_span": "a" * 16,
                    },
                    {
                        "kind": "tool",
                        "step": "PLAN tool 0 request_approval",
                        "started": 102.0,
                        "ended": 102.5,
                        "attempt_span": "b" * 16,
                        "tool": "request_approval",
                        "idempotency_key": "AgentTask:t:salt:PLAN.1:0",
                        "replayed": True,
                    },
                ],
                "usage": [
                    {
                        "step": "PLAN llm plan",
                        "model": "claude-x",
                        "input_tokens": 120,
                        "output_tokens": 30,
                        "cost_usd": "0.00081",
                        "finish_reason": "tool_use",
                        "response_id": "msg_1",
                    }
                ],
                "stalls": [
                    {"step": "PLAN llm plan", "rounds": 2, "since": 100.2, "last_error": "overloaded"}
                ],
            },
        ),
        (
            "transition",
            "WAIT_APPROVAL",
            "FAILED",
            160.0,
            {
                "note": "rejected by ops-lead",
                "error": {
                    "state": "WAIT_APPROVAL",
                    "code": "approval_rejected",
                    "message": "rejected by ops-lead",
                },
                "approval": {
                    "outcome": "reject",
                    "approver": "ops-lead",
                    "decided_at": 160.0,
                    "approval_hash": "h",
                },
                "gate_wait_seconds": 57.0,
            },
        ),
    ]
    events, previous = [], GENESIS
    for seq, (kind, from_state, to_state, at, payload) in enumerate(payloads, start=1):
        item = new_event(
            EventDraft(
                agent="AgentTask",
                task_id=task_id,
                seq=seq,
                kind=kind,
                from_state=from_state,
                to_state=to_state,
                at=at,
                payload=payload,
                prev_hash=previous,
            )
        )
        events.append(item)
        previous = item.hash
    return events


def all_spans(events: list[Event]) -> list[SpanRecord]:
    task = TaskTrace.of_created(events[0])
    spans = []
    for previous, event in zip([None, *events], events, strict=False):
        terminal = event.to_state in ENDINGS["AgentTask"].terminal
        spans += spans_of(
            event, task, previous.at if previous else None, terminal, event.to_state == "FAILED"
        )
    return spans


def test_traceparent_is_read_only_when_well_formed() -> None:
    good = TraceParent.from_headers({"traceparent": f"00-{TRACE}-{RESTATE_SPAN}-01"})
    assert good == TraceParent(trace_id=TRACE, parent_span_id=RESTATE_SPAN)
    for bad in (
        "",
        "01-" + TRACE + "-" + RESTATE_SPAN + "-01",
        f"00-{'0' * 32}-{RESTATE_SPAN}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"00-{TRACE[:-1]}x-{RESTATE_SPAN}-01",
        "00-abc-def-01",
    ):
        assert TraceParent.from_headers({"traceparent": bad}) is None, bad
    assert TraceParent.from_headers({}) is None


def test_a_task_is_one_trace_under_restate_with_a_span_per_state_call_and_gate_wait() -> None:
    spans = {span.name: span for span in all_spans(flow("t"))}
    assert sorted(spans) == [
        "AgentTask PLAN",
        "AgentTask WAIT_APPROVAL",
        "chat claude-x",
        "execute_tool request_approval",
        "gate_wait WAIT_APPROVAL",
        "invoke_agent AgentTask",
    ]
    assert {span.trace_id for span in spans.values()} == {TRACE}
    root = spans["invoke_agent AgentTask"]
    assert root.parent_span_id == RESTATE_SPAN and (root.start, root.end) == (100.0, 160.0)
    assert root.status == "error" and root.status_message == "rejected by ops-lead"
    plan = spans["AgentTask PLAN"]
    assert plan.parent_span_id == root.span_id and (plan.start, plan.end) == (100.0, 103.0)
    assert plan.status == "unset" and [e.name for e in plan.events] == ["stall"]
    assert spans["AgentTask WAIT_APPROVAL"].status == "error"

    chat = spans["chat claude-x"]
    assert chat.parent_span_id == plan.span_id and chat.kind == "client" and chat.links == [(TRACE, "a" * 16)]
    assert chat.attributes == {
        "gen_ai.agent.name": "AgentTask",
        "gen_ai.conversation.id": "t",
        "agent.step": "PLAN llm plan",
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-x",
        "gen_ai.response.model": "claude-x",
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30,
        "agent.llm.tokens_estimated": False,
        "gen_ai.response.finish_reasons": ["tool_use"],
        "gen_ai.response.id": "msg_1",
        "agent.llm.cost_usd": 0.00081,
    }
    tool = spans["execute_tool request_approval"]
    assert tool.attributes["gen_ai.tool.call.id"] == "AgentTask:t:salt:PLAN.1:0"
    assert tool.attributes["agent.tool.replayed"] is True and tool.links == [(TRACE, "b" * 16)]
    gate = spans["gate_wait WAIT_APPROVAL"]
    assert (gate.start, gate.end) == (103.0, 160.0) and gate.attributes["agent.gate.outcome"] == "reject"


def test_spans_are_the_same_however_often_they_are_built() -> None:
    first, again = all_spans(flow("t")), all_spans(flow("t"))
    assert first == again
    assert len({span.span_id for span in first}) == len(first)
    assert {span.span_id for span in all_spans(flow("u"))}.isdisjoint(span.span_id for span in first)


def test_a_task_created_before_traces_gets_a_trace_id_of_its_own_name() -> None:
    spans = all_spans(flow("old", trace=False))
    (root,) = [span for span in spans if span.name.startswith("invoke_agent")]
    assert root.parent_span_id is None and len(root.trace_id) == 32
    assert (
        {span.trace_id for span in spans}
        == {root.trace_id}
        == {s.trace_id for s in all_spans(flow("old", trace=False))}
    )


class ListSink:
    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.batches: list[list[SpanRecord]] = []

    def export(self, spans: Sequence[SpanRecord]) -> bool:
        self.batches.append(list(spans))
        return self.accept

    @property
    def spans(self) -> list[SpanRecord]:
        return [span for batch in self.batches for span in batch]


def test_the_log_is_exported_once_across_restarts_and_refusals(store: EventStore) -> None:  # noqa: F811
    events = flow("t")
    store.write(events[:2])
    refused = ListSink(accept=False)
    with pytest.raises(ExportRefused):
        TraceExporter(store, ENDINGS, refused, holder="a").export_once()
    # Refused: the cursor did not move, so a restarted exporter (the lease expired) sends them again.
    sink = ListSink()
    first = TraceExporter(store, ENDINGS, sink, holder="a")
    assert first.export_once() == 2
    assert sink.spans == refused.spans and len(sink.spans) == 3
    assert first.export_once() == 0
    store.write(events[2:])
    assert first.export_once() == 1
    names = [span.name for span in sink.spans]
    assert names.count("invoke_agent AgentTask") == 1 and len(names) == len(set(names))
    # The state span of the last event started when the previous event (an earlier batch) ended.
    (waited,) = [span for span in sink.spans if span.name == "AgentTask WAIT_APPROVAL"]
    assert waited.start == 103.0
    # A restart of the same holder: nothing again.
    again = ListSink()
    assert TraceExporter(store, ENDINGS, again, holder="a").export_once() == 0 and again.batches == []


def test_one_replica_exports_at_a_time(store: EventStore) -> None:  # noqa: F811
    store.write(flow("t"))
    one, other = ListSink(), ListSink()
    assert TraceExporter(store, ENDINGS, one, holder="one").export_once() == 3
    store.write(flow("u"))
    assert TraceExporter(store, ENDINGS, other, holder="other").export_once() == 0
    assert other.batches == []


def test_a_row_id_not_yet_committed_holds_the_export_back_on_postgresql(
    store: EventStore,  # noqa: F811
) -> None:
    if store.engine.dialect.name != "postgresql":
        assert TraceExporter(store, ENDINGS, ListSink(), holder="a").gap_free
        return
    sink = ListSink()
    exporter = TraceExporter(store, ENDINGS, sink, holder="a")
    early, late = flow("early")[:1], flow("late")[:1]
    with store.sessions() as session, session.begin():
        session.add(_row_of(early[0]))
        session.flush()  # the early event has its id; its transaction is still open
        store.write(late)  # a later id, committed first
        assert exporter.export_once() == 0  # the late event waits behind the gap
    assert exporter.export_once() == 2
