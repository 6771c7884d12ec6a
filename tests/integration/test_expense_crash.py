"""Crashes during RECORD: the agent service killed while the ledger call is in flight, and the tool
service killed in the middle of the ledger write. Either way: exactly one posting."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deploy.local import ManagedProcess, Stack, running_stack, wait_until
from tests.integration.conftest import sqlite_url
from tests.integration.flows import (
    END,
    assert_one_event_per_transition,
    idempotency_status,
    slow_tools_env,
    tool_key,
)
from tests.integration.test_expense_report import postings, run_report, seeded

RELIABILITY = {
    "check": ("Crash during RECORD: exactly one ledger posting"),
    "injected": (
        "SIGKILL of the agent service during the ledger call; SIGKILL of the tool service in the "
        "middle of the ledger write"
    ),
}


@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("expense-crash")
    with running_stack(workdir, sqlite_url(workdir), extra_env=slow_tools_env("record_expense")) as running:
        yield running


def crash_during_record(stack: Stack, victim: ManagedProcess) -> None:
    expense_id = seeded(stack)["small-lunch"]  # auto-approved: straight from ROUTE to RECORD
    task_id = run_report(stack, expense_id)
    key = tool_key(stack, "ExpenseReport", task_id, "RECORD.1:0")
    wait_until(lambda: idempotency_status(stack, key) == "in_flight", timeout=90, what=f"{key} in flight")
    victim.kill()
    assert not victim.alive()
    victim.start()

    view = stack.wait_for_state("ExpenseReport", task_id, END, timeout=120)
    assert view["state"] == "COMPLETE", view
    assert idempotency_status(stack, key) == "done"
    [posting] = postings(stack, expense_id)
    assert posting["posting_id"] == view["result"]["posting_id"]
    assert_one_event_per_transition(stack, "ExpenseReport", task_id, view)


def test_agent_service_killed_during_record_posts_exactly_once(slow_stack: Stack) -> None:
    assert slow_stack.app is not None
    crash_during_record(slow_stack, slow_stack.app)


def test_tool_service_killed_during_the_ledger_write_posts_exactly_once(slow_stack: Stack) -> None:
    assert slow_stack.tools is not None
    crash_during_record(slow_stack, slow_stack.tools)
