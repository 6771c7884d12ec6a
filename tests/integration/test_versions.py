"""Versioned deployments: each release registers at its own endpoint; parked tasks finish on the
deployment that started them, new tasks start on the new one, and a deployment is removable only
once drained."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.audit.event_log import store_for, verify_store
from deploy.local import Stack, running_stack, wait_until
from tests.figures import record_figure
from tests.integration.agentctl_runner import agentctl
from tests.integration.conftest import sqlite_url
from tests.integration.flows import assert_one_event_per_transition, new_task_id, wait_parked

RELIABILITY = {
    "check": (
        "Versioned deployments: parked tasks finish on the release that started them; a release is"
        " removable only once drained; an in-place deploy that rewords a note forks nothing"
    ),
    "injected": (
        "20 tasks parked on v1, then a v2 registered whose machine journals differently; a release that"
        " rewords a note deployed in place over 3 parked tasks, then rolled back"
    ),
}

PARKED = 20
# The Greeter's terminal states (tests/integration/throwaway_agent.py).
ENDED = {"SENT", "DROPPED"}
THROWAWAY = {"AGENT_MODULES": "tests.integration.throwaway_agent", "AGENT_INACTIVITY_TIMEOUT_SECONDS": "1"}


@pytest.fixture(scope="module")
def v1_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("versions")
    with running_stack(workdir, sqlite_url(workdir), extra_env=THROWAWAY) as running:
        yield running


def listed(stack: Stack) -> list[dict[str, Any]]:
    done = agentctl(stack, "deployments", "list", "--json")
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)["deployments"]
    return rows


def journal_names(stack: Stack, agent: str, task_id: str) -> list[str]:
    rows = stack.sql(
        "select j.name as name from sys_journal j join sys_invocation i on j.id = i.id "
        f"where i.target_service_name = '{agent}' and i.target_service_key = '{task_id}' "
        "and i.target_handler_name = 'run'"
    )
    return [str(row["name"]) for row in rows if row.get("name")]


def pinned(stack: Stack, agent: str, task_id: str) -> str:
    [row] = stack.sql(
        "select pinned_deployment_id as d from sys_invocation "
        f"where target_service_name = '{agent}' and target_service_key = '{task_id}' "
        "and target_handler_name = 'run'"
    )
    return str(row["d"])


def test_parked_tasks_finish_on_their_release_and_new_ones_start_on_the_next(v1_stack: Stack) -> None:
    stack = v1_stack
    parked = [new_task_id("v1") for _ in range(PARKED)]
    for task_id in parked:
        stack.send("Greeter", task_id, "run", {"name": "Ada"})
    for task_id in parked:
        wait_parked(stack, task_id, agent="Greeter")
    [v1] = listed(stack)
    assert v1["latest"] and v1["held"] == {"Greeter": PARKED}

    # Release v2: another process at its own endpoint, whose SEND step journals one step more.
    v2, v2_url = stack.start_release("v2", {"GREETER_VARIANT": "v2"})
    try:
        registered = httpx.post(f"{stack.admin_url}/deployments", json={"uri": v2_url}, timeout=30)
        assert registered.status_code < 300, registered.text
        rows = {row["uri"].rstrip("/"): row for row in listed(stack)}
        new = rows[v2_url]
        old = rows[v1["uri"].rstrip("/")]
        assert new["latest"] and not old["latest"] and old["held"] == {"Greeter": PARKED}
        # v1 still holds the parked tasks: removing it is refused, and says why.
        refused = agentctl(stack, "deployments", "remove", old["id"])
        assert (
            refused.returncode == 4
            and "not drained" in refused.stderr
            and f"Greeter {PARKED}" in refused.stderr
        )

        for task_id in parked:
            assert stack.decide("Greeter", task_id, "approve").status_code == 200
        views = [stack.wait_for_state("Greeter", t, ENDED, timeout=120) for t in parked]
        assert {v["state"] for v in views} == {"SENT"}, [v["error"] for v in views]
        for task_id in parked:
            assert pinned(stack, "Greeter", task_id) == old["id"]
            assert not any("v2 stamp" in name for name in journal_names(stack, "Greeter", task_id))

        fresh = new_task_id("v2")
        stack.send("Greeter", fresh, "run", {"name": "Grace"})
        wait_parked(stack, fresh, agent="Greeter")
        assert stack.decide("Greeter", fresh, "approve").status_code == 200
        assert stack.wait_for_state("Greeter", fresh, ENDED, timeout=60)["state"] == "SENT"
        assert pinned(stack, "Greeter", fresh) == new["id"]
        assert any("v2 stamp" in name for name in journal_names(stack, "Greeter", fresh))

        # Drained: v1 can go; the latest one cannot.
        assert agentctl(stack, "deployments", "remove", new["id"]).returncode == 4
        removed = agentctl(stack, "deployments", "remove", old["id"])
        assert removed.returncode == 0 and f"removed {old['id']}" in removed.stdout, removed.stderr
        assert [row["id"] for row in listed(stack)] == [new["id"]]
        assert agentctl(stack, "deployments", "remove", "dp_nosuch").returncode == 3
        record_figure(
            "parked across a version change",
            f"{PARKED} tasks parked on v1, v2 registered (journals one step more): {PARKED} completed on v1,"
            " new tasks on v2, v1 removed only once drained",
        )
    finally:
        v2.stop()


@pytest.fixture
def in_place_stack(tmp_path: Path) -> Iterator[Stack]:
    """A stack of its own: the test above leaves the module's stack on another release."""
    with running_stack(tmp_path, sqlite_url(tmp_path), extra_env=THROWAWAY) as running:
        yield running


