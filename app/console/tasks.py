"""Which tasks exist and how they are doing, for the operator's views (the console, agentctl).

Three sources, each the one that owns its fact: the event log lists every task with its last
logged state (cheap, indexed, paged in SQL); Restate's state says which tasks are stalled on an
outage right now (a stall is not a transition, so it is never logged) and which gates are open.
A task's *status* is what an operator filters on, from its state and its agent's machine:
`waiting` at a gate, `failed` in the failure state, `complete` in another terminal state,
`stalled` when a step waits out an outage (whatever its state), else `running`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, ValidationError

from app.audit.event_log import EventStore, HeadSelection, TaskHead
from app.console.query import Status, TaskQuery, iso
from app.gates.models import GateState
from app.runtime.engine import PendingApprovalView, StallView
from app.runtime.machine import Machine
from app.runtime.stalls import STALL_KEY, Stall

# Restate's introspection SQL (admin API, `/query`): values are the SDK's JSON, as UTF-8.
STALLS_QUERY = f"SELECT service_name, service_key, value_utf8 FROM state WHERE key = '{STALL_KEY}'"
OPEN_GATES_QUERY = (
    "SELECT service_key, value_utf8 FROM state "
    "WHERE service_name = 'ApprovalGate' AND key = 'gate' AND value_utf8 LIKE '%\"status\":\"open\"%'"
)

TaskKey = tuple[str, str]


class TaskRow(BaseModel):
    agent: str
    task_id: str
    state: str
    status: Status
    created_at: str
    updated_at: str
    events: int
    # The last transition's note (e.g. whom an approval went to), why it failed (the terminal
    # event's error), what it waits out (the stall).
    note: str | None = None
    error: dict[str, Any] | None = None
    stall: StallView | None = None


class TaskPage(BaseModel):
    total: int
    offset: int
    limit: int
    tasks: list[TaskRow]
    # False when Restate could not be asked: no task is shown as stalled, for want of knowing.
    stalls_known: bool = True


class UnknownAgent(ValueError):
    """A filter named an agent that is not registered."""


def status_of(machine: Machine | None, state: str, stalled: bool) -> Status:
    if stalled:
        return "stalled"
    if machine is None:
        return "running"
    if machine.is_gate(state):
        return "waiting"
    if machine.is_terminal(state):
        return "failed" if state == machine.failure else "complete"
    return "running"


def _pairs(machines: Mapping[str, Machine], status: Status) -> set[TaskKey]:
    """The (agent, state) pairs that have `status` by their state alone."""
    pairs: set[TaskKey] = set()
    for name, machine in machines.items():
        for state in machine.states:
            if status_of(machine, state, stalled=False) == status:
                pairs.add((name, state))
    return pairs


def selection_for(
    query: TaskQuery, machines: Mapping[str, Machine], stalled: Collection[TaskKey]
) -> HeadSelection:
    if query.agent is not None and query.agent not in machines:
        known = ", ".join(sorted(machines))
        raise UnknownAgent(f"unknown agent {query.agent!r}; registered agents: {known}")
    page = HeadSelection(agent=query.agent, search=query.search, offset=query.offset, limit=query.limit)
    if query.status is None:
        return page
    if query.status == "stalled":
        return replace(page, tasks=set(stalled))
    if query.status == "running":
        settled = set().union(*(_pairs(machines, s) for s in ("waiting", "failed", "complete")))
        return replace(page, not_states=settled, not_tasks=set(stalled))
    return replace(page, states=_pairs(machines, query.status), not_tasks=set(stalled))


def list_tasks(
    store: EventStore,
    machines: Mapping[str, Machine],
    query: TaskQuery,
    stalls: Mapping[TaskKey, Stall] | None,
) -> TaskPage:
    """One page of tasks. `stalls` is None when Restate could not be asked: then nothing is shown
    as stalled, and asking for stalled tasks is refused (LookupError) rather than answered empty."""
    if stalls is None and query.status == "stalled":
        raise LookupError("which tasks are stalled is known only to Restate, and it cannot be reached")
    known_stalls = stalls or {}
    total, heads = store.heads(selection_for(query, machines, set(known_stalls)))
    return TaskPage(
        total=total,
        offset=query.offset,
        limit=query.limit,
        tasks=[
            _row(head, machines.get(head.agent), known_stalls.get((head.agent, head.task_id)))
            for head in heads
        ],
        stalls_known=stalls is not None,
    )


def _row(head: TaskHead, machine: Machine | None, stall: Stall | None) -> TaskRow:
    status = status_of(machine, head.state, stall is not None)
    error = head.last_payload.get("error") if status == "failed" else None
    note = head.last_payload.get("note")
    return TaskRow(
        agent=head.agent,
        task_id=head.task_id,
        state=head.state,
        status=status,
        created_at=iso(head.created_at),
        updated_at=iso(head.updated_at),
        events=head.events,
        note=note if isinstance(note, str) else None,
        error=error if isinstance(error, dict) else None,
        stall=StallView.of(stall) if stall is not None else None,
    )


def stalls_of(rows: list[dict[str, Any]]) -> dict[TaskKey, Stall]:
    """The stalls in the rows of STALLS_QUERY; a row that does not parse is left out (a value
    written by another release is no reason to hide every other stall)."""
    found: dict[TaskKey, Stall] = {}
    for row in rows:
        try:
            stall = Stall.model_validate_json(row["value_utf8"])
        except (ValidationError, KeyError, TypeError):
            continue
        found[(stall.agent, stall.task_id)] = stall
    return found


class PendingRow(BaseModel):
    """An open gate as the inbox and `agentctl pending` list it; `may_decide` for the asker."""

    agent: str
    task_id: str
    approval: PendingApprovalView
    approvers: list[str]

    def as_listed(self, approver: str | None) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "task_id": self.task_id,
            **self.approval.model_dump(mode="json"),
            "may_decide": approver is not None and approver in self.approvers,
        }


def open_gates(rows: list[dict[str, Any]]) -> list[PendingRow]:
    """The open gates in the rows of OPEN_GATES_QUERY, soonest deadline first."""
    pending: list[PendingRow] = []
    for row in rows:
        gate = GateState.model_validate_json(row["value_utf8"])
        if gate.status != "open":
            continue
        pending.append(
            PendingRow(
                agent=gate.pending.agent,
                task_id=gate.pending.task_id,
                approval=PendingApprovalView.of(gate.pending),
                approvers=list(gate.pending.approvers),
            )
        )
    pending.sort(key=lambda item: item.approval.deadline)
    return pending


def task_gauges(
    counts: list[tuple[str, str, int]],
    machines: Mapping[str, Machine],
    stalls: Mapping[TaskKey, Stall] | None,
) -> bytes:
    """The scrape-time gauges, in Prometheus' text format: tasks by agent, state and status (from
    the event log), stalled steps by agent (from Restate), and whether Restate answered."""
    registry = CollectorRegistry()
    tasks = GaugeMetricFamily(
        "agent_tasks",
        "Tasks by agent, state and status, as of their last logged event.",
        labels=["agent", "state", "status"],
    )
    for agent, state, count in sorted(counts):
        tasks.add_metric([agent, state, status_of(machines.get(agent), state, stalled=False)], count)
    stalled = GaugeMetricFamily(
        "agent_tasks_stalled", "Tasks whose step waits out an outage, by agent.", labels=["agent"]
    )
    reachable = GaugeMetricFamily(
        "agent_restate_reachable", "1 if Restate answered the scrape's query of stalls."
    )
    reachable.add_metric([], 0 if stalls is None else 1)
    by_agent: dict[str, int] = dict.fromkeys(machines, 0)
    for agent, _ in stalls or {}:
        by_agent[agent] = by_agent.get(agent, 0) + 1
    for agent, count in sorted(by_agent.items()):
        stalled.add_metric([agent], count)
    registry.register(_Families([tasks, stalled, reachable]))
    return generate_latest(registry)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families
