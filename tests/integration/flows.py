"""Small flows the integration tests share: start a task, approve its gate, wait for its end."""

from __future__ import annotations

import json
import uuid
from typing import Any

from deploy.local import Stack, wait_until

END = {"COMPLETE", "FAILED"}
HAPPY_PATH = ["INITIAL", "FETCH_CONTEXT", "ANALYZE", "PLAN", "WAIT_APPROVAL", "EXECUTE", "VERIFY", "COMPLETE"]


def slow_tools_env(*tools: str) -> dict[str, str]:
    """Calls of `tools` are held in flight 1.5 s after their claim, so a crash can land inside one
    (the others run at full speed); a claim abandoned by a killed attempt is taken over after 3 s,
    so a retry never waits long on it."""
    return {
        "TOOLS_SIMULATED_LATENCY_MS": "1500",
        "TOOLS_SIMULATED_LATENCY_TOOLS": ",".join(tools),
        "IDEMPOTENCY_LEASE_SECONDS": "3",
    }


def idempotency_status(stack: Stack, key: str) -> str | None:
    """The tool service's record of an Idempotency-Key: in_flight, done, or None if unknown."""
    response = stack.tools_get(f"/idempotency/{key}")
    if response.status_code == 404:
        return None
    response.raise_for_status()
    status: str = response.json()["status"]
    return status


def task_salt(stack: Stack, agent: str, task_id: str) -> str:
    """The task's key salt, read from Restate's state as an operator could (it is in no public
    answer: it is what makes the task's Idempotency-Keys unguessable)."""
    found: list[str] = []

    def created() -> bool:
        rows = stack.sql(
            f"select value_utf8 from state where service_name = '{agent}' "
            f"and service_key = '{task_id}' and key = 'task'"
        )
        found.extend(json.loads(row["value_utf8"])["key_salt"] for row in rows)
        return bool(found)

    wait_until(created, timeout=60, interval=0.1, what=f"{agent}/{task_id} to be created")
    return found[0]


def tool_key(stack: Stack, agent: str, task_id: str, step: str) -> str:
    """The Idempotency-Key a task uses for `step` ("EXECUTE.1:0")."""
    return f"{agent}:{task_id}:{task_salt(stack, agent, task_id)}:{step}"


def new_task_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def start(stack: Stack, task_id: str, task: str, user_id: str = "u-1") -> str:
    return stack.send("AgentTask", task_id, "run", {"user_id": user_id, "task": task})


def wait_parked(
    stack: Stack, task_id: str, timeout: float = 60.0, agent: str = "AgentTask"
) -> dict[str, Any]:
    """Wait until the task waits at its gate with the approval requested (ticket open)."""
    seen: dict[str, Any] = {}

    def parked() -> bool:
        seen.update(stack.status(agent, task_id))
        if seen["state"] in END:
            raise AssertionError(f"the task ended instead of waiting: {seen}")
        pending = seen.get("pending_approval") or {}
        # Whatever the gate state is called: its pending approval is written with it.
        return bool(pending.get("approval_ticket_id")) and seen["state"] == pending.get("state")

    wait_until(parked, timeout=timeout, interval=0.1, what=f"{agent}/{task_id} to wait for approval")
    return seen


def wait_settled(
    stack: Stack, task_ids: list[str], timeout: float, agent: str = "AgentTask"
) -> dict[str, Any]:
    """Wait until every task has ended or waits at its gate with the approval requested; the views."""
    views: dict[str, Any] = {}

    def settled(task_id: str) -> bool:
        view = stack.status(agent, task_id)
        views[task_id] = view
        pending = view.get("pending_approval")
        return view["state"] in END or bool(pending and pending["approval_ticket_id"])

    for task_id in task_ids:
        wait_until(lambda t=task_id: settled(t), timeout=timeout, interval=0.2, what=f"{task_id} to settle")  # type: ignore[misc]
    return views


def assert_one_event_per_transition(stack: Stack, agent: str, task_id: str, view: dict[str, Any]) -> None:
    """The event log holds exactly the task's history: no duplicate, no gap, a valid chain."""
    from app.audit.event_log import GENESIS, store_for, verify_chain

    events = store_for(stack.database_url).events(agent, task_id)
    assert [e.seq for e in events] == list(range(1, len(view["history"]) + 1))
    assert [e.to_state for e in events] == [entry["to_state"] for entry in view["history"]]
    assert [e.kind for e in events] == ["created"] + ["transition"] * (len(events) - 1)
    assert verify_chain(agent, task_id, events, 1, GENESIS) is None


def run_approved(
    stack: Stack, task_id: str, task: str, user_id: str = "u-1", approver: str = "ops-lead"
) -> dict[str, Any]:
    """Start a task, approve its plan as soon as it waits, and return its final view."""
    start(stack, task_id, task, user_id)
    wait_parked(stack, task_id)
    decided = stack.decide("AgentTask", task_id, "approve", approver=approver, comment="looks right")
    assert decided.status_code == 200, decided.text
    return stack.wait_for_state("AgentTask", task_id, END)
