"""`GET /metrics` against the real stack: who may scrape it, that it parses as Prometheus' text
format, that its figures move as a task runs, and that always-replay mode (every step replayed
many times) still counts each model call and transition once."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from deploy.local import Stack
from tests.integration.flows import END, new_task_id, start, wait_parked

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(stack: Stack) -> Samples:
    answer = httpx.get(f"{stack.approvals_url}/metrics", headers=stack.operator_auth, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= set(have))


def run_approved(stack: Stack) -> dict[str, Any]:
    task_id = new_task_id("metrics")
    start(stack, task_id, "open a ticket: the scanner is offline")
    pending = wait_parked(stack, task_id)["pending_approval"]
    assert (
        stack.decide("AgentTask", task_id, "approve", approval_hash=pending["approval_hash"]).status_code
        == 200
    )
    view = stack.wait_for_state("AgentTask", task_id, END)
    assert view["state"] == "COMPLETE", view
    return view


def test_only_the_operator_token_scrapes_the_metrics(stack: Stack) -> None:
    url = f"{stack.approvals_url}/metrics"
    for headers in (
        {},
        {"authorization": "Bearer guess"},
        {"authorization": f"Bearer {stack.webhook_secret}"},
    ):
        assert httpx.get(url, headers=headers, timeout=10).status_code == 401
    approver = {"authorization": f"Bearer {stack.approver_credential('ops-lead')}"}
    refused = httpx.get(url, headers=approver, timeout=10)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "operator_only"


def test_the_metrics_move_as_a_task_runs(stack: Stack) -> None:
    before = scrape(stack)
    view = run_approved(stack)
    after = scrape(stack)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew("agent_transitions_total", agent="AgentTask", state="COMPLETE") >= 1
    assert grew("agent_llm_calls_total", agent="AgentTask", model="offline") >= 3
    assert (
        grew("agent_llm_tokens_total", agent="AgentTask", direction="input") >= view["spend"]["input_tokens"]
    )
    assert grew("agent_step_seconds_count", agent="AgentTask", kind="llm", outcome="ok") >= 3
    assert grew("agent_step_seconds_count", agent="AgentTask", kind="tool", outcome="ok") >= 4  # gate's too
    assert grew("agent_gate_wait_seconds_count", agent="AgentTask", outcome="approve") >= 1
    assert value(after, "agent_tasks", agent="AgentTask", state="COMPLETE", status="complete") >= 1
    assert value(after, "agent_restate_reachable") == 1
    assert ("agent_tasks_stalled", (("agent", "ExpenseReport"),)) in after


def test_always_replay_counts_each_call_and_transition_once(replay_stack: Stack) -> None:
    """Every step of this stack is replayed after each await: nothing is counted in handler code."""
    before = scrape(replay_stack)
    view = run_approved(replay_stack)
    after = scrape(replay_stack)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew("agent_llm_calls_total", agent="AgentTask") == view["spend"]["llm_calls"] == 3
    assert grew("agent_transitions_total", agent="AgentTask") == len(view["history"])
    assert (
        grew("agent_llm_tokens_total", agent="AgentTask", direction="output")
        == view["spend"]["output_tokens"]
    )
    assert grew("agent_step_seconds_count", agent="AgentTask", kind="llm") == 3
