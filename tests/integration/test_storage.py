"""Bounded storage: what one task costs in Restate and in the database, and what archiving and the
sweeper give back. A finished task's events move into a verified archive file and its Restate
record shrinks to a summary; done idempotency keys past their retention are swept."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from deploy.local import ROOT, running_stack, wait_until
from tests.figures import record_figure
from tests.integration.agentctl_runner import agentctl, timeline_events
from tests.integration.flows import new_task_id, wait_parked

RELIABILITY = {
    "check": (
        "Bounded storage: a finished task archived (events to a verified file, its Restate record to a"
        " summary) and its idempotency keys swept; figures per task"
    ),
    "injected": "one finished and one parked task archived; a sweep with a retention already past",
}

TASK_TEXT = "open a ticket: storage test"


def test_archive_moves_finished_tasks_and_the_chain_still_verifies(tmp_path: Path) -> None:
    with running_stack(tmp_path / "stack", f"sqlite:///{tmp_path / 'agents.db'}") as own:
        finished = new_task_id("done")
        answer = own.call("AgentTask", finished, "run", {"user_id": "u-1", "task": "Summarize my history"})
        assert answer.status_code == 200, answer.text
        parked = new_task_id("parked")
        assert (
            agentctl(own, "start", "AgentTask", parked, "--user-id", "u-1", "--task", TASK_TEXT).returncode
            == 0
        )
        wait_parked(own, parked)
        before = timeline_events(own, finished)
        rows = own.sql(f"select key, value_length from state where service_key = '{finished}'")
        state_keys_before = {finished: sum(int(row["value_length"]) for row in rows)}
        keys_of_finished = database_count(
            tmp_path, "select count(*) from idempotency_keys where key like ?", f"%{finished}%"
        )
        assert keys_of_finished > 0

        archive_dir = tmp_path / "archive"
        done = agentctl(own, "archive", "--older-than", "0s", "--dir", str(archive_dir))
        assert done.returncode == 0, done.stderr
        [archived] = list(archive_dir.glob("events-*.jsonl.gz"))
        assert done.stdout.strip() == f"{archived}: {len(before)} event(s) of 1 task(s)"
        assert "archiving tasks finished before" in done.stderr and "done:" in done.stderr
        assert "Restate records reduced to summaries: 1 task(s)" in done.stderr

        # Restate keeps only the finished task's summary; status and a repeated run still answer.
        def state_keys(task_id: str) -> dict[str, int]:
            rows = own.sql(f"select key, value_length from state where service_key = '{task_id}'")
            return {str(row["key"]): int(row["value_length"]) for row in rows}

        wait_until(
            lambda: "archived" in str(own.status("AgentTask", finished)), timeout=30, what="the summary"
        )
        assert set(state_keys(finished)) == {"task"}
        summary = own.status("AgentTask", finished)
        assert summary["state"] == "COMPLETE" and summary["archived"] == str(archived.resolve())
        assert summary["result"] == answer.json()["result"]
        repeated = own.call("AgentTask", finished, "run", {"user_id": "u-1", "task": "Summarize my history"})
        assert repeated.status_code == 200 and repeated.json()["archived"] == str(archived.resolve())
        other = own.call("AgentTask", finished, "run", {"user_id": "u-2", "task": "Summarize my history"})
        assert other.status_code == 409
        assert set(state_keys(parked)) >= {"task"}  # the parked task is untouched
        record_figure(
            "storage per task",
            f"a finished task's Restate record {state_keys_before[finished]} bytes, its summary after"
            f" archiving {state_keys(finished)['task']} bytes; its {len(before)} event rows moved to the"
            f" archive file; its {keys_of_finished} idempotency rows deleted by the sweeper after their"
            " retention",
        )

        # The finished task's events left the event log (its own file beside agents.db); the parked
        # one's stayed.
        database = sqlite3.connect(tmp_path / "agents.events.db")
        try:
            kept = dict(
                database.execute("select task_id, count(*) from task_events group by task_id").fetchall()
            )
        finally:
            database.close()
        assert finished not in kept and kept[parked] == 5

        verified = agentctl(own, "verify", "--json")
        assert verified.returncode == 0, verified.stdout
        report = json.loads(verified.stdout)
        assert report["ok"] is True and report["tasks"] == 2 and report["events"] == len(before) + 5
        # The timeline still reads the archived task, from the archive.
        assert timeline_events(own, finished) == before
        again = agentctl(own, "archive", "--older-than", "0s", "--dir", str(archive_dir), "--json")
        assert json.loads(again.stdout) == {"file": None, "events": 0, "tasks": 0, "restate_records": None}

        # An edited event breaks its chain: verify names the first broken link and exits 6.
        database = sqlite3.connect(tmp_path / "agents.events.db")
        try:
            with database:
                database.execute(
                    'update task_events set payload = \'{"note": "edited"}\' where task_id = ? and seq = 3',
                    (parked,),
                )
        finally:
            database.close()
        broken = agentctl(own, "verify")
        assert broken.returncode == 6, broken.stdout + broken.stderr
        assert f"BROKEN AgentTask/{parked} at event 3: content does not match its hash" in broken.stdout

        # Release the parked task, so the agent service holds no waiting invocation when it stops.
        assert agentctl(own, "reject", "AgentTask", parked, "--approver", "ops-lead").returncode == 0
        own.wait_for_state("AgentTask", parked, {"FAILED"})

        # The sweeper, with a retention already past: the done keys go, the task is unaffected.
        swept = subprocess.run(
            [sys.executable, "-m", "tools", "sweep"],
            env={**own.service_env(), "IDEMPOTENCY_RETENTION_DAYS": "0.000001"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert swept.returncode == 0, swept.stderr
        assert json.loads(swept.stdout)["idempotency_keys"] >= keys_of_finished
        left = database_count(
            tmp_path, "select count(*) from idempotency_keys where key like ?", f"%{finished}%"
        )
        assert left == 0
        assert own.status("AgentTask", finished)["state"] == "COMPLETE"


def database_count(tmp_path: Path, query: str, *params: str) -> int:
    database = sqlite3.connect(tmp_path / "agents.db")
    try:
        return int(database.execute(query, params).fetchone()[0])
    finally:
        database.close()
