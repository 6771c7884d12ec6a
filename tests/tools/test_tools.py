"""The generic agent's tools, the catalog and the inspection endpoints, on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.tools.calls import call_tool, derived
from tools.domains.generic import tickets, users
from tools.domains.generic.users import HISTORY_LIMIT
from tools.service.registry import ToolRegistry


def test_the_catalog_lists_every_tool_with_its_argument_schema(client):
    response = client.get("/tools")

    assert response.status_code == 200
    tools = {tool["name"]: tool for tool in response.json()["tools"]}
    assert {name: tool["side_effects"] for name, tool in tools.items()} == {
        "lookup_user_history": False,
        "add_user_note": True,
        "create_ticket": True,
        "send_notification": True,
        "request_approval": True,
        "remind_approval": True,
        "close_approval": True,
        "get_expense": False,
        "ocr_receipt": False,
        "route_expense": False,
        "record_expense": True,
        "get_order": False,
        "check_refund_policy": False,
        "issue_refund": True,
    }
    ticket_schema = tools["create_ticket"]["args_schema"]
    assert ticket_schema["additionalProperties"] is False
    assert set(ticket_schema["required"]) == {"title", "body", "requester"}
    assert ticket_schema["properties"]["priority"]["enum"] == ["low", "normal", "high"]
    assert all(tool["description"] for tool in tools.values())


def test_health_checks_the_database(client):
    response = client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_lookup_user_history_returns_the_seeded_events_newest_first(client):
    response = call_tool(client, "lookup_user_history", {"user_id": "u-1"}, "k-lookup")

    assert response.status_code == 200
    history = response.json()
    assert history["user_id"] == "u-1"
    stamps = [event["at"] for event in history["events"]]
    assert len(stamps) == 3
    assert stamps == sorted(stamps, reverse=True)
    assert {event["kind"] for event in history["events"]} == {"signup", "order", "support"}
    assert stamps[0].startswith("2025-02-10T08:15:00")


def test_lookup_user_history_of_an_unknown_user_is_empty_not_an_error(client):
    response = call_tool(client, "lookup_user_history", {"user_id": "nobody"}, "k-nobody")

    assert response.status_code == 200
    assert response.json() == {"user_id": "nobody", "events": []}


def test_a_restart_does_not_seed_the_demo_data_twice(make_client):
    make_client()
    client = make_client()  # a second start on the same database

    history = call_tool(client, "lookup_user_history", {"user_id": "u-2"}, "k-restart").json()

    assert len(history["events"]) == 2


def test_notes_are_appended_and_history_is_capped(client):
    for index in range(HISTORY_LIMIT + 2):
        added = call_tool(
            client, "add_user_note", {"user_id": "u-2", "note": f"note {index}"}, f"k-note-{index}"
        )
        assert added.status_code == 200
        assert added.json()["user_id"] == "u-2"

    history = call_tool(client, "lookup_user_history", {"user_id": "u-2"}, "k-after-notes").json()

    assert len(history["events"]) == HISTORY_LIMIT
    assert history["events"][0] == {
        "kind": "note",
        "summary": f"note {HISTORY_LIMIT + 1}",
        "at": added.json()["event_at"],
    }
    assert all(event["kind"] == "note" for event in history["events"])


def test_create_ticket_derives_its_id_from_the_key_and_defaults_the_priority(client):
    body = {"title": "Refund", "body": "", "requester": "u-2"}

    response = call_tool(client, "create_ticket", body, "task-7:EXECUTE:1")

    assert response.json() == {"ticket_id": derived("TCK", "task-7:EXECUTE:1"), "status": "open"}
    [ticket] = client.get("/tickets").json()["tickets"]
    assert ticket["priority"] == "normal"
    assert ticket["idempotency_key"] == "task-7:EXECUTE:1"
    assert ticket["status"] == "open"


def test_send_notification_queues_a_row_in_the_outbox(client):
    body = {"recipient": "grace@example.com", "subject": "Your refund", "body": "It is on its way."}

    response = call_tool(client, "send_notification", body, "task-7:EXECUTE:2")

    assert response.status_code == 200
    assert response.json() == {"notification_id": derived("NTF", "task-7:EXECUTE:2"), "status": "queued"}
    [row] = client.get("/notifications").json()["notifications"]
    assert {key: row[key] for key in ("recipient", "subject", "body", "status")} == {
        **body,
        "status": "queued",
    }


def test_the_idempotency_record_shows_status_but_not_the_response_body(client):
    call_tool(client, "send_notification", {"recipient": "r", "subject": "s", "body": "b"}, "k/with/slashes")

    record = client.get("/idempotency/k/with/slashes").json()

    assert record["key"] == "k/with/slashes"
    assert (record["status"], record["response_status"]) == ("done", 200)
    assert record["completed_at"] is not None
    assert "response_body" not in record and "claim_token" not in record


def test_the_catalog_is_built_once_and_again_after_a_tool_is_registered():
    registry = ToolRegistry(users.TOOLS)
    first = registry.catalog()
    assert registry.catalog() is first  # built once
    assert "create_ticket" not in {tool["name"] for tool in first}
    for tool in tickets.TOOLS:
        registry.register(tool)
    assert "create_ticket" in {tool["name"] for tool in registry.catalog()}
