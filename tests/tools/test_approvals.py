"""Approval tickets: request, remind, close, their outbox rows and the inspection endpoints,
on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from common.db import make_engine
from tests.tools.calls import call_tool, count_rows, derived, store_of
from tools.service import approval_tickets as approvals
from tools.service.approval_tickets import ApprovalTicket, RequestApprovalArgs, request_approval
from tools.service.db import Base
from tools.service.definition import ToolCall
from tools.service.idempotency import Claimed, Completed, IdempotencyKey, StoredResponse, request_hash
from tools.service.outbox import OutboxNotification
from tools.service.schema import create_schema

HASH = "5e" * 32
REQUEST = {
    "agent": "AgentTask",
    "task_id": "t-42",
    "approval_hash": HASH,
    "summary": "Refund 40 EUR to u-1 for order #1001",
    "approvers": ["ops-lead", "finance@example.com"],
    "deadline": "2030-01-01T14:00:00+02:00",  # 12:00 UTC
}
KEY = "AgentTask:t-42:WAIT_APPROVAL.1:0"


def _open(client: TestClient, key: str = KEY, **changes: Any) -> str:
    response = call_tool(client, "request_approval", {**REQUEST, **changes}, key)
    assert response.status_code == 200, response.text
    ticket_id: str = response.json()["approval_ticket_id"]
    return ticket_id


def _close(client: TestClient, ticket_id: str, outcome: str, key: str, **extra: Any) -> Any:
    body = {"approval_ticket_id": ticket_id, "outcome": outcome, **extra}
    return call_tool(client, "close_approval", body, key)


def _remind(client: TestClient, ticket_id: str, key: str, recipients: list[str] | None = None) -> Any:
    body = {
        "approval_ticket_id": ticket_id,
        "recipients": recipients or ["ops-lead"],
        "message": "Still waiting for you.",
    }
    return call_tool(client, "remind_approval", body, key)


def _ticket(client: TestClient, ticket_id: str) -> dict[str, Any]:
    response = client.get(f"/approval-tickets/{ticket_id}")
    assert response.status_code == 200, response.text
    ticket: dict[str, Any] = response.json()
    return ticket


def _outbox(client: TestClient, **filters: str) -> list[dict[str, Any]]:
    response = client.get("/notifications", params=filters)
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["notifications"]
    return rows


def _error(response: Any, status_code: int, code: str) -> dict[str, Any]:
    assert response.status_code == status_code, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return error


# --- request_approval -----------------------------------------------------------------------


def test_request_approval_opens_a_ticket_and_notifies_each_approver(client):
    response = call_tool(client, "request_approval", REQUEST, KEY)

    ticket_id = derived("APR", KEY)
    assert response.status_code == 200
    assert response.json() == {
        "approval_ticket_id": ticket_id,
        "status": "open",
        "notified": ["ops-lead", "finance@example.com"],
    }
    ticket = _ticket(client, ticket_id)
    assert {key: value for key, value in ticket.items() if key != "created_at"} == {
        "approval_ticket_id": ticket_id,
        "idempotency_key": KEY,
        "agent": "AgentTask",
        "task_id": "t-42",
        "approval_hash": HASH,
        "summary": REQUEST["summary"],
        "approvers": ["ops-lead", "finance@example.com"],
        "deadline": "2030-01-01T12:00:00Z",
        "status": "open",
        "reminders": 0,
        "decided_by": None,
        "comment": None,
        "closed_at": None,
        "subject": None,
    }

    rows = sorted(_outbox(client, reference=ticket_id), key=lambda row: row["notification_id"])
    assert [row["notification_id"] for row in rows] == [f"{derived('NTF', KEY)}-{i}" for i in (0, 1)]
    assert [row["recipient"] for row in rows] == ["ops-lead", "finance@example.com"]
    for row in rows:
        assert (row["kind"], row["reference"], row["status"]) == ("approval_request", ticket_id, "queued")
        assert row["idempotency_key"] == KEY
        assert row["subject"] == "Approval needed: AgentTask t-42"
        assert REQUEST["summary"] in row["body"]
        assert "2030-01-01T12:00:00+00:00" in row["body"]
        assert ticket_id in row["body"] and HASH in row["body"]


def test_a_ticket_names_its_subject_and_its_messages_say_what_is_approved(client):
    ticket_id = _open(client, subject="expense:EXP-0123456789ab")

    assert _ticket(client, ticket_id)["subject"] == "expense:EXP-0123456789ab"
    for row in _outbox(client, reference=ticket_id):
        assert "Approves: expense:EXP-0123456789ab" in row["body"]
    # Asking the gate again with the same subject answers with its open ticket.
    again = call_tool(client, "request_approval", {**REQUEST, "subject": "expense:EXP-0123456789ab"}, "k-2")
    assert again.json() == {"approval_ticket_id": ticket_id, "status": "open", "notified": []}


@pytest.mark.parametrize("subject", [None, "expense:EXP-999999999999"], ids=["none", "another"])
def test_asking_an_open_gate_with_another_subject_is_409_and_changes_nothing(client, subject):
    ticket_id = _open(client, subject="expense:EXP-0123456789ab")
    body: dict[str, Any] = {**REQUEST}
    if subject is not None:
        body["subject"] = subject

    error = _error(
        call_tool(client, "request_approval", body, "k-other-subject"), 409, "approval_subject_mismatch"
    )

    assert error["details"] == {
        "approval_ticket_id": ticket_id,
        "subject": "expense:EXP-0123456789ab",
        "requested_subject": subject,
    }
    assert _ticket(client, ticket_id)["subject"] == "expense:EXP-0123456789ab"
    assert count_rows(client, ApprovalTicket) == 1
    assert count_rows(client, OutboxNotification) == 2


def test_replaying_the_same_key_replays_and_writes_nothing(client):
    first = call_tool(client, "request_approval", REQUEST, KEY)

    retry = call_tool(client, "request_approval", REQUEST, KEY)

    assert retry.status_code == 200
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content
    assert count_rows(client, ApprovalTicket) == 1
    assert count_rows(client, OutboxNotification) == 2


def test_a_second_request_for_the_same_gate_returns_the_open_ticket_and_notifies_nobody(client):
    ticket_id = _open(client)

    again = call_tool(
        client, "request_approval", {**REQUEST, "approvers": ["someone-else"]}, "AgentTask:t-42:WAIT.2:0"
    )

    assert again.status_code == 200
    assert "idempotent-replayed" not in again.headers
    assert again.json() == {"approval_ticket_id": ticket_id, "status": "open", "notified": []}
    assert count_rows(client, ApprovalTicket) == 1
    assert count_rows(client, OutboxNotification) == 2
    assert _ticket(client, ticket_id)["approvers"] == REQUEST["approvers"]
    # That answer is now the second key's, replayed as such.
    replay = call_tool(
        client, "request_approval", {**REQUEST, "approvers": ["someone-else"]}, "AgentTask:t-42:WAIT.2:0"
    )
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == again.content


def test_another_hash_task_or_agent_is_another_gate(client):
    first = _open(client)
    other_hash = _open(client, "k-hash", approval_hash="0" * 64)
    other_task = _open(client, "k-task", task_id="t-43")
    other_agent = _open(client, "k-agent", agent="ExpenseReport")

    assert len({first, other_hash, other_task, other_agent}) == 4
    assert count_rows(client, ApprovalTicket, status="open") == 4


def test_once_the_gate_is_closed_a_new_request_opens_a_new_ticket(client):
    first = _open(client)
    assert _close(client, first, "expired", "k-close").status_code == 200

    second = _open(client, "AgentTask:t-42:WAIT_APPROVAL.2:0")

    assert second != first
    assert second == derived("APR", "AgentTask:t-42:WAIT_APPROVAL.2:0")
    assert _ticket(client, first)["status"] == "expired"
    assert _ticket(client, second)["status"] == "open"
    assert len(_outbox(client, reference=second, kind="approval_request")) == 2


def test_the_database_refuses_a_second_open_ticket_for_a_gate(client, clock):
    _open(client)

    def ticket(ticket_id: str, status: str) -> ApprovalTicket:
        return ApprovalTicket(
            ticket_id=ticket_id,
            idempotency_key=ticket_id,
            agent=REQUEST["agent"],
            task_id=REQUEST["task_id"],
            approval_hash=HASH,
            summary="s",
            approvers=["a"],
            deadline=RequestApprovalArgs.model_validate(REQUEST).deadline,
            status=status,
            reminders=0,
            created_at=clock(),
        )

    engine = client.app.state.engine
    with pytest.raises(IntegrityError), Session(engine) as session, session.begin():
        session.add(ticket("APR-second-open", "open"))
    # Closed tickets of the same gate are history, not a second gate: any number is fine.
    with Session(engine) as session, session.begin():
        session.add_all([ticket("APR-closed-1", "approved"), ticket("APR-closed-2", "expired")])
    assert count_rows(client, ApprovalTicket) == 3


def test_a_request_that_loses_the_race_to_open_the_gate_answers_with_the_winners_ticket(client, monkeypatch):
    winner = _open(client)
    lookups: list[str] = []
    real_lookup = approvals._open_ticket

    def lookup_that_misses_first(session: Session, args: RequestApprovalArgs) -> ApprovalTicket | None:
        # As if the winner committed between our lookup and our insert.
        lookups.append(args.task_id)
        return None if len(lookups) == 1 else real_lookup(session, args)

    monkeypatch.setattr(approvals, "_open_ticket", lookup_that_misses_first)

    loser = call_tool(client, "request_approval", REQUEST, "k-loser")

    assert loser.status_code == 200
    assert loser.json() == {"approval_ticket_id": winner, "status": "open", "notified": []}
    assert len(lookups) == 2
    assert count_rows(client, ApprovalTicket) == 1
    assert count_rows(client, OutboxNotification) == 2


def test_concurrent_requests_for_one_gate_under_different_keys_open_one_ticket(client, clock):
    racers = 6
    store = store_of(client)
    args = RequestApprovalArgs.model_validate(REQUEST)
    keys = [f"k-race-{index}" for index in range(racers)]
    claims = [store.claim(key, "request_approval", request_hash("request_approval", REQUEST)) for key in keys]
    assert all(isinstance(claim, Claimed) for claim in claims)
    barrier = threading.Barrier(racers)

    def run(index: int) -> Any:
        claim = claims[index]
        assert isinstance(claim, Claimed)

        def effect(session: Session) -> StoredResponse:
            result = request_approval(
                ToolCall(session=session, idempotency_key=keys[index], now=clock()), args
            )
            return StoredResponse(200, result.model_dump_json())

        barrier.wait(timeout=10)
        return store.execute(keys[index], claim.claim_token, effect)

    with ThreadPoolExecutor(racers) as pool:
        outcomes = list(pool.map(run, range(racers)))

    assert all(isinstance(outcome, Completed) for outcome in outcomes)
    results = [approvals.ApprovalRequested.model_validate_json(outcome.response.body) for outcome in outcomes]
    assert len({result.approval_ticket_id for result in results}) == 1
    assert sorted(len(result.notified) for result in results) == [0] * (racers - 1) + [2]
    assert count_rows(client, ApprovalTicket) == 1
    assert count_rows(client, OutboxNotification) == 2


# --- remind_approval ------------------------------------------------------------------------


def test_remind_writes_a_row_per_recipient_and_counts_the_reminders(client):
    ticket_id = _open(client)

    first = _remind(client, ticket_id, "k-remind-1", ["ops-lead", "escalation@example.com"])
    second = _remind(client, ticket_id, "k-remind-2")

    assert first.status_code == 200
    assert first.json() == {
        "approval_ticket_id": ticket_id,
        "reminders": 1,
        "notified": ["ops-lead", "escalation@example.com"],
    }
    assert second.json() == {"approval_ticket_id": ticket_id, "reminders": 2, "notified": ["ops-lead"]}
    assert _ticket(client, ticket_id)["reminders"] == 2
    rows = _outbox(client, kind="approval_reminder", reference=ticket_id)
    assert sorted((row["idempotency_key"], row["recipient"]) for row in rows) == [
        ("k-remind-1", "escalation@example.com"),
        ("k-remind-1", "ops-lead"),
        ("k-remind-2", "ops-lead"),
    ]
    for row in rows:
        assert row["subject"] == "Reminder: approval needed: AgentTask t-42"
        assert row["body"].startswith("Still waiting for you.")
        assert "2030-01-01T12:00:00+00:00" in row["body"]

    replay = _remind(client, ticket_id, "k-remind-1", ["ops-lead", "escalation@example.com"])

    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == first.content
    assert _ticket(client, ticket_id)["reminders"] == 2
    assert len(_outbox(client, kind="approval_reminder")) == 3


def test_remind_on_a_closed_ticket_is_409_stored_and_writes_nothing(client):
    ticket_id = _open(client)
    _close(client, ticket_id, "approved", "k-close", decided_by="ops-lead")

    refused = _remind(client, ticket_id, "k-late-reminder")

    error = _error(refused, 409, "approval_ticket_closed")
    assert error["details"] == {"approval_ticket_id": ticket_id, "status": "approved"}
    assert "retry-after" not in refused.headers  # a definite answer: the agent must not retry it
    assert _outbox(client, kind="approval_reminder") == []
    assert _ticket(client, ticket_id)["reminders"] == 0
    record = client.get("/idempotency/k-late-reminder").json()
    assert (record["status"], record["response_status"]) == ("done", 409)
    replay = _remind(client, ticket_id, "k-late-reminder")
    assert replay.status_code == 409
    assert replay.headers["idempotent-replayed"] == "true"


# --- close_approval -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "decided_by", "comment", "phrase"),
    [
        ("approved", "ops-lead", "Fine by me.", "was approved by ops-lead"),
        ("rejected", "finance@example.com", None, "was rejected by finance@example.com"),
        ("expired", None, None, "expired at"),
    ],
)
def test_close_records_the_outcome_and_tells_each_approver(
    client, clock, outcome, decided_by, comment, phrase
):
    ticket_id = _open(client)
    clock.advance(60)

    closed = _close(client, ticket_id, outcome, "k-close", decided_by=decided_by, comment=comment)

    assert closed.status_code == 200
    assert closed.json() == {"approval_ticket_id": ticket_id, "status": outcome}
    ticket = _ticket(client, ticket_id)
    assert (ticket["status"], ticket["decided_by"], ticket["comment"]) == (outcome, decided_by, comment)
    assert ticket["closed_at"] is not None and ticket["closed_at"] > ticket["created_at"]
    rows = _outbox(client, kind="approval_closed")
    assert sorted(row["recipient"] for row in rows) == sorted(REQUEST["approvers"])
    for row in rows:
        assert (row["reference"], row["idempotency_key"]) == (ticket_id, "k-close")
        assert row["subject"] == f"Approval {outcome}: AgentTask t-42"
        assert phrase in row["body"]
        assert "Nothing is waiting for your decision any more." in row["body"]
        assert (f"Comment: {comment}" in row["body"]) == (comment is not None)
    assert count_rows(client, ApprovalTicket, status="open") == 0


def test_closing_again_the_same_way_is_idempotent_and_another_way_is_409(client):
    ticket_id = _open(client)
    _close(client, ticket_id, "rejected", "k-close-1", decided_by="ops-lead", comment="No.")
    before = _ticket(client, ticket_id)

    same = _close(client, ticket_id, "rejected", "k-close-2", decided_by="finance@example.com")
    other = _close(client, ticket_id, "approved", "k-close-3", decided_by="finance@example.com")

    assert same.status_code == 200
    assert "idempotent-replayed" not in same.headers
    assert same.json() == {"approval_ticket_id": ticket_id, "status": "rejected"}
    error = _error(other, 409, "approval_ticket_closed")
    assert error["details"] == {"approval_ticket_id": ticket_id, "status": "rejected"}
    assert _ticket(client, ticket_id) == before  # the first close's decider and comment stand
    assert len(_outbox(client, kind="approval_closed")) == 2
    assert client.get("/idempotency/k-close-3").json()["response_status"] == 409


def test_replaying_a_close_replays(client):
    ticket_id = _open(client)
    first = _close(client, ticket_id, "expired", "k-close")

    retry = _close(client, ticket_id, "expired", "k-close")

    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content
    assert len(_outbox(client, kind="approval_closed")) == 2


@pytest.mark.parametrize("tool", ["remind_approval", "close_approval"])
def test_an_unknown_ticket_is_404_and_stored(client, tool):
    body: dict[str, Any] = {"approval_ticket_id": "APR-000000000000"}
    if tool == "remind_approval":
        body |= {"recipients": ["ops-lead"], "message": "m"}
    else:
        body |= {"outcome": "approved"}

    response = call_tool(client, tool, body, "k-unknown-ticket")

    error = _error(response, 404, "unknown_approval_ticket")
    assert error["details"] == {"approval_ticket_id": "APR-000000000000"}
    assert count_rows(client, OutboxNotification) == 0
    assert call_tool(client, tool, body, "k-unknown-ticket").headers["idempotent-replayed"] == "true"


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "changes", "loc"),
    [
        ("request_approval", {"deadline": "2030-01-01T12:00:00"}, ["deadline"]),
        ("request_approval", {"deadline": "0001-01-01T00:00:00+01:00"}, ["deadline"]),
        ("request_approval", {"deadline": "tomorrow"}, ["deadline"]),
        ("request_approval", {"approvers": []}, ["approvers"]),
        ("request_approval", {"approvers": [f"a{i}" for i in range(11)]}, ["approvers"]),
        ("request_approval", {"approvers": ["ops-lead", "ops-lead"]}, ["approvers"]),
        ("request_approval", {"approvers": [""]}, ["approvers", 0]),
        ("request_approval", {"approvers": ["x" * 129]}, ["approvers", 0]),
        ("request_approval", {"approval_hash": "not-a-hash"}, ["approval_hash"]),
        ("request_approval", {"approval_hash": "5e" * 31}, ["approval_hash"]),
        ("request_approval", {"approval_hash": "5E" * 32}, ["approval_hash"]),
        ("request_approval", {"summary": ""}, ["summary"]),
        ("request_approval", {"summary": "s" * 2001}, ["summary"]),
        ("request_approval", {"agent": ""}, ["agent"]),
        ("request_approval", {"task_id": "t" * 257}, ["task_id"]),
        ("request_approval", {"deciders": ["x"]}, ["deciders"]),
        ("request_approval", {"subject": ""}, ["subject"]),
        ("request_approval", {"subject": "EXP-0123456789ab"}, ["subject"]),
        ("request_approval", {"subject": "Expense:EXP-0123456789ab"}, ["subject"]),
        ("request_approval", {"subject": "expense:EXP 1"}, ["subject"]),
        ("request_approval", {"subject": "expense:" + "x" * 121}, ["subject"]),
        ("request_approval", {"subject": 42}, ["subject"]),
        ("remind_approval", {"recipients": []}, ["recipients"]),
        ("remind_approval", {"recipients": ["a", "a"]}, ["recipients"]),
        ("remind_approval", {"message": ""}, ["message"]),
        ("close_approval", {"outcome": "approve"}, ["outcome"]),
        ("close_approval", {"comment": "c" * 2001}, ["comment"]),
        ("close_approval", {"approval_ticket_id": ""}, ["approval_ticket_id"]),
    ],
)
def test_invalid_arguments_are_422_and_store_nothing(client, tool, changes, loc):
    valid: dict[str, dict[str, Any]] = {
        "request_approval": REQUEST,
        "remind_approval": {"approval_ticket_id": "APR-1", "recipients": ["ops-lead"], "message": "m"},
        "close_approval": {"approval_ticket_id": "APR-1", "outcome": "approved"},
    }

    response = call_tool(client, tool, {**valid[tool], **changes}, "k-invalid")

    error = _error(response, 422, "validation_error")
    assert [item["loc"] for item in error["details"]] == [loc]
    assert count_rows(client, IdempotencyKey) == 0
    assert count_rows(client, ApprovalTicket) == 0
    assert count_rows(client, OutboxNotification) == 0


def test_optional_close_fields_may_be_left_out_or_null(client):
    ticket_id = _open(client)

    response = call_tool(
        client,
        "close_approval",
        {"approval_ticket_id": ticket_id, "outcome": "expired", "decided_by": None, "comment": None},
        "k-close",
    )

    assert response.status_code == 200
    assert _ticket(client, ticket_id)["decided_by"] is None


def test_the_catalog_describes_the_approval_tools(client):
    tools = {tool["name"]: tool for tool in client.get("/tools").json()["tools"]}

    request_schema = tools["request_approval"]["args_schema"]
    assert request_schema["additionalProperties"] is False
    assert set(request_schema["required"]) == {
        "agent",
        "task_id",
        "approval_hash",
        "summary",
        "approvers",
        "deadline",
    }
    assert request_schema["properties"]["deadline"]["format"] == "date-time"
    assert "subject" in request_schema["properties"]
    assert request_schema["properties"]["approvers"]["maxItems"] == 10
    assert set(tools["close_approval"]["args_schema"]["required"]) == {"approval_ticket_id", "outcome"}
    assert all(
        tools[name]["side_effects"] for name in ("request_approval", "remind_approval", "close_approval")
    )


# --- inspection -----------------------------------------------------------------------------


def test_approval_tickets_are_listed_newest_first_and_filtered(client, clock):
    oldest = _open(client, "k-1", task_id="t-1")
    clock.advance(1)
    middle = _open(client, "k-2", task_id="t-2")
    clock.advance(1)
    newest = _open(client, "k-3", task_id="t-2", approval_hash="0" * 64, agent="ExpenseReport")
    _close(client, middle, "approved", "k-close", decided_by="ops-lead")

    def ids(**filters: str) -> list[str]:
        response = client.get("/approval-tickets", params=filters)
        assert response.status_code == 200, response.text
        return [ticket["approval_ticket_id"] for ticket in response.json()["approval_tickets"]]

    assert ids() == [newest, middle, oldest]
    assert ids(task_id="t-2") == [newest, middle]
    assert ids(status="open") == [newest, oldest]
    assert ids(status="approved") == [middle]
    assert ids(task_id="t-2", status="open") == [newest]
    assert ids(agent="ExpenseReport") == [newest]
    assert ids(status="expired") == []
    assert ids(task_id="t-404") == []


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("status=closed", ["query", "status"]),
        ("status=", ["query", "status"]),
        ("task_id=", ["query", "task_id"]),
        ("state=open", ["query", "state"]),
        ("status=open&status=expired", ["query", "status"]),
    ],
)
def test_bad_approval_ticket_filters_are_422(client, query, loc):
    error = _error(client.get(f"/approval-tickets?{query}"), 422, "validation_error")
    assert [item["loc"] for item in error["details"]] == [loc]


def test_an_unknown_approval_ticket_is_404(client):
    error = _error(client.get("/approval-tickets/APR-nothing"), 404, "unknown_approval_ticket")
    assert error["details"] == {"approval_ticket_id": "APR-nothing"}
    assert client.get("/approval-tickets").json() == {"approval_tickets": []}


# --- upgrading a table created before `subject` existed ---------------------------------------


def _columns(engine: Any, table: str) -> set[str]:
    return {column["name"] for column in inspect(engine).get_columns(table)}


def test_approval_tickets_of_the_previous_version_gain_the_subject_column(database_url, make_client):
    engine = make_engine(database_url)
    try:
        create_schema(engine)
        with engine.begin() as connection:
            # The previous version's table: today's without the column.
            connection.execute(text("ALTER TABLE approval_tickets DROP COLUMN subject"))
            at = datetime(2025, 1, 1, tzinfo=UTC)
            # Only the old columns are named, so the insert is the previous version's.
            connection.execute(
                Base.metadata.tables["approval_tickets"].insert(),
                {
                    "ticket_id": "APR-old",
                    "idempotency_key": "k-old",
                    "agent": "ExpenseReport",
                    "task_id": "t-old",
                    "approval_hash": HASH,
                    "summary": "Old",
                    "approvers": ["ops-lead"],
                    "deadline": at,
                    "status": "approved",
                    "reminders": 0,
                    "decided_by": "ops-lead",
                    "created_at": at,
                },
            )
        assert "subject" not in _columns(engine, "approval_tickets")

        create_schema(engine)
        create_schema(engine)  # a second start finds the table current and leaves it alone

        assert "subject" in _columns(engine, "approval_tickets")
        with Session(engine) as session:
            old = session.scalars(select(ApprovalTicket)).one()
        assert (old.ticket_id, old.status, old.subject) == ("APR-old", "approved", None)
    finally:
        engine.dispose()

    client = make_client()
    ticket_id = _open(client, subject="expense:EXP-0123456789ab")
    assert _ticket(client, ticket_id)["subject"] == "expense:EXP-0123456789ab"
    assert _ticket(client, "APR-old")["subject"] is None
