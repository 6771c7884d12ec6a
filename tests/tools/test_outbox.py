"""The notification outbox: kinds, references, its filters, its guard, and upgrading an old table,
on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Column, MetaData, String, Table, Text, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.db import UTCDateTime, make_engine
from tests.tools.calls import call_tool, derived
from tools.service.outbox import OutboxNotification
from tools.service.schema import create_schema

APPROVAL = {
    "agent": "AgentTask",
    "task_id": "t-1",
    "approval_hash": "ab" * 32,
    "summary": "Refund 40 EUR",
    "approvers": ["ops-lead", "finance@example.com"],
    "deadline": "2030-01-01T12:00:00Z",
}


def test_send_notification_rows_are_plain_notifications_without_reference(client):
    call_tool(client, "send_notification", {"recipient": "r", "subject": "s", "body": "b"}, "k-plain")

    [row] = client.get("/notifications").json()["notifications"]

    assert (row["notification_id"], row["kind"], row["reference"]) == (
        derived("NTF", "k-plain"),
        "notification",
        None,
    )


def test_notifications_are_filtered_by_kind_and_reference(client):
    call_tool(client, "send_notification", {"recipient": "r", "subject": "s", "body": "b"}, "k-plain")
    first = call_tool(client, "request_approval", APPROVAL, "k-apr-1").json()["approval_ticket_id"]
    second = call_tool(client, "request_approval", {**APPROVAL, "task_id": "t-2"}, "k-apr-2").json()[
        "approval_ticket_id"
    ]

    def kinds_and_references(**filters: str) -> list[tuple[str, str | None]]:
        response = client.get("/notifications", params=filters)
        assert response.status_code == 200, response.text
        return sorted((row["kind"], row["reference"]) for row in response.json()["notifications"])

    assert len(kinds_and_references()) == 5
    assert kinds_and_references(kind="notification") == [("notification", None)]
    assert kinds_and_references(reference=first) == [("approval_request", first)] * 2
    assert (
        kinds_and_references(kind="approval_request", reference=second) == [("approval_request", second)] * 2
    )
    assert kinds_and_references(kind="approval_closed") == []


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("kind=email", ["query", "kind"]),
        ("kind=", ["query", "kind"]),
        ("reference=", ["query", "reference"]),
        ("recipient=ops-lead", ["query", "recipient"]),
        ("kind=notification&kind=approval_request", ["query", "kind"]),
    ],
)
def test_bad_notification_filters_are_422_in_the_error_shape(client, query, loc):
    response = client.get(f"/notifications?{query}")

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["message"]
    assert [item["loc"] for item in error["details"]] == [loc]


def _row(notification_id: str, key: str, recipient: str) -> OutboxNotification:
    return OutboxNotification(
        notification_id=notification_id,
        idempotency_key=key,
        kind="notification",
        recipient=recipient,
        subject="s",
        body="b",
        status="queued",
        created_at=datetime.now(UTC),
    )


def test_the_outbox_keeps_one_row_per_key_and_recipient(client):
    engine = client.app.state.engine
    with Session(engine) as session, session.begin():
        session.add_all([_row("NTF-a", "k", "ops-lead"), _row("NTF-b", "k", "finance@example.com")])

    with pytest.raises(IntegrityError), Session(engine) as session, session.begin():
        session.add(_row("NTF-c", "k", "ops-lead"))


# --- upgrading an outbox created before `kind` and `reference` existed --------------------------

LEGACY = MetaData()
Table(
    "notification_outbox",
    LEGACY,
    Column("notification_id", String(32), primary_key=True),
    Column("idempotency_key", String(255), nullable=False, unique=True),
    Column("recipient", String(320), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("body", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)


def test_an_outbox_of_the_previous_version_is_upgraded_in_place(database_url, make_client):
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS notification_outbox"))
            LEGACY.create_all(connection)
            connection.execute(
                LEGACY.tables["notification_outbox"].insert(),
                {
                    "notification_id": "NTF-old",
                    "idempotency_key": "k-old",
                    "recipient": "ada@example.com",
                    "subject": "Old",
                    "body": "Queued before the upgrade",
                    "status": "queued",
                    "created_at": datetime(2025, 1, 1, tzinfo=UTC),
                },
            )

        create_schema(engine)
        create_schema(engine)  # a second start finds the table current and leaves it alone

        inspector = inspect(engine)
        assert {"kind", "reference"} <= {
            column["name"] for column in inspector.get_columns("notification_outbox")
        }
        assert [
            sorted(constraint["column_names"])
            for constraint in inspector.get_unique_constraints("notification_outbox")
        ] == [["idempotency_key", "recipient"]]
        with Session(engine) as session:
            old = session.scalars(select(OutboxNotification)).one()
        assert (old.notification_id, old.kind, old.reference, old.body) == (
            "NTF-old",
            "notification",
            None,
            "Queued before the upgrade",
        )
    finally:
        engine.dispose()

    client = make_client()
    assert call_tool(client, "request_approval", APPROVAL, "k-new").status_code == 200
    rows = client.get("/notifications").json()["notifications"]
    assert sorted((row["idempotency_key"], row["kind"]) for row in rows) == [
        ("k-new", "approval_request"),
        ("k-new", "approval_request"),
        ("k-old", "notification"),
    ]