def test_a_release_deployed_in_place_that_rewords_a_note_forks_nothing_and_rolls_back(
    in_place_stack: Stack,
) -> None:
    """The upgrade versioned deployments exist to avoid: new code on the same endpoint over parked
    tasks, wording an earlier transition's note differently. Replaying a parked task there does not
    match its journal (the task record it wrote held the old note), so Restate refuses the replay
    before anything is written: the chain does not fork, and no event is added or changed. Rolled
    back to the release that started them, the same tasks go on and complete."""
    stack = in_place_stack
    assert stack.app is not None
    task_ids = [new_task_id("reword") for _ in range(3)]
    for task_id in task_ids:
        stack.send("Greeter", task_id, "run", {"name": "Ada"})
    for task_id in task_ids:
        wait_parked(stack, task_id, agent="Greeter")
    store = store_for(stack.database_url)

    def logged() -> dict[str, list[str]]:
        return {t: [e.hash for e in store.events("Greeter", t)] for t in task_ids}

    before = logged()
    original = dict(stack.extra_env)
    stack.app.stop()
    stack.extra_env = {**original, "GREETER_NOTES": "reworded"}
    stack.start_app()
    try:
        for task_id in task_ids:
            assert stack.decide("Greeter", task_id, "approve").status_code == 200
        wait_until(
            lambda: all(f'"task_id":"{t}"' in refused_replays(stack) for t in task_ids),
            timeout=60,
            what="every replay on the reworded release to be refused",
        )
        assert {stack.status("Greeter", t)["state"] for t in task_ids} == {"REVIEW"}
        assert logged() == before
        assert verify_store(store).ok
    finally:
        # Roll back: the release that started them.
        stack.app.stop()
        stack.extra_env = original
        stack.start_app()
    views = [stack.wait_for_state("Greeter", t, ENDED, timeout=60) for t in task_ids]
    assert {v["state"] for v in views} == {"SENT"}, [v["error"] for v in views]
    for task_id, view in zip(task_ids, views, strict=True):
        assert_one_event_per_transition(stack, "Greeter", task_id, view)
        assert [e.hash for e in store.events("Greeter", task_id)][: len(before[task_id])] == before[task_id]
    assert verify_store(store).ok
    verified = agentctl(stack, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def refused_replays(stack: Stack) -> str:
    """What the agent service logged of the replays Restate's SDK refused: the journaled value and
    the new one of each mismatch (both name the task)."""
    assert stack.app is not None
    log = stack.app.log_path.read_text(errors="replace")
    return "\n".join(part for part in log.split("Found a mismatch")[1:])
