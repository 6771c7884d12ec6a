"""The Idempotency-Key contract over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

from tests.tools.calls import TICKET, call_tool, count_rows, derived, store_of
from tools.domains.generic.tickets import CreateTicketArgs, Ticket, TicketCreated, create_ticket
from tools.domains.generic.users import UserHistoryEvent
from tools.service.definition import Tool, ToolArgs, ToolCall, ToolError, ToolResult
from tools.service.idempotency import Claimed, ClaimLost, IdempotencyKey, request_hash
from tools.service.registry import default_registry


def test_first_call_runs_and_a_retry_replays_the_stored_response(client):
    first = call_tool(client, "create_ticket", TICKET, "task-1:EXECUTE:0")

    assert first.status_code == 200
    assert first.json() == {"ticket_id": derived("TCK", "task-1:EXECUTE:0"), "status": "open"}
    assert "idempotent-replayed" not in first.headers
    record = client.get("/idempotency/task-1:EXECUTE:0").json()
    assert record["status"] == "done"
    assert record["response_status"] == 200
    assert record["tool_name"] == "create_ticket"

    retry = call_tool(client, "create_ticket", TICKET, "task-1:EXECUTE:0")

    assert retry.status_code == 200
    assert retry.content == first.content
    assert retry.headers["idempotent-replayed"] == "true"
    assert count_rows(client, Ticket) == 1


def test_the_same_request_in_another_key_order_and_spacing_is_the_same_request(client):
    call_tool(client, "create_ticket", TICKET, "k-order")
    reordered = json.dumps(dict(reversed(list(TICKET.items()))), indent=2)

    retry = client.post(
        "/tools/create_ticket",
        content=reordered,
        headers={"Idempotency-Key": "k-order", "Content-Type": "application/json"},
    )

    assert retry.status_code == 200
    assert retry.headers["idempotent-replayed"] == "true"
    assert count_rows(client, Ticket) == 1


def test_a_quoted_structured_field_key_is_the_same_key_as_the_bare_one(client):
    first = call_tool(client, "create_ticket", TICKET, "k-quoted")

    retry = call_tool(client, "create_ticket", TICKET, '"k-quoted"')

    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content


def test_same_key_with_a_different_body_is_422_and_changes_nothing(client):
    first = call_tool(client, "create_ticket", TICKET, "k-reuse")

    reused = call_tool(client, "create_ticket", {**TICKET, "title": "Another title"}, "k-reuse")

    assert reused.status_code == 422
    error = reused.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert "Idempotency-Key reused with a different request" in error["message"]
    assert count_rows(client, Ticket) == 1
    tickets = client.get("/tickets").json()["tickets"]
    assert [ticket["title"] for ticket in tickets] == [TICKET["title"]]
    # The original answer is still what the original request gets.
    assert call_tool(client, "create_ticket", TICKET, "k-reuse").content == first.content


def test_same_key_for_a_different_tool_is_422(client):
    call_tool(client, "create_ticket", TICKET, "k-tool")

    reused = call_tool(client, "send_notification", {"recipient": "a", "subject": "s", "body": "b"}, "k-tool")

    assert reused.status_code == 422
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert client.get("/notifications").json()["notifications"] == []


def test_same_key_while_the_first_is_in_flight_is_409_with_retry_after(client):
    store_of(client).claim("k-busy", "create_ticket", request_hash("create_ticket", TICKET))

    busy = call_tool(client, "create_ticket", TICKET, "k-busy")

    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "request_in_flight"
    assert "still in flight" in busy.json()["error"]["message"]
    assert 1 <= int(busy.headers["retry-after"]) <= 60
    assert count_rows(client, Ticket) == 0
    assert client.get("/idempotency/k-busy").json()["status"] == "in_flight"


def test_a_key_in_flight_with_a_different_body_is_still_422(client):
    store_of(client).claim("k-busy-reuse", "create_ticket", request_hash("create_ticket", TICKET))

    reused = call_tool(client, "create_ticket", {**TICKET, "priority": "low"}, "k-busy-reuse")

    assert reused.status_code == 422


def test_an_expired_lease_is_taken_over_and_the_tool_runs_exactly_once(make_client, clock):
    client = make_client(IDEMPOTENCY_LEASE_SECONDS=30)
    claim = store_of(client).claim("k-expired", "create_ticket", request_hash("create_ticket", TICKET))
    assert isinstance(claim, Claimed)
    clock.advance(31)

    taken_over = call_tool(client, "create_ticket", TICKET, "k-expired")
    retry = call_tool(client, "create_ticket", TICKET, "k-expired")

    assert taken_over.status_code == 200
    assert "idempotent-replayed" not in taken_over.headers
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == taken_over.content
    assert count_rows(client, Ticket) == 1
    # The stale holder wakes up and tries to complete: its claim is gone, nothing commits.
    stale = store_of(client).execute("k-expired", claim.claim_token, _never_called)
    assert isinstance(stale, ClaimLost)
    assert count_rows(client, Ticket) == 1


def _never_called(session: Any) -> Any:
    raise AssertionError("a lost claim must not run the effect")


def test_a_process_killed_mid_request_leaves_no_effect_and_the_retry_acts_once(make_client, clock):
    client = make_client(IDEMPOTENCY_LEASE_SECONDS=60)
    store = store_of(client)
    key = "task-9:EXECUTE:0"
    claim = store.claim(key, "create_ticket", request_hash("create_ticket", TICKET))
    assert isinstance(claim, Claimed)

    def effect_then_crash(session):
        create_ticket(
            ToolCall(session=session, idempotency_key=key, now=clock()),
            CreateTicketArgs.model_validate(TICKET),
        )
        session.flush()  # the insert reached the database, inside the uncommitted transaction
        raise SystemExit("killed")  # not an Exception: no release, exactly like a dead process

    try:
        store.execute(key, claim.claim_token, effect_then_crash)
    except SystemExit:
        pass
    assert count_rows(client, Ticket) == 0
    assert call_tool(client, "create_ticket", TICKET, key).status_code == 409

    clock.advance(61)
    retried = call_tool(client, "create_ticket", TICKET, key)
    replayed = call_tool(client, "create_ticket", TICKET, key)

    assert retried.status_code == 200
    assert retried.json()["ticket_id"] == derived("TCK", key)
    assert replayed.headers["idempotent-replayed"] == "true"
    assert count_rows(client, Ticket) == 1


class _FlakyTool:
    """Writes a ticket and then raises, as many times as asked, then behaves."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0

    def __call__(self, call: ToolCall, args: CreateTicketArgs) -> TicketCreated:
        self.runs += 1
        result = create_ticket(call, args)
        call.session.flush()
        if self.runs <= self.failures:
            raise RuntimeError("the ticketing backend fell over")
        return result


