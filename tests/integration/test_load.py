"""Load: 500 tasks started concurrently (a mix of tasks that complete at once and tasks that park
at their approval gate), all accounted for at the end: none lost, none duplicated. `make test`
runs 30; `make reliability` (RELIABILITY_FULL=1) runs 500 and records the figures."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.audit.event_log import store_for, verify_store
from deploy.local import Stack, running_stack
from tests.figures import record_figure
from tests.integration.conftest import sqlite_url
from tests.integration.flows import END, new_task_id, wait_settled

RELIABILITY = {
    "check": "Load: tasks started concurrently, some parked at approvals, all accounted for",
    "injected": "500 concurrent task starts (half read-only, half parked at a gate, then approved)",
}
TASKS = 500 if os.environ.get("RELIABILITY_FULL") == "1" else 30


@pytest.fixture
def load_stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path, sqlite_url(tmp_path)) as stack:
        yield stack


def test_concurrent_tasks_are_all_accounted_for(load_stack: Stack) -> None:
    stack = load_stack
    tasks = {
        new_task_id("load"): ("summarize my history" if i % 2 else "open a ticket: load test")
        for i in range(TASKS)
    }

    def start(task_id: str) -> str:
        return stack.send("AgentTask", task_id, "run", {"user_id": "u-2", "task": tasks[task_id]})

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        invocations = list(pool.map(start, tasks))
    sent = time.monotonic() - started
    assert len(set(invocations)) == TASKS  # one invocation per task

    views = wait_settled(stack, list(tasks), timeout=600)
    parked = [t for t, v in views.items() if v["state"] == "WAIT_APPROVAL"]
    settled_after = time.monotonic() - started

    def approve(task_id: str) -> int:
        return stack.decide("AgentTask", task_id, "approve").status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert set(pool.map(approve, parked)) <= {200}
    ends = [stack.wait_for_state("AgentTask", t, END, timeout=600) for t in tasks]
    total = time.monotonic() - started

    assert len(parked) == TASKS // 2
    assert [v["state"] for v in ends] == ["COMPLETE"] * TASKS  # none lost
    store = store_for(stack.database_url)
    assert all(
        len(store.events("AgentTask", v["task_id"])) == len(v["history"]) for v in ends
    )  # none doubled
    assert verify_store(store).ok
    record_figure(
        f"load, {TASKS} tasks",
        f"starts sent in {sent:.1f} s; all settled (done or parked: {len(parked)}) "
        f"after {settled_after:.1f} s; "
        f"all complete after {total:.1f} s ({TASKS / total:.1f} tasks/s end to end on 2 cores)",
    )
