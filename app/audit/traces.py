"""A task's OpenTelemetry spans, built from its events in the event log, never from handler code.

Handler code runs again on every replay and a crashed attempt is retried, so a span started there
would be exported once per replay (what Temporal's and pydantic-ai's integrations do). Here a span
is derived from what is durable and written once: the task's events. Each LLM or tool call is
recorded where it really executes, inside its journaled step (`CallTrace`, journaled with its
result, so a replay reads the record instead of making a new one), goes into the event of the
transition that ends its state, and the log inserts that event exactly once. Every id is derived
from the task and the event, so a span built twice is the same span.

The spans of one task (one trace, joined to Restate's own when Restate sends a trace context):

* `invoke_agent {agent}`: the task, from its creation to its end (exported when it ends), a child
  of the Restate invocation span that created it;
* `{agent} {state}`: one per transition, the time spent in the state it leaves;
* `gate_wait {state}`: an approval gate's wait, from the request to the decision;
* `chat {model}` and `execute_tool {tool}`: each call, with the GenAI semantic conventions' names,
  a child of its state's span and linked to the Restate attempt span that executed it.

Prompts, completions, tool arguments and results are not in spans; nor is any secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.audit.event_log import Event

AttributeValue = str | bool | int | float | list[str]
OFFLINE_MODEL = "offline"


class CallTrace(BaseModel):
    """One LLM or tool call as it executed, recorded inside its journaled step: when it started and
    ended, which Restate attempt ran it, and for a tool call what the tool service said."""

    kind: Literal["llm", "tool"]
    step: str
    started: float
    ended: float
    # The span id of the Restate invocation attempt that executed the call (from its traceparent).
    attempt_span: str | None = None
    tool: str | None = None
    idempotency_key: str | None = None
    # The tool service answered from its idempotency record: the call had already been made.
    replayed: bool | None = None


class TraceParent(BaseModel):
    """The W3C trace context a task was created under: Restate's invocation trace, or ours."""

    trace_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    parent_span_id: str | None = Field(None, pattern=r"^[0-9a-f]{16}$")

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> TraceParent | None:
        """From a `traceparent` header (version 00: `00-<trace id>-<span id>-<flags>`), or None."""
        parts = (headers.get("traceparent") or "").strip().lower().split("-")
        if len(parts) != 4 or parts[0] != "00" or len(parts[1]) != 32 or len(parts[2]) != 16:
            return None
        if not all(_hex(part) for part in parts[1:3]) or set(parts[1]) == {"0"} or set(parts[2]) == {"0"}:
            return None
        return cls(trace_id=parts[1], parent_span_id=parts[2])


def _hex(text: str) -> bool:
    return all(char in "0123456789abcdef" for char in text)


def attempt_span_of(headers: Mapping[str, str]) -> str | None:
    """The span id of the attempt whose headers these are (None without a trace context)."""
    parent = TraceParent.from_headers(headers)
    return parent.parent_span_id if parent is not None else None


class SpanEvent(BaseModel):
    name: str
    at: float
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)


class SpanRecord(BaseModel):
    """One span, ready for an exporter: ids in hex, times in seconds since the epoch."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: Literal["internal", "client"] = "internal"
    start: float
    end: float
    attributes: dict[str, AttributeValue]
    status: Literal["unset", "ok", "error"] = "unset"
    status_message: str | None = None
    # (trace id, span id) of the spans this one is linked to: the Restate attempt that ran a call.
    links: list[tuple[str, str]] = Field(default_factory=list)
    events: list[SpanEvent] = Field(default_factory=list)


class TaskTrace(BaseModel):
    """What every span of a task needs: its trace, Restate's parent span, when it was created."""

    agent: str
    task_id: str
    trace_id: str
    parent_span_id: str | None
    created_at: float

    @classmethod
    def of_created(cls, created: Event) -> TaskTrace:
        """From the task's `created` event; a task created before traces gets a trace id derived
        from its name (the same on every export)."""
        given = created.payload.get("trace")
        parent = TraceParent.model_validate(given) if isinstance(given, dict) else None
        if parent is None:
            digest = hashlib.sha256(f"{created.agent}/{created.task_id}".encode()).hexdigest()
            parent = TraceParent(trace_id=digest[:32])
        return cls(
            agent=created.agent,
            task_id=created.task_id,
            trace_id=parent.trace_id,
            parent_span_id=parent.parent_span_id,
            created_at=created.at,
        )

    def span_id(self, *parts: object) -> str:
        """A span id derived from the task and `parts` (never all zeros, which OTLP forbids)."""
        name = "/".join([self.trace_id, self.agent, self.task_id, *map(str, parts)])
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        return digest if set(digest) != {"0"} else "1" + digest[1:]

    @property
    def root_span_id(self) -> str:
        return self.span_id("task")