def test_an_exception_inside_a_tool_is_500_rolls_back_and_a_retry_runs_again(make_client):
    flaky = _FlakyTool(failures=1)
    registry = default_registry()
    registry.register(
        Tool(
            name="flaky_ticket",
            description="create_ticket that fails the first time",
            side_effects=True,
            args_model=CreateTicketArgs,
            result_model=TicketCreated,
            run=flaky,
        )
    )
    client = make_client(registry=registry)

    failed = call_tool(client, "flaky_ticket", TICKET, "k-flaky")

    assert failed.status_code == 500
    assert failed.json()["error"]["code"] == "tool_failed"
    assert count_rows(client, Ticket) == 0
    assert client.get("/idempotency/k-flaky").status_code == 404  # the claim was released

    retried = call_tool(client, "flaky_ticket", TICKET, "k-flaky")

    assert retried.status_code == 200
    assert "idempotent-replayed" not in retried.headers
    assert flaky.runs == 2
    assert count_rows(client, Ticket) == 1
    assert call_tool(client, "flaky_ticket", TICKET, "k-flaky").headers["idempotent-replayed"] == "true"
    assert flaky.runs == 2


def test_a_domain_error_is_stored_and_replayed_like_a_success(client):
    body = {"user_id": "u-404", "note": "hello"}

    first = call_tool(client, "add_user_note", body, "k-unknown-user")
    retry = call_tool(client, "add_user_note", body, "k-unknown-user")

    assert first.status_code == 422
    assert first.json()["error"]["code"] == "unknown_user"
    assert retry.status_code == 422
    assert retry.content == first.content
    assert retry.headers["idempotent-replayed"] == "true"
    record = client.get("/idempotency/k-unknown-user").json()
    assert (record["status"], record["response_status"]) == ("done", 422)
    assert count_rows(client, UserHistoryEvent, user_id="u-404") == 0


class _HalfWritingArgs(ToolArgs):
    user_id: str


class _Done(ToolResult):
    ok: bool


def test_a_domain_error_rolls_back_the_tools_partial_writes(make_client):
    def write_then_refuse(call: ToolCall, args: _HalfWritingArgs) -> _Done:
        create_ticket(call, CreateTicketArgs.model_validate(TICKET))
        call.session.flush()
        raise ToolError(409, "ticket_frozen", "Tickets are frozen for this user.")

    registry = default_registry()
    registry.register(
        Tool("half_writer", "writes then refuses", True, _HalfWritingArgs, _Done, write_then_refuse)
    )
    client = make_client(registry=registry)

    refused = call_tool(client, "half_writer", {"user_id": "u-1"}, "k-half")

    assert refused.status_code == 409
    assert refused.json() == {
        "error": {"code": "ticket_frozen", "message": "Tickets are frozen for this user."}
    }
    assert count_rows(client, Ticket) == 0
    assert count_rows(client, IdempotencyKey, key="k-half", status="done") == 1


def test_side_effects_are_exactly_once_across_all_side_effecting_tools(client):
    calls = [
        ("create_ticket", TICKET),
        ("send_notification", {"recipient": "ada@example.com", "subject": "Hi", "body": "Ticket opened"}),
        ("add_user_note", {"user_id": "u-1", "note": "Called about the printer"}),
    ]
    for name, body in calls:
        first = call_tool(client, name, body, f"k-{name}")
        second = call_tool(client, name, body, f"k-{name}")
        assert first.status_code == second.status_code == 200
        assert second.content == first.content

    assert count_rows(client, Ticket) == 1
    assert len(client.get("/notifications").json()["notifications"]) == 1
    assert count_rows(client, UserHistoryEvent, kind="note") == 1
