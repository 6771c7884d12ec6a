"""The recorded-journal guard: a reference run's journal shape must equal the recorded golden one,
and a build that reorders journaled steps is caught before it ships.

Regenerate the golden files after an intended change with `UPDATE_GOLDEN=1 make test` (and ship
that change keeping the old deployment for in-flight invocations)."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest

from deploy.local import ManagedProcess, Stack, free_port
from tests.integration.flows import END
from tests.journal_guard import compare, journal_signature, read_golden, write_golden
from tools.domains.expense.seed import seed_expenses

RELIABILITY = {
    "check": (
        "Recorded-journal guard: reference runs keep the recorded journal shape; a build that reorders "
        "journaled steps is detected"
    ),
    "injected": "a build of a service that journals the same steps in another order",
}


def reference_invocation(stack: Stack, agent: str, key: str, body: dict[str, str]) -> str:
    invocation_id = stack.send(agent, key, "run", body)
    view = stack.wait_for_state(agent, key, END, timeout=120)
    assert view["state"] == "COMPLETE", view
    return invocation_id


@pytest.mark.parametrize("agent", ["AgentTask", "ExpenseReport"])
def test_reference_runs_keep_the_recorded_journal_shape(stack: Stack, agent: str) -> None:
    key = f"golden-{uuid.uuid4().hex[:8]}"
    if agent == "AgentTask":
        body = {"user_id": "u-1", "task": "summarize my history"}
    else:
        with httpx.Client(base_url=stack.tools_url, timeout=60, headers=stack.expenses_auth) as client:
            expenses = seed_expenses(client, batch=key)
        body = {"expense_id": next(e.expense_id for e in expenses if e.label == "small-lunch")}
    signature = journal_signature(stack, reference_invocation(stack, agent, key, body))
    if os.environ.get("UPDATE_GOLDEN") == "1":
        write_golden(agent, signature)
    diff = compare(read_golden(agent), signature)
    assert not diff, (
        "the journaled steps changed: invocations started by the old code would fail to replay.\n"
        + "\n".join(diff)
    )


@pytest.fixture
def probe_port(stack: Stack) -> Iterator[int]:
    yield free_port()


def serve_probe(stack: Stack, port: int, reordered: bool) -> ManagedProcess:
    env = {**stack.service_env(), "JOURNAL_PROBE_REORDERED": "1" if reordered else "0"}
    process = ManagedProcess(
        name="journal probe",
        argv=[sys.executable, "-m", "tests.integration.journal_probe", str(port)],
        env=env,
        log_path=stack.workdir / f"logs/journal-probe-{port}.log",
        ready=lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code < 500,
    )
    process.start()
    registered = httpx.post(
        f"{stack.admin_url}/deployments", json={"uri": f"http://127.0.0.1:{port}", "force": True}, timeout=30
    )
    assert registered.status_code < 300, registered.text
    return process


def probe_signature(stack: Stack) -> list[str]:
    key = uuid.uuid4().hex[:8]
    invocation_id = stack.send("JournalProbe", key, "run", None)
    response = httpx.get(f"{stack.ingress_url}/restate/attach/{invocation_id}", timeout=60)
    assert response.status_code == 200, response.text
    return journal_signature(stack, invocation_id)


def test_a_build_that_reorders_journaled_steps_is_caught(stack: Stack, probe_port: int) -> None:
    process = serve_probe(stack, probe_port, reordered=False)
    try:
        recorded = probe_signature(stack)
        assert compare(recorded, probe_signature(stack)) == []  # the same build: no difference
    finally:
        process.stop()
    process = serve_probe(stack, probe_port, reordered=True)
    try:
        reordered = probe_signature(stack)
    finally:
        process.stop()
    # The guard reports the change, and it is exactly a reordering of the same two steps.
    assert compare(recorded, reordered) != []
    assert sorted(recorded) == sorted(reordered)
    first, second = "Command: Run [first]", "Command: Run [second]"
    assert recorded.index(first) < recorded.index(second)
    assert reordered.index(second) < reordered.index(first)