def spans_of(
    event: Event, task: TaskTrace, entered_at: float | None, terminal: bool, failure: bool
) -> list[SpanRecord]:
    """The spans one logged event stands for. `entered_at`: when the task entered the state this
    event leaves (the previous event's time; None if that event is gone); `terminal`: the event
    ends the task; `failure`: it ends it in the machine's failure state."""
    if event.kind != "transition" or event.from_state is None:
        return []
    payload = event.payload
    base: dict[str, AttributeValue] = {
        "gen_ai.agent.name": task.agent,
        "gen_ai.conversation.id": task.task_id,
    }
    state_span = task.span_id(event.seq, "state")
    error = payload.get("error") if isinstance(payload.get("error"), dict) else None
    state = SpanRecord(
        trace_id=task.trace_id,
        span_id=state_span,
        parent_span_id=task.root_span_id,
        name=f"{task.agent} {event.from_state}",
        start=entered_at if entered_at is not None else event.at,
        end=event.at,
        attributes={
            **base,
            "agent.state": event.from_state,
            "agent.next_state": event.to_state,
            "agent.event.seq": event.seq,
            **({"agent.note": str(payload["note"])} if payload.get("note") else {}),
        },
        status="error" if error is not None and error.get("state") == event.from_state else "unset",
        status_message=str(error.get("message")) if error is not None else None,
        events=[
            SpanEvent(
                name="stall",
                at=float(stall.get("since") or event.at),
                attributes={
                    "agent.step": str(stall.get("step")),
                    "agent.stall.rounds": int(stall.get("rounds") or 0),
                    "agent.stall.last_error": str(stall.get("last_error")),
                },
            )
            for stall in payload.get("stalls") or []
            if isinstance(stall, dict)
        ],
    )
    spans = [state, *_gate_wait(event, task, state_span, base)]
    usages = [usage for usage in payload.get("usage") or [] if isinstance(usage, dict)]
    llm_calls = 0
    for index, raw in enumerate(payload.get("calls") or []):
        call = CallTrace.model_validate(raw)
        span = SpanRecord(
            trace_id=task.trace_id,
            span_id=task.span_id(event.seq, "call", index),
            parent_span_id=state_span,
            name="",
            start=call.started,
            end=call.ended,
            attributes={**base, "agent.step": call.step},
            links=[(task.trace_id, call.attempt_span)] if call.attempt_span else [],
            status="ok",
        )
        if call.kind == "llm":
            usage = usages[llm_calls] if llm_calls < len(usages) else {}
            llm_calls += 1
            spans.append(_llm_span(span, usage))
        else:
            spans.append(_tool_span(span, call))
    if terminal:
        spans.append(_task_span(event, task, base, failure))
    return spans


def _gate_wait(
    event: Event, task: TaskTrace, parent: str, base: dict[str, AttributeValue]
) -> list[SpanRecord]:
    approval, waited = event.payload.get("approval"), event.payload.get("gate_wait_seconds")
    if not isinstance(approval, dict) or waited is None:
        return []
    decided = float(approval.get("decided_at") or event.at)
    attributes: dict[str, AttributeValue] = {
        **base,
        "agent.state": str(event.from_state),
        "agent.gate.outcome": str(approval.get("outcome")),
        "agent.gate.approval_hash": str(approval.get("approval_hash")),
    }
    for key, name in (("approver", "agent.gate.approver"), ("approval_ticket_id", "agent.gate.ticket_id")):
        if approval.get(key):
            attributes[name] = str(approval[key])
    return [
        SpanRecord(
            trace_id=task.trace_id,
            span_id=task.span_id(event.seq, "gate"),
            parent_span_id=parent,
            name=f"gate_wait {event.from_state}",
            start=decided - float(waited),
            end=decided,
            attributes=attributes,
        )
    ]


def _llm_span(span: SpanRecord, usage: Mapping[str, Any]) -> SpanRecord:
    """A model call, named and described as the GenAI semantic conventions say."""
    model = str(usage.get("model") or "unknown")
    attributes: dict[str, AttributeValue] = {
        **span.attributes,
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": OFFLINE_MODEL if model == OFFLINE_MODEL else "anthropic",
        "gen_ai.request.model": model,
        "gen_ai.response.model": model,
        "gen_ai.usage.input_tokens": int(usage.get("input_tokens") or 0),
        "gen_ai.usage.output_tokens": int(usage.get("output_tokens") or 0),
        "agent.llm.tokens_estimated": bool(usage.get("estimated")),
    }
    if usage.get("finish_reason"):
        attributes["gen_ai.response.finish_reasons"] = [str(usage["finish_reason"])]
    if usage.get("response_id"):
        attributes["gen_ai.response.id"] = str(usage["response_id"])
    if usage.get("cost_usd") is not None:
        attributes["agent.llm.cost_usd"] = float(usage["cost_usd"])
    return span.model_copy(update={"name": f"chat {model}", "kind": "client", "attributes": attributes})


def _tool_span(span: SpanRecord, call: CallTrace) -> SpanRecord:
    """A tool call, as the GenAI conventions' `execute_tool` span, with its Idempotency-Key."""
    attributes: dict[str, AttributeValue] = {
        **span.attributes,
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": str(call.tool),
        "gen_ai.tool.type": "function",
        "gen_ai.tool.call.id": str(call.idempotency_key),
        "agent.tool.idempotency_key": str(call.idempotency_key),
        "agent.tool.replayed": bool(call.replayed),
    }
    return span.model_copy(update={"name": f"execute_tool {call.tool}", "attributes": attributes})


def _task_span(event: Event, task: TaskTrace, base: dict[str, AttributeValue], failure: bool) -> SpanRecord:
    error = event.payload.get("error") if isinstance(event.payload.get("error"), dict) else None
    return SpanRecord(
        trace_id=task.trace_id,
        span_id=task.root_span_id,
        parent_span_id=task.parent_span_id,
        name=f"invoke_agent {task.agent}",
        start=task.created_at,
        end=event.at,
        attributes={
            **base,
            "gen_ai.operation.name": "invoke_agent",
            "agent.final_state": event.to_state,
            "agent.events": event.seq,
        },
        status="error" if failure else "ok",
        status_message=str(error.get("message")) if failure and error is not None else None,
    )
