"""agentctl without servers: state reconstruction, durations, SQL literals, help and usage errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.audit.event_log import GENESIS, Event, EventDraft, TaskSnapshot, new_event, store_for
from app.cli import agentctl
from app.cli.audit import apply_event, state_at, summarize_event
from app.cli.common import EXIT_CODES, parse_duration, sql_literal

TERMINAL = frozenset({"COMPLETE", "FAILED"})
COMMANDS = [
    "start",
    "status",
    "watch",
    "approve",
    "reject",
    "resume",
    "cancel",
    "timeline",
    "journal",
    "verify",
    "archive",
    "deployments",
    "diagram",
]


def chain(steps: list[tuple[str, str | None, str, dict[str, Any]]], task_id: str = "t-1") -> list[Event]:
    """Hand-built, properly chained events: (kind, from, to, payload) per event."""
    events: list[Event] = []
    previous = GENESIS
    for index, (kind, source, target, payload) in enumerate(steps, start=1):
        item = new_event(
            EventDraft(
                agent="AgentTask",
                task_id=task_id,
                seq=index,
                kind=kind,
                from_state=source,
                to_state=target,
                at=1_700_000_000.0 + index,
                payload=payload,
                prev_hash=previous,
            )
        )
        events.append(item)
        previous = item.hash
    return events


def transition(note: str | None = None, **produced: Any) -> dict[str, Any]:
    return {"note": note, "produced": produced, "result": None, "error": None}


APPROVAL = {
    "state": "WAIT_APPROVAL",
    "outcome": "approve",
    "decision": "approve",
    "approver": "ops-lead",
    "comment": None,
    "decided_at": 1_700_000_005.5,
    "approval_hash": "a" * 64,
    "approval_ticket_id": "APR-1",
    "reminded": False,
}

EVENTS = chain(
    [
        (
            "created",
            None,
            "INITIAL",
            {"input": {"user_id": "u-1", "task": "open a ticket"}, "model": "offline"},
        ),
        ("transition", "INITIAL", "FETCH_CONTEXT", transition()),
        ("transition", "FETCH_CONTEXT", "ANALYZE", transition("3 history events", context={"events": []})),
        ("transition", "ANALYZE", "PLAN", transition("open_ticket", analysis={"intent": "open_ticket"})),
        ("transition", "PLAN", "WAIT_APPROVAL", transition("approval needed", plan={"steps": [1]})),
        (
            "transition",
            "WAIT_APPROVAL",
            "EXECUTE",
            {**transition("approved by ops-lead"), "approval": APPROVAL},
        ),
        ("transition", "EXECUTE", "VERIFY", transition(executed=[{"tool": "create_ticket"}])),
        (
            "transition",
            "VERIFY",
            "COMPLETE",
            {**transition(verification={"success": True}), "result": {"tool_calls": 1}},
        ),
    ]
)


def snapshot_of(view: dict[str, Any], seq: int) -> TaskSnapshot:
    return TaskSnapshot(
        agent="AgentTask", task_id="t-1", seq=seq, state=view["state"], view=json.dumps(view), event_hash="x"
    )


# --- state_at ----------------------------------------------------------------------------------


def test_state_at_without_snapshot_replays_the_events_up_to_n() -> None:
    view = state_at(EVENTS, None, 3, TERMINAL)
    assert view["state"] == "ANALYZE" and view["terminal"] is False
    assert view["seq"] == 3
    assert view["model"] == "offline"
    assert view["data"] == {"user_id": "u-1", "task": "open a ticket", "context": {"events": []}}
    assert [(h["from_state"], h["to_state"]) for h in view["history"]] == [
        (None, "INITIAL"),
        ("INITIAL", "FETCH_CONTEXT"),
        ("FETCH_CONTEXT", "ANALYZE"),
    ]
    assert view["history"][0]["note"] == "created"
    assert view["history"][2]["note"] == "3 history events"
    assert view["history"][0]["at"].startswith("2023-11-14T22:13:21")
    assert view["result"] is None and view["error"] is None and view["approvals"] == []


def test_state_at_the_last_event_has_the_outcome_and_the_approval() -> None:
    view = state_at(EVENTS, None, 8, TERMINAL)
    assert view["state"] == "COMPLETE" and view["terminal"] is True
    assert view["result"] == {"tool_calls": 1}
    assert view["approvals"] == [APPROVAL]
    assert set(view["data"]) == {
        "user_id",
        "task",
        "context",
        "analysis",
        "plan",
        "executed",
        "verification",
    }
    assert len(view["history"]) == 8


def test_state_at_starts_from_the_snapshot_and_applies_only_later_events() -> None:
    # A snapshot whose content differs from what replaying would give proves it was used.
    base = state_at(EVENTS, None, 4, TERMINAL)
    marked = {**base, "data": {**base["data"], "from_snapshot": True}, "model": "claude"}
    view = state_at(EVENTS, snapshot_of(marked, 4), 6, TERMINAL)
    assert view["data"]["from_snapshot"] is True and view["model"] == "claude"
    assert view["state"] == "EXECUTE"
    assert view["data"]["plan"] == {"steps": [1]}
    assert [h["to_state"] for h in view["history"]][-3:] == ["PLAN", "WAIT_APPROVAL", "EXECUTE"]
    assert len(view["history"]) == 6
    assert view["approvals"] == [APPROVAL]


def test_state_at_the_snapshot_seq_is_the_snapshot() -> None:
    base = state_at(EVENTS, None, 8, TERMINAL)
    view = state_at(EVENTS, snapshot_of(base, 8), 8, TERMINAL)
    assert view == {**base, "seq": 8}


def test_state_at_ignores_a_snapshot_after_n() -> None:
    later = snapshot_of({**state_at(EVENTS, None, 8, TERMINAL), "model": "snap"}, 8)
    view = state_at(EVENTS, later, 2, TERMINAL)
    assert view["state"] == "FETCH_CONTEXT" and view["model"] == "offline"


def test_state_at_with_only_a_snapshot_and_no_events() -> None:
    base = state_at(EVENTS, None, 5, TERMINAL)
    assert state_at([], snapshot_of(base, 5), 5, TERMINAL)["state"] == "WAIT_APPROVAL"


def test_state_at_a_failure_records_the_error() -> None:
    error = {"state": "WAIT_APPROVAL", "code": "approval_rejected", "message": "rejected by ops-lead"}
    failed = chain(
        [
            ("created", None, "INITIAL", {"input": {"user_id": "u", "task": "t"}, "model": "offline"}),
            ("transition", "INITIAL", "FAILED", {**transition("rejected by ops-lead"), "error": error}),
        ]
    )
    view = state_at(failed, None, 2, TERMINAL)
    assert view["state"] == "FAILED" and view["terminal"] is True and view["error"] == error


def test_state_at_clears_a_snapshot_pending_approval_when_the_gate_is_left() -> None:
    base = state_at(EVENTS, None, 5, TERMINAL)
    pending = {"state": "WAIT_APPROVAL", "summary": "run create_ticket", "approval_hash": "a" * 64}
    view = state_at(EVENTS, snapshot_of({**base, "pending_approval": pending}, 5), 5, TERMINAL)
    assert view["pending_approval"] == pending
    assert (
        state_at(EVENTS, snapshot_of({**base, "pending_approval": pending}, 5), 6)["pending_approval"] is None
    )


@pytest.mark.parametrize("n", [0, -1, 9, 100])
def test_state_at_an_unknown_event_is_a_lookup_error(n: int) -> None:
    with pytest.raises(LookupError):
        state_at(EVENTS, None, n, TERMINAL)


def test_state_at_does_not_change_its_inputs() -> None:
    before = [e.model_dump() for e in EVENTS]
    view = state_at(EVENTS, None, 8, TERMINAL)
    view["data"]["user_id"] = "changed"
    assert [e.model_dump() for e in EVENTS] == before
    assert apply_event({"data": {"a": 1}}, EVENTS[2], TERMINAL)["data"]["a"] == 1


def test_summaries_name_what_an_event_produced() -> None:
    assert "input task='open a ticket', user_id='u-1'" in summarize_event(EVENTS[0])
    assert "model offline" in summarize_event(EVENTS[0])
    assert summarize_event(EVENTS[2]) == "produced context{events}"
    assert summarize_event(EVENTS[6]) == "produced executed[1]"
    assert "approval approve by ops-lead" in summarize_event(EVENTS[5])
    assert "result{tool_calls}" in summarize_event(EVENTS[7])
    assert summarize_event(EVENTS[1]) == ""


# --- durations and SQL -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0.0),
        ("45s", 45.0),
        ("15m", 900.0),
        ("12h", 43_200.0),
        ("30d", 2_592_000.0),
        ("2w", 1_209_600.0),
        ("1h30m", 5_400.0),
        ("1.5h", 5_400.0),
        (" 7D ", 604_800.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "3x", "-1d", "1d 2h", "1h30", "ten days", "1e3s"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("t-1", "'t-1'"),
        ("it's", "'it''s'"),
        ("''", "''''''"),
        ("x' or '1'='1", "'x'' or ''1''=''1'"),
        ("", "''"),
    ],
)
def test_sql_literal_doubles_single_quotes(value: str, literal: str) -> None:
    assert sql_literal(value) == literal


# --- the command line --------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli.agentctl", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_top_level_help_lists_every_command_and_every_exit_code() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    for name in COMMANDS:
        assert name in done.stdout
    for code, meaning in EXIT_CODES.items():
        assert f"{code}  {meaning}" in done.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_its_exit_codes(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        agentctl.main([name, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "exit codes:" in text
    assert "0  ok" in text
    assert f"usage: agentctl {name}" in text


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["status"],
        ["approve", "AgentTask", "t-1"],  # --approver is required
        ["watch", "AgentTask", "t-1", "--timeout", "soon"],
        ["watch", "AgentTask", "t-1", "--interval", "0"],
        ["timeline", "AgentTask", "t-1", "--at", "0"],
        ["archive", "--older-than", "3x", "--dir", "d"],
        ["archive", "--dir", "d"],
        ["start", "AgentTask", "t-1", "--user-id", "u-1"],  # no --task
        ["start", "ExpenseReport", "r-1", "--user-id", "u-1", "--task", "x"],  # no --expense-id
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = agentctl.main(argv, out=io.StringIO(), err=sys.stderr)
    except SystemExit as exited:
        code = exited.code  # type: ignore[assignment]
    assert code == 2
    error = capsys.readouterr().err
    assert error.strip() and "Traceback" not in error


def test_usage_error_through_the_module_entry_point() -> None:
    done = run_cli("status", "AgentTask")
    assert done.returncode == 2 and "usage: agentctl status" in done.stderr


def test_global_options_may_follow_the_command() -> None:
    parser = agentctl.build_parser()
    after = parser.parse_args(["status", "AgentTask", "t-1", "--json", "--ingress-url", "http://x:1"])
    assert after.json is True and after.ingress_url == "http://x:1"
    before = parser.parse_args(["--json", "--admin-url", "http://y:2", "status", "AgentTask", "t-1"])
    assert before.json is True and before.admin_url == "http://y:2"
    plain = parser.parse_args(["status", "AgentTask", "t-1"])
    assert plain.json is False


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTATE_INGRESS_URL", "http://ingress:1")
    monkeypatch.setenv("RESTATE_ADMIN_URL", "http://admin:2")
    monkeypatch.delenv("APPROVALS_URL", raising=False)
    monkeypatch.setenv("APPROVALS_PORT", "7777")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///elsewhere.db")
    args = agentctl.build_parser().parse_args(["verify"])
    assert args.ingress_url == "http://ingress:1" and args.admin_url == "http://admin:2"
    assert args.approvals_url == "http://127.0.0.1:7777"
    assert args.database_url == "sqlite:///elsewhere.db"
    monkeypatch.setenv("APPROVALS_URL", "http://approvals:3")
    assert agentctl.build_parser().parse_args(["verify"]).approvals_url == "http://approvals:3"


def test_unreachable_server_is_exit_5_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = agentctl.main(["status", "AgentTask", "t-1", "--ingress-url", "http://127.0.0.1:9"])
    assert code == 5
    error = capsys.readouterr().err.strip()
    assert error.startswith("agentctl status: cannot reach") and "\n" not in error


def test_unknown_diagram_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert agentctl.main(["diagram", "Nope"]) == 3
    assert "unknown machine 'Nope'" in capsys.readouterr().err


def test_a_database_that_is_not_there_is_refused_never_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run from the wrong directory (or without DATABASE_URL), agentctl used to create an empty
    SQLite file and report "ok" on 0 tasks: now it names the file it looked for and stops."""
    url = f"sqlite:///{tmp_path / 'nowhere' / 'agents.db'}"
    for command in (["verify"], ["timeline", "AgentTask", "t-1"], ["list"], ["approvers", "list"]):
        assert agentctl.main([*command, "--database-url", url]) == 2, command
        error = capsys.readouterr().err
        assert f"no event log at {tmp_path / 'nowhere' / 'agents.events.db'}" in error or (
            f"no agent database at {tmp_path / 'nowhere' / 'agents.db'}" in error
        ), error
        assert "from --database-url" in error
    assert not (tmp_path / "nowhere").exists()


def test_timeline_of_an_unknown_task_in_an_empty_log_is_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    store_for(url)  # the log exists, as the service leaves it when it starts
    assert agentctl.main(["timeline", "AgentTask", "nobody", "--database-url", url]) == 3
    assert "no events for AgentTask task 'nobody'" in capsys.readouterr().err
    out = io.StringIO()
    assert agentctl.main(["verify", "--json", "--database-url", url], out=out) == 0
    assert json.loads(out.getvalue()) == {"tasks": 0, "events": 0, "broken": [], "ok": True}
    assert f"reading the event log at sqlite:///{tmp_path / 'empty.events.db'}" in capsys.readouterr().err


def test_the_database_comes_from_dot_env_as_the_service_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'service.db'}"
    store_for(url)
    (tmp_path / ".env").write_text(f"DATABASE_URL={url}\n")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert agentctl.main(["verify"]) == 0
    captured = capsys.readouterr()
    assert f"reading the event log at sqlite:///{tmp_path / 'service.events.db'}" in captured.err
    assert "checked 0 task(s)" in captured.out
    (tmp_path / ".env").unlink()
    assert agentctl.main(["verify"]) == 2
    assert "DATABASE_URL is not set, here or in ./.env" in capsys.readouterr().err
