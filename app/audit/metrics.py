"""The agent service's Prometheus metrics, each observed where its event happens once.

Handler code runs again on every replay, so nothing is counted there. What is counted:

* in the event log's write, per event **newly** inserted (a retried or replayed write inserts
  nothing): transitions, the model usage and cost each transition carries, the time a gate waited
  for its decision;
* inside a journaled step's closure, which runs only when the step really executes (a replay
  returns the journaled result without running it): each attempt's latency and outcome, by kind
  of step (llm, tool, events, ...), so failed attempts are the retries Restate makes.

Gauges of what exists now (tasks by agent and state, stalled steps) are read when scraped
(app/console/api.py serves `GET /metrics`). Counters are per process: with replicas, sum them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram

from app.audit.event_log import Event

REGISTRY = CollectorRegistry(auto_describe=True)

TRANSITIONS = Counter(
    "agent_transitions",
    "Transitions written to the event log, by agent, kind (created or transition) and the state entered.",
    ["agent", "kind", "state"],
    registry=REGISTRY,
)
STEP_SECONDS = Histogram(
    "agent_step_seconds",
    "Attempts of journaled steps (really executed, never replays), by agent, kind and outcome.",
    ["agent", "kind", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
GATE_WAIT_SECONDS = Histogram(
    "agent_gate_wait_seconds",
    "How long an approval gate waited, from the request to its outcome, by agent and outcome.",
    ["agent", "outcome"],
    buckets=(1, 10, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400),
    registry=REGISTRY,
)
LLM_CALLS = Counter(
    "agent_llm_calls",
    "Model calls, by agent and model (counted once, when their transition is logged).",
    ["agent", "model"],
    registry=REGISTRY,
)
LLM_TOKENS = Counter(
    "agent_llm_tokens",
    "Model tokens, by agent, model and direction (input or output); the offline model's are estimates.",
    ["agent", "model", "direction"],
    registry=REGISTRY,
)
BUDGET_STOPS = Counter(
    "agent_budget_stops",
    "Tasks stopped at their budget gate (their next step would have gone over), by agent and limit.",
    ["agent", "limit"],
    registry=REGISTRY,
)
LLM_COST = Counter(
    "agent_llm_cost_usd",
    "Model cost in US dollars at the price table of each call, by agent and model.",
    ["agent", "model"],
    registry=REGISTRY,
)


def observe_logged(events: Sequence[Event]) -> None:
    """Count events the log has just inserted (never one it already had)."""
    for event in events:
        TRANSITIONS.labels(event.agent, event.kind, event.to_state).inc()
        payload = event.payload
        for usage in payload.get("usage") or []:
            model = str(usage.get("model"))
            LLM_CALLS.labels(event.agent, model).inc()
            LLM_TOKENS.labels(event.agent, model, "input").inc(int(usage.get("input_tokens") or 0))
            LLM_TOKENS.labels(event.agent, model, "output").inc(int(usage.get("output_tokens") or 0))
            if usage.get("cost_usd") is not None:
                LLM_COST.labels(event.agent, model).inc(float(usage["cost_usd"]))
        stop = payload.get("budget_stop")
        if isinstance(stop, dict):
            BUDGET_STOPS.labels(event.agent, str(stop.get("limit"))).inc()
        waited = payload.get("gate_wait_seconds")
        approval = payload.get("approval")
        if waited is not None and isinstance(approval, dict):
            GATE_WAIT_SECONDS.labels(event.agent, str(approval.get("outcome"))).observe(float(waited))


def step_kind(label: str) -> str:
    """The kind of a journaled step from its label ("PLAN llm plan" -> llm, "events 3-4" -> events)."""
    words = label.split()
    if words and words[0] in ("events", "task", "timestamp"):
        return words[0]
    return words[1] if len(words) > 1 else "other"


@contextmanager
def timed_attempt(agent: str, label: str) -> Iterator[None]:
    """Time one attempt of a journaled step (inside its closure: real executions only)."""
    kind, started, outcome = step_kind(label), time.perf_counter(), "error"
    try:
        yield
        outcome = "ok"
    finally:
        STEP_SECONDS.labels(agent, kind, outcome).observe(time.perf_counter() - started)
