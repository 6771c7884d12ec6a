"""Faults of the dependencies: tools slower than their timeout, and restate-server SIGKILLed with
100 tasks in flight. Nothing lost, nothing doubled. (The tool service killed mid-request is in
test_expense_crash.py: the caller never learns the outcome, and the retry under the same key does
not act twice.)"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from app.audit.event_log import store_for, verify_store
from deploy.local import Stack, running_stack
from tests.figures import record_figure
from tests.integration.conftest import sqlite_url
from tests.integration.flows import END, idempotency_status, new_task_id, run_approved, wait_settled
from tests.integration.private_postgres import PrivatePostgres, private_postgres

# 100 tasks in flight in `make reliability`; 20 in `make test`, to keep it within its time budget.
IN_FLIGHT = 100 if os.environ.get("RELIABILITY_FULL") == "1" else 20

RELIABILITY = {
    "check": (
        "Dependency faults: tools slower than their timeout and a restate-server SIGKILL with 100 tasks "
        "in flight lose nothing and double nothing"
    ),
    "injected": (
        "every tool call 1.2 s with a 0.5 s client timeout; SIGKILL and restart of restate-server while "
        "100 tasks start; every PostgreSQL connection cut every 0.3 s during 20 flows, then a real restart"
        " of the (private, pg_ctl-started) server while half of them execute"
    ),
}


@pytest.fixture
def slow_tools_stack(tmp_path: Path) -> Iterator[Stack]:
    # Every call outlasts the client's timeout by more than twice (the ratio is what matters).
    # The lease (longer than a call) bounds the Retry-After of a call still in flight: 2 s, not 5.
    env = {
        "TOOL_TIMEOUT_SECONDS": "0.5",
        "TOOLS_SIMULATED_LATENCY_MS": "1200",
        "IDEMPOTENCY_LEASE_SECONDS": "2",
    }
    with running_stack(tmp_path, sqlite_url(tmp_path), extra_env=env) as stack:
        yield stack


def test_tools_slower_than_their_timeout_act_once(slow_tools_stack: Stack) -> None:
    stack = slow_tools_stack
    assert stack.app is not None
    view = run_approved(stack, new_task_id("slow"), "open a ticket: the slow printer is broken")
    assert view["state"] == "COMPLETE", view
    # The caller gave up on every call after 0.5 s and retried under the same key: each key is done
    # once, the ticket exists once.
    for call in view["data"]["executed"]:
        assert idempotency_status(stack, call["idempotency_key"]) == "done"
    ticket_id = view["data"]["executed"][0]["result"]["ticket_id"]
    tickets = stack.tools_get("/tickets").json()["tickets"]
    assert [t["ticket_id"] for t in tickets].count(ticket_id) == 1
    assert "ReadTimeout" in stack.app.log_path.read_text(), "no call outlasted its timeout"


@pytest.fixture
def busy_stack(tmp_path: Path) -> Iterator[Stack]:
    with running_stack(tmp_path, sqlite_url(tmp_path)) as stack:
        yield stack


def test_restate_server_killed_with_tasks_in_flight(busy_stack: Stack) -> None:
    stack = busy_stack
    assert stack.restate is not None
    task_ids = [new_task_id("flight") for _ in range(IN_FLIGHT)]

    def start(task_id: str) -> str:
        return stack.send(
            "AgentTask", task_id, "run", {"user_id": "u-1", "task": f"open a ticket: {task_id}"}
        )

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(start, task_ids))
    # Kill the server while the tasks are still working their way to the gate.
    stack.restate.kill()
    stack.restate.start(timeout=90)

    views = wait_settled(stack, task_ids, timeout=180)

    def approve(task_id: str) -> int:
        if views[task_id]["state"] != "WAIT_APPROVAL":
            return 200
        return stack.decide("AgentTask", task_id, "approve").status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(approve, task_ids)) == {200}
    ends = [stack.wait_for_state("AgentTask", t, END, timeout=180) for t in task_ids]
    elapsed = time.monotonic() - started
    print(f"{IN_FLIGHT} tasks through a restate-server crash and their approvals in {elapsed:.1f} s")
    record_figure(
        f"{IN_FLIGHT} tasks through a restate-server SIGKILL", f"all complete after {elapsed:.1f} s, 0 lost"
    )

    assert [v["state"] for v in ends] == ["COMPLETE"] * IN_FLIGHT  # none lost
    created = [v["data"]["executed"][0]["result"]["ticket_id"] for v in ends]
    assert len(set(created)) == IN_FLIGHT
    for view in ends:  # none doubled: one event per transition, each effect done once
        events = store_for(stack.database_url).events("AgentTask", view["task_id"])
        assert len(events) == len(view["history"])
    assert verify_store(store_for(stack.database_url)).ok


@pytest.fixture
def pg_stack(tmp_path: Path) -> Iterator[tuple[Stack, PrivatePostgres]]:
    """The whole stack on a private PostgreSQL cluster this test starts (and may restart)."""
    with private_postgres() as cluster:
        env = {"IDEMPOTENCY_LEASE_SECONDS": "3"}
        with running_stack(tmp_path, cluster.url, extra_env=env) as stack:
            yield stack, cluster


def test_database_connections_dropped_and_the_server_restarted_during_flows_lose_and_double_nothing(
    pg_stack: tuple[Stack, PrivatePostgres],
) -> None:
    stack, cluster = pg_stack
    database = "postgres"
    admin = create_engine(cluster.url, isolation_level="AUTOCOMMIT")
    task_ids = [new_task_id("pgdrop") for _ in range(20)]
    stop = threading.Event()
    dropped: list[int] = []

    def drop_connections() -> None:
        # What a database restart looks like to the services: every connection cut, again and again.
        query = text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = :name AND pid <> pg_backend_pid()"
        )
        while not stop.is_set():
            with admin.connect() as connection:
                dropped.append(int(connection.execute(query, {"name": database}).scalar() or 0))
            stop.wait(0.3)

    cutter = threading.Thread(target=drop_connections, daemon=True)
    cutter.start()
    try:
        for i, task_id in enumerate(task_ids):
            text_ = "summarize my history" if i % 2 else f"open a ticket: {task_id}"
            stack.send("AgentTask", task_id, "run", {"user_id": "u-1", "task": text_})
        views = {
            t: stack.wait_for_state("AgentTask", t, {"WAIT_APPROVAL", *END}, timeout=180) for t in task_ids
        }
    finally:
        stop.set()
        cutter.join(timeout=10)
        admin.dispose()
    assert sum(dropped) > 0, "no connection was ever cut"

    assert all(view["state"] in {"WAIT_APPROVAL", *END} for view in views.values())
    settled = wait_settled(stack, task_ids, timeout=120)
    waiting = [task_id for task_id, view in settled.items() if view["state"] == "WAIT_APPROVAL"]
    for task_id in waiting[: len(waiting) // 2]:
        assert stack.decide("AgentTask", task_id, "approve").status_code == 200
    # A real restart of the server while the approved half executes: every connection gone, the
    # server away for a moment. The other half is approved after it is back.
    cluster.restart()
    for task_id in waiting[len(waiting) // 2 :]:
        assert stack.decide("AgentTask", task_id, "approve").status_code == 200
    ends = [stack.wait_for_state("AgentTask", t, END, timeout=180) for t in task_ids]
    assert [v["state"] for v in ends] == ["COMPLETE"] * 20
    store = store_for(stack.database_url)
    for view in ends:
        assert len(store.events("AgentTask", view["task_id"])) == len(view["history"])
        for call in view["data"]["executed"]:
            assert idempotency_status(stack, call["idempotency_key"]) == "done"
    assert verify_store(store).ok
    record_figure(
        "PostgreSQL connections cut and the server restarted during 20 flows",
        f"{sum(dropped)} connections terminated and one restart of a private cluster, 0 lost, 0 doubled",
    )
