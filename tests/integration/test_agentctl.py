"""agentctl against the real stack: start, watch while approving, status, timeline, journal, verify, archive.

Most commands run agentctl's `main` in the test's process, with the stack's environment in place
of the process's own, and their output captured: the same argument parsing, HTTP and exit codes, a
second less per command than a new interpreter. The live ones (`watch`, `start --wait`) and the
entry point itself run as subprocesses (`python -m app.cli.agentctl`), exactly as an operator runs
them; every process a test starts is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from deploy.local import ROOT, Stack, wait_until
from tests.integration.agentctl_runner import CLI, agentctl, cli_env, timeline_events
from tests.integration.flows import HAPPY_PATH, new_task_id, wait_parked

TASK_TEXT = "open a ticket: agentctl test"


def agentctl_process(stack: Stack, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """agentctl as an operator runs it: a new process, the stack's environment."""
    return subprocess.run(
        [*CLI, *args],
        env=cli_env(stack),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Background:
    """An agentctl subprocess whose stdout lines are collected live by a reader thread."""

    process: subprocess.Popen[str]
    stderr_path: Path
    stderr_file: IO[str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        if self.reader is not None:
            self.reader.join(timeout=10)
        return code

    @property
    def stderr(self) -> str:
        self.stderr_file.flush()
        return self.stderr_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.reader is not None:
            self.reader.join(timeout=10)
        self.stderr_file.close()


@pytest.fixture
def background(stack: Stack, tmp_path: Path) -> Iterator[Any]:
    started: list[Background] = []

    def run(*args: str) -> Background:
        stderr_path = tmp_path / f"agentctl-{len(started)}.err"
        stderr_file = open(stderr_path, "w+")
        process = subprocess.Popen(
            [*CLI, *args],
            env=cli_env(stack),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        item = Background(process=process, stderr_path=stderr_path, stderr_file=stderr_file)
        item.reader = threading.Thread(target=item.read, daemon=True)
        item.reader.start()
        started.append(item)
        return item

    yield run
    for item in started:
        item.stop()


@dataclass
class Approved:
    task_id: str
    start: subprocess.CompletedProcess[str]
    approve: subprocess.CompletedProcess[str]
    watch_code: int
    watch_lines: list[str]
    watch_stderr: str


@pytest.fixture(scope="module")
def approved(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Approved]:
    """One AgentTask started with `start`, followed by `watch` in the background, approved by `approve`."""
    task_id = new_task_id("ctl")
    started = agentctl(stack, "start", "AgentTask", task_id, "--user-id", "u-1", "--task", TASK_TEXT)
    assert started.returncode == 0, started.stderr
    stderr_path = tmp_path_factory.mktemp("watch") / "watch.err"
    with open(stderr_path, "w+") as stderr_file:
        process = subprocess.Popen(
            [*CLI, "watch", "AgentTask", task_id, "--timeout", "120", "--interval", "0.2"],
            env=cli_env(stack),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        watch = Background(process=process, stderr_path=stderr_path, stderr_file=stderr_file)
        watch.reader = threading.Thread(target=watch.read, daemon=True)
        watch.reader.start()
        try:
            wait_parked(stack, task_id)
            # The watch is live: it has printed the transition into the gate before anyone decides.
            wait_until(
                lambda: any("-> WAIT_APPROVAL" in line for line in watch.lines),
                timeout=30,
                what="watch to print the transition into WAIT_APPROVAL",
            )
            approve = agentctl(
                stack, "approve", "AgentTask", task_id, "--approver", "ops-lead", "--comment", "ok"
            )
            code = watch.wait(timeout=120)
            yield Approved(
                task_id=task_id,
                start=started,
                approve=approve,
                watch_code=code,
                watch_lines=list(watch.lines),
                watch_stderr=watch.stderr,
            )
        finally:
            watch.stop()


def test_the_entry_point_runs_as_an_operator_runs_it(stack: Stack, approved: Approved) -> None:
    done = agentctl_process(stack, "status", "AgentTask", approved.task_id, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "COMPLETE"
    unknown = agentctl_process(stack, "status", "AgentTask", new_task_id("nobody"))
    assert unknown.returncode == 3 and unknown.stdout == ""


def status_json(stack: Stack, task_id: str, agent: str = "AgentTask") -> dict[str, Any]:
    done = agentctl(stack, "status", agent, task_id, "--json")
    assert done.returncode == 0, done.stderr
    view: dict[str, Any] = json.loads(done.stdout)
    return view


# --- start, watch, approve, status ---------------------------------------------------------------


def test_start_prints_the_invocation_id(approved: Approved) -> None:
    assert approved.start.stdout.splitlines()[0].startswith("inv_")
    assert "Accepted" in approved.start.stderr


def test_start_again_never_starts_twice(stack: Stack, approved: Approved) -> None:
    again = agentctl(stack, "start", "AgentTask", approved.task_id, "--user-id", "u-1", "--task", TASK_TEXT)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == approved.start.stdout.splitlines()[0]
    assert "PreviouslyAccepted" in again.stderr
    assert [row["id"] for row in run_invocations(stack, approved.task_id)] == [again.stdout.split()[0]]


def run_invocations(stack: Stack, task_id: str) -> list[dict[str, Any]]:
    return stack.sql(
        "select id from sys_invocation where target_service_name = 'AgentTask' "
        f"and target_service_key = '{task_id}' and target_handler_name = 'run'"
    )


def test_watch_printed_every_transition_in_order_and_ended_complete(approved: Approved) -> None:
    assert approved.approve.returncode == 0, approved.approve.stderr
    assert "approve by ops-lead recorded" in approved.approve.stdout
    assert approved.watch_code == 0, approved.watch_stderr
    transitions = [line for line in approved.watch_lines if " -> " in line]
    assert [line.split(" -> ")[1].split()[0] for line in transitions] == HAPPY_PATH
    assert "(start) -> INITIAL  created" in transitions[0]
    assert "WAIT_APPROVAL -> EXECUTE  approved by ops-lead" in transitions[5]
    assert approved.watch_lines[-1].startswith("COMPLETE: ")
    assert "waiting for approval at WAIT_APPROVAL by ops-lead" in approved.watch_stderr


def test_status_json_shows_complete_with_the_approval(stack: Stack, approved: Approved) -> None:
    view = status_json(stack, approved.task_id)
    assert view["state"] == "COMPLETE" and view["terminal"] is True
    assert view["pending_approval"] is None
    [approval] = view["approvals"]
    assert approval["approver"] == "ops-lead" and approval["comment"] == "ok"
    human = agentctl(stack, "status", "AgentTask", approved.task_id)
    assert human.returncode == 0
    assert human.stdout.startswith(f"AgentTask/{approved.task_id}: COMPLETE (terminal)")
    assert "approval at WAIT_APPROVAL: approve by ops-lead (ok)" in human.stdout
    assert "result: " in human.stdout
    # What it used: the offline model's 3 calls, estimated and free; its 2 tool calls.
    spend = view["spend"]
    assert (spend["llm_calls"], spend["cost_usd"], spend["tool_calls"]) == (3, "0", 2)
    assert spend["input_tokens"] > 0 and spend["output_tokens"] > 0
    assert (
        f"spent: 3 model call(s), {spend['input_tokens']:,} in + {spend['output_tokens']:,} out tokens "
        "(estimated), $0; 2 tool call(s)"
    ) in human.stdout


def test_approve_again_is_refused(stack: Stack, approved: Approved) -> None:
    # Not waiting any more: refused before sending anything...
    again = agentctl(stack, "approve", "AgentTask", approved.task_id, "--approver", "ops-lead")
    assert again.returncode == 4, again.stderr
    assert "not waiting for an approval" in again.stderr
    # ...and the approvals service refuses it too when the hash is given (409).
    approval_hash = status_json(stack, approved.task_id)["approvals"][0]["approval_hash"]
    forced = agentctl(
        stack, "approve", "AgentTask", approved.task_id, "--approver", "ops-lead", "--hash", approval_hash
    )
    assert forced.returncode == 4, forced.stderr
    assert "refused (409)" in forced.stderr
    assert len(forced.stderr.strip().splitlines()) == 1


def test_reject_of_an_unknown_task(stack: Stack) -> None:
    nobody = new_task_id("nobody")
    without_hash = agentctl(stack, "reject", "AgentTask", nobody, "--approver", "ops-lead")
    assert without_hash.returncode == 3, without_hash.stderr
    assert f"no AgentTask task '{nobody}'" in without_hash.stderr
    with_hash = agentctl(stack, "reject", "AgentTask", nobody, "--approver", "ops-lead", "--hash", "f" * 64)
    assert with_hash.returncode == 4, with_hash.stderr
    assert "not waiting" in with_hash.stderr


def test_decision_with_a_wrong_secret_is_exit_5_with_a_hint(stack: Stack) -> None:
    env = {"APPROVAL_WEBHOOK_SECRET": "not-the-secret"}
    done = agentctl(
        stack, "approve", "AgentTask", new_task_id("x"), "--approver", "ops-lead", "--hash", "a" * 64, env=env
    )
    assert done.returncode == 5, done.stderr
    assert "APPROVAL_WEBHOOK_SECRET" in done.stderr and "not-the-secret" not in done.stderr + done.stdout


def test_status_of_an_unknown_task_is_exit_3(stack: Stack) -> None:
    done = agentctl(stack, "status", "AgentTask", new_task_id("nobody"))
    assert done.returncode == 3
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1


def test_status_of_an_unknown_agent_is_exit_3(stack: Stack) -> None:
    # Agents are not listed in agentctl (the registry is the servers'): Restate answers for them.
    done = agentctl(stack, "status", "NoSuchAgent", new_task_id("nobody"))
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1


def test_watch_of_an_unknown_task_is_exit_3(stack: Stack) -> None:
    done = agentctl(stack, "watch", "ExpenseReport", new_task_id("nobody"), "--start-grace", "0.5")
    assert done.returncode == 3, done.stderr


def test_watch_timeout_then_start_wait_ends_failed_when_rejected(stack: Stack, background: Any) -> None:
    task_id = new_task_id("rej")
    task = ["AgentTask", task_id, "--user-id", "u-2", "--task", "open a ticket: rejected by agentctl"]
    assert agentctl(stack, "start", *task).returncode == 0
    wait_parked(stack, task_id)
    timed_out = agentctl(stack, "watch", "AgentTask", task_id, "--timeout", "1", "--interval", "0.2")
    assert timed_out.returncode == 7, timed_out.stderr
    assert "timed out after 1s" in timed_out.stderr and "WAIT_APPROVAL" in timed_out.stderr
    # `start --wait` again: the same invocation (idempotency key), followed to its end.
    waiting = background("start", *task, "--wait", "--timeout", "120", "--interval", "0.2")
    wait_until(
        lambda: any("-> WAIT_APPROVAL" in line for line in waiting.lines),
        timeout=30,
        what="start --wait to print the gate",
    )
    rejected = agentctl(
        stack, "reject", "AgentTask", task_id, "--approver", "ops-lead", "--comment", "not now"
    )
    assert rejected.returncode == 0, rejected.stderr
    assert waiting.wait(timeout=120) == 1, waiting.stderr
    assert waiting.lines[-1] == "FAILED: approval_rejected in WAIT_APPROVAL: rejected by ops-lead: not now"
    assert "PreviouslyAccepted" in waiting.stderr


def test_start_wait_of_a_read_only_task_completes(stack: Stack) -> None:
    task_id = new_task_id("ro")
    done = agentctl(
        stack,
        "start",
        "AgentTask",
        task_id,
        "--user-id",
        "u-1",
        "--task",
        "Summarize my history",
        "--wait",
        "--timeout",
        "120",
        "--interval",
        "0.2",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["invocation_id"].startswith("inv_") and lines[0]["status"] == "Accepted"
    assert lines[0]["idempotency_key"].startswith(f"agentctl-start-AgentTask-{task_id}-")
    assert [line["to_state"] for line in lines if line.get("type") == "transition"][-1] == "COMPLETE"
    assert lines[-1]["type"] == "end" and lines[-1]["state"] == "COMPLETE"


def test_start_wait_with_input_the_agent_refuses_is_exit_4(stack: Stack) -> None:
    done = agentctl(
        stack,
        "start",
        "AgentTask",
        new_task_id("bad"),
        "--user-id",
        "not a valid user",
        "--task",
        "x",
        "--wait",
        "--timeout",
        "60",
    )
    assert done.returncode == 4, done.stderr
    assert "invalid input: user_id" in done.stderr


def test_a_refused_first_start_never_holds_the_task_id(stack: Stack) -> None:
    task_id = new_task_id("fix")
    # Refused here, before anything is sent: nothing is stored under the task or any key.
    bad = agentctl(stack, "start", "AgentTask", task_id, "--user-id", "not a valid user", "--task", "x")
    assert bad.returncode == 4 and "invalid input: user_id" in bad.stderr
    assert stack.sql(f"select id from sys_invocation where target_service_key = '{task_id}'") == []
    # The corrected start starts the task; the same start again starts nothing twice.
    good = [
        "start",
        "AgentTask",
        task_id,
        "--input",
        json.dumps({"user_id": "u-1", "task": "Summarize my history"}),
    ]
    first = agentctl(stack, *good, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.splitlines()[0])["status"] == "Accepted"
    again = agentctl(stack, *good, "--json")
    assert json.loads(again.stdout.splitlines()[0])["status"] == "PreviouslyAccepted"
    assert stack.wait_for_state("AgentTask", task_id, {"COMPLETE"}, timeout=60)["state"] == "COMPLETE"
    # The same task id with other input is the run's refusal, reported as such (not "Accepted").
    other = agentctl(
        stack, "start", "AgentTask", task_id, "--input", json.dumps({"user_id": "u-2", "task": "x"})
    )
    assert other.returncode == 4 and "different input" in other.stderr, (other.stdout, other.stderr)


def test_start_refuses_input_given_two_ways_or_not_json(stack: Stack) -> None:
    task_id = new_task_id("usage")
    both = agentctl(stack, "start", "AgentTask", task_id, "--input", "{}", "--user-id", "u-1")
    assert both.returncode == 2 and "not both" in both.stderr
    assert agentctl(stack, "start", "RefundDesk", task_id, "--input", "[1]").returncode == 2
    assert agentctl(stack, "start", "RefundDesk", task_id).returncode == 2


# --- the event log -----------------------------------------------------------------------------


def test_timeline_lists_the_events_in_order(stack: Stack, approved: Approved) -> None:
    events = timeline_events(stack, approved.task_id)
    assert [e["seq"] for e in events] == list(range(1, len(HAPPY_PATH) + 1))
    assert [e["kind"] for e in events] == ["created"] + ["transition"] * (len(HAPPY_PATH) - 1)
    assert [e["to_state"] for e in events] == HAPPY_PATH
    human = agentctl(stack, "timeline", "AgentTask", approved.task_id)
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert len(lines) == len(HAPPY_PATH)
    assert lines[0].split()[0] == "1" and "created" in lines[0] and "(start) -> INITIAL" in lines[0]
    assert f"task={TASK_TEXT!r}" in lines[0]
    assert "FETCH_CONTEXT -> ANALYZE" in lines[2] and "produced context{" in lines[2]
    assert "WAIT_APPROVAL -> EXECUTE  approved by ops-lead" in lines[5]
    assert lines[-1].split()[0] == str(len(HAPPY_PATH)) and "result{" in lines[-1]


def test_timeline_at_3_is_the_state_reached_at_the_third_event(stack: Stack, approved: Approved) -> None:
    events = timeline_events(stack, approved.task_id)
    final = status_json(stack, approved.task_id)
    done = agentctl(stack, "timeline", "AgentTask", approved.task_id, "--at", "3", "--json")
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert view["state"] == events[2]["to_state"] == "ANALYZE"
    assert view["seq"] == 3 and view["terminal"] is False and view["model"] == "offline"
    assert view["history"] == final["history"][:3]
    assert view["data"] == {"user_id": "u-1", "task": TASK_TEXT, "context": final["data"]["context"]}
    assert view["result"] is None and view["error"] is None and view["approvals"] == []
    # The last event: from the terminal snapshot, the same as the task's own final view.
    last = agentctl(stack, "timeline", "AgentTask", approved.task_id, "--at", str(len(events)), "--json")
    assert {**json.loads(last.stdout), "seq": None} == {**final, "seq": None}
    human = agentctl(stack, "timeline", "AgentTask", approved.task_id, "--at", "3")
    assert human.stdout.startswith("as of event 3 (") and "ANALYZE" in human.stdout


def test_timeline_beyond_the_last_event_or_of_an_unknown_task_is_exit_3(
    stack: Stack, approved: Approved
) -> None:
    beyond = agentctl(stack, "timeline", "AgentTask", approved.task_id, "--at", "99")
    assert beyond.returncode == 3
    assert f"has {len(HAPPY_PATH)} event(s); there is no event 99" in beyond.stderr
    unknown = agentctl(stack, "timeline", "AgentTask", new_task_id("nobody"))
    assert unknown.returncode == 3 and "no events" in unknown.stderr


def test_verify_passes(stack: Stack, approved: Approved) -> None:
    done = agentctl(stack, "verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: every chain verifies" in done.stdout


# --- the Restate journal -----------------------------------------------------------------------


def test_journal_lists_the_run_entries(stack: Stack, approved: Approved) -> None:
    done = agentctl(stack, "journal", "AgentTask", approved.task_id)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    invocation_id = approved.start.stdout.split()[0]
    assert lines[0].startswith(f"invocation {invocation_id}: completed")
    assert "  #0 Command: Input" in lines
    assert "Command: Run [FETCH_CONTEXT tool 0 lookup_user_history]" in done.stdout
    assert "Command: Run [EXECUTE tool 0 create_ticket]" in done.stdout
    indexes = [int(line.split()[0][1:]) for line in lines if line.startswith("  #")]
    assert indexes == list(range(len(indexes)))

    as_json = agentctl(stack, "journal", "AgentTask", approved.task_id, "--json")
    [invocation] = json.loads(as_json.stdout)["invocations"]
    assert invocation["id"] == invocation_id and invocation["status"] == "completed"
    names = [entry.get("name") for entry in invocation["entries"]]
    assert "ANALYZE llm analyze" in names and "PLAN llm plan" in names


def test_journal_describe_runs_the_restate_cli(stack: Stack, approved: Approved) -> None:
    done = agentctl(stack, "journal", "AgentTask", approved.task_id, "--describe")
    assert done.returncode == 0, done.stderr
    assert "Invocation Progress" in done.stdout
    assert f"AgentTask/{approved.task_id}/run" in done.stdout


def test_journal_of_an_unknown_task_is_exit_3(stack: Stack) -> None:
    done = agentctl(stack, "journal", "AgentTask", "it's-nobody")  # a quote in the key, escaped
    assert done.returncode == 3, done.stderr
    assert "no run invocation" in done.stderr


def test_diagram_prints_the_state_diagram(stack: Stack) -> None:
    done = agentctl(stack, "diagram", "ExpenseReport")
    assert done.returncode == 0
    assert done.stdout.startswith("stateDiagram-v2\n")
    assert "    WAIT_APPROVAL --> RECORD : approve" in done.stdout


# --- the lists: list, pending, failed ----------------------------------------------------------


@dataclass
class Listed:
    """Three tasks sharing a prefix (so other tests' tasks on this stack never match): one
    complete, one failed (rejected), one waiting at its gate."""

    prefix: str
    complete: str
    failed: str
    waiting: str
    pending: dict[str, Any]


@pytest.fixture(scope="module")
def listed(stack: Stack) -> Listed:
    prefix = new_task_id("lists")
    complete, failed, waiting = f"{prefix}-a", f"{prefix}-b", f"{prefix}-c"
    # Started side by side (`start` itself is tested above): their order is read from the list.
    for task_id in (complete, failed, waiting):
        stack.send("AgentTask", task_id, "run", {"user_id": "u-1", "task": TASK_TEXT})
    for task_id in (complete, failed, waiting):
        wait_parked(stack, task_id)
    for task_id, verb in ((complete, "approve"), (failed, "reject")):
        decided = agentctl(stack, verb, "AgentTask", task_id, "--approver", "ops-lead")
        assert decided.returncode == 0, decided.stderr
    for task_id in (complete, failed):
        stack.wait_for_state("AgentTask", task_id, {"COMPLETE", "FAILED"})
    pending = stack.status("AgentTask", waiting)["pending_approval"]
    return Listed(prefix, complete, failed, waiting, pending)


def _listed(stack: Stack, *args: str) -> tuple[dict[str, Any], str]:
    done = agentctl(stack, *args, "--json")
    assert done.returncode == 0, done.stderr
    page: dict[str, Any] = json.loads(done.stdout)
    return page, done.stderr


def test_list_shows_each_task_newest_first_with_its_status_and_the_database_read(
    stack: Stack, listed: Listed
) -> None:
    page, stderr = _listed(stack, "list", "--search", listed.prefix)
    assert {(row["task_id"], row["state"], row["status"]) for row in page["tasks"]} == {
        (listed.waiting, "WAIT_APPROVAL", "waiting"),
        (listed.failed, "FAILED", "failed"),
        (listed.complete, "COMPLETE", "complete"),
    }
    created = [row["created_at"] for row in page["tasks"]]
    assert created == sorted(created, reverse=True)
    assert page["total"] == 3 and page["stalls_known"] is True
    events_file = stack.database_url.removeprefix("sqlite:///").replace(".db", ".events.db")
    assert f"reading the event log at sqlite:///{events_file}" in stderr
    text = agentctl(stack, "list", "--search", listed.prefix)
    assert text.returncode == 0
    assert [line.split()[2] for line in text.stdout.splitlines() if not line.startswith(" ")] == [
        row["task_id"] for row in page["tasks"]
    ]
    assert "3 task(s) match; shown 1-3" in text.stderr


def test_list_filters_by_state_and_agent_and_pages(stack: Stack, listed: Listed) -> None:
    waiting, _ = _listed(
        stack, "list", "--search", listed.prefix, "--state", "waiting", "--agent", "AgentTask"
    )
    assert [row["task_id"] for row in waiting["tasks"]] == [listed.waiting]
    complete, _ = _listed(stack, "list", "--search", listed.prefix, "--state", "complete")
    assert [row["task_id"] for row in complete["tasks"]] == [listed.complete]
    running, _ = _listed(stack, "list", "--search", listed.prefix, "--state", "running")
    assert running["tasks"] == [] and running["total"] == 0
    other, _ = _listed(stack, "list", "--search", listed.prefix, "--agent", "ExpenseReport")
    assert other["total"] == 0
    every, _ = _listed(stack, "list", "--search", listed.prefix)
    second, _ = _listed(stack, "list", "--search", listed.prefix, "--limit", "1", "--offset", "1")
    assert [row["task_id"] for row in second["tasks"]] == [every["tasks"][1]["task_id"]]
    assert (second["total"], second["offset"], second["limit"]) == (3, 1, 1)
    text = agentctl(stack, "list", "--search", listed.prefix, "--limit", "1")
    assert "next page: --offset 1" in text.stderr


def test_failed_lists_the_rejected_task_with_its_error(stack: Stack, listed: Listed) -> None:
    page, _ = _listed(stack, "failed", "--search", listed.prefix)
    [row] = page["tasks"]
    assert row["task_id"] == listed.failed and row["status"] == "failed"
    assert row["error"]["code"] == "approval_rejected"
    text = agentctl(stack, "failed", "--search", listed.prefix)
    assert text.returncode == 0
    assert "approval_rejected: rejected by ops-lead" in text.stdout


def test_pending_lists_the_waiting_approval_for_its_approvers_only(stack: Stack, listed: Listed) -> None:
    done = agentctl(stack, "pending", "--json", "--agent", "AgentTask")
    assert done.returncode == 0, done.stderr
    [mine] = [row for row in json.loads(done.stdout) if row["task_id"].startswith(listed.prefix)]
    assert mine["task_id"] == listed.waiting
    assert mine["approval_hash"] == listed.pending["approval_hash"]
    assert "awakeable_id" not in mine
    assert mine["may_decide"] is False  # no approver named: nobody's to decide
    for_lead = json.loads(agentctl(stack, "pending", "--json", "--approver", "ops-lead").stdout)
    assert any(row["task_id"] == listed.waiting and row["may_decide"] for row in for_lead)
    nobody = json.loads(agentctl(stack, "pending", "--json", "--approver", "nobody").stdout)
    assert not any(row["task_id"] == listed.waiting for row in nobody)
    text = agentctl(stack, "pending", "--agent", "AgentTask")
    assert listed.waiting in text.stdout and f"hash {listed.pending['approval_hash']}" in text.stdout


def test_list_refuses_bad_filters_with_exit_2(stack: Stack, listed: Listed) -> None:
    unknown = agentctl(stack, "list", "--agent", "Nope")
    assert unknown.returncode == 2 and "unknown agent 'Nope'; registered agents:" in unknown.stderr
    assert agentctl(stack, "list", "--state", "sleeping").returncode == 2
    too_many = agentctl(stack, "list", "--limit", "0")
    assert too_many.returncode == 2 and "limit" in too_many.stderr


def test_lists_without_restate(stack: Stack, listed: Listed) -> None:
    """The event log still lists tasks when Restate is down; what only Restate knows is exit 5."""
    down = {"RESTATE_ADMIN_URL": "http://127.0.0.1:9"}
    done = agentctl(stack, "list", "--json", "--search", listed.prefix, env=down)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stalls_known"] is False
    assert "not shown as stalled, for want of Restate" in done.stderr
    assert agentctl(stack, "list", "--state", "stalled", env=down).returncode == 5
    assert agentctl(stack, "pending", env=down).returncode == 5


def test_a_closed_pipe_ends_quietly(stack: Stack, approved: Approved) -> None:
    """`agentctl timeline ... | head -0`: the reader is gone before the first line; no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [*CLI, "timeline", "AgentTask", approved.task_id],
            env=cli_env(stack),
            cwd=ROOT,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr
