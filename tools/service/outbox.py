"""Notifications: the transactional outbox, and `send_notification`, which writes to it.

Sending from inside the request would make the email and the database disagree after a crash
(sent but not recorded, or recorded but not sent). The outbox row commits together with the
Idempotency-Key, and a separate dispatcher delivers queued rows at least once.

Other tools queue rows here too (approval requests, reminders and closings, with the approval
ticket as `reference`), through `queue_messages`, so every row has the same guarantees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    Connection,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    delete,
    inspect,
    select,
    text,
)
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.schema import AddConstraint, CreateIndex

from common.db import UTCDateTime
from tools.service.db import Base
from tools.service.definition import ToolCall, ToolResult

NotificationKind = Literal["notification", "approval_request", "approval_reminder", "approval_closed"]
SUBJECT_MAX_LENGTH = 200
RECIPIENT_MAX_LENGTH = 320
REFERENCE_MAX_LENGTH = 64
LIST_LIMIT = 100


class OutboxNotification(Base):
    __tablename__ = "notification_outbox"
    __table_args__ = (
        # The second guard behind the idempotency store: one row per key and recipient, so a
        # re-execution of a call cannot queue the same message twice. Per recipient rather than
        # per key, because one call may notify several people (every approver of a ticket).
        UniqueConstraint("idempotency_key", "recipient", name="uq_notification_outbox_key_recipient"),
        Index("ix_notification_outbox_reference", "reference"),
    )

    # "NTF-" + 12 hex of sha256(Idempotency-Key), plus "-{index}" when one call queues several
    # rows: a re-execution produces the same ids.
    notification_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(255))
    recipient: Mapped[str] = mapped_column(String(RECIPIENT_MAX_LENGTH))
    subject: Mapped[str] = mapped_column(String(SUBJECT_MAX_LENGTH))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # What the message is about, so a dispatcher can pick a template and an approver's inbox can
    # group the messages of one approval ticket (`reference`; NULL for plain notifications).
    # The server default covers rows written before the column existed.
    kind: Mapped[str] = mapped_column(String(32), default="notification", server_default="notification")
    reference: Mapped[str | None] = mapped_column(String(REFERENCE_MAX_LENGTH))


class NotificationDelivery(Base):
    """How the delivery of one outbox row goes (tools/service/dispatcher.py): attempts, the current
    claim and its lease, the next attempt, the last error, when it was sent and by which channel."""

    __tablename__ = "notification_deliveries"

    notification_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claim_token: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    channel: Mapped[str | None] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class NotificationView(ToolResult):
    """An outbox row as the read-only inspection endpoint shows it, with its delivery."""

    notification_id: str
    idempotency_key: str
    kind: NotificationKind
    reference: str | None
    recipient: str
    subject: str
    body: str
    # queued -> sending -> sent, or back to queued (retry), or dead (refused, or out of attempts).
    status: str
    created_at: datetime
    attempts: int = 0
    channel: str | None = None
    last_error: str | None = None
    sent_at: datetime | None = None


class NotificationQuery(BaseModel):
    """The filters of `GET /notifications`; an unknown parameter is refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    kind: NotificationKind | None = None
    reference: str | None = Field(None, min_length=1, max_length=REFERENCE_MAX_LENGTH)


@dataclass(frozen=True)
class Message:
    """One message for the outbox; tools that notify several people build one per recipient."""

    recipient: str
    subject: str
    body: str


def fit_subject(subject: str) -> str:
    """A subject built from caller data (agent, task id) cut to what the column holds."""
    if len(subject) <= SUBJECT_MAX_LENGTH:
        return subject
    return subject[: SUBJECT_MAX_LENGTH - 1] + "…"


def queue_messages(
    call: ToolCall, kind: NotificationKind, reference: str | None, messages: Sequence[Message]
) -> list[str]:
    """Queue one outbox row per message, in the call's transaction; returns their ids.

    The ids are derived from the Idempotency-Key and the message's position, which the request
    fixes (the recipients come from its body or from a row it names), so a re-execution writes the
    same ids. The recipients must be distinct: the outbox refuses two rows per key and recipient.
    """
    prefix = call.derived_id("NTF")
    rows = [
        OutboxNotification(
            notification_id=f"{prefix}-{index}",
            idempotency_key=call.idempotency_key,
            kind=kind,
            reference=reference,
            recipient=message.recipient,
            subject=message.subject,
            body=message.body,
            status="queued",
            created_at=call.now,
        )
        for index, message in enumerate(messages)
    ]
    call.session.add_all(rows)
    return [row.notification_id for row in rows]


def list_notifications(
    session: Session,
    *,
    kind: NotificationKind | None = None,
    reference: str | None = None,
    limit: int = LIST_LIMIT,
) -> list[NotificationView]:
    """The newest outbox rows first, optionally of one kind or reference (inspection)."""
    statement = select(OutboxNotification, NotificationDelivery).outerjoin(
        NotificationDelivery, NotificationDelivery.notification_id == OutboxNotification.notification_id
    )
    if kind is not None:
        statement = statement.where(OutboxNotification.kind == kind)
    if reference is not None:
        statement = statement.where(OutboxNotification.reference == reference)
    rows = session.execute(
        statement.order_by(OutboxNotification.created_at.desc(), OutboxNotification.notification_id).limit(
            limit
        )
    )
    views = []
    for row, delivery in rows:
        view = NotificationView.model_validate(row, from_attributes=True)
        if delivery is not None:
            view = view.model_copy(
                update={
                    "attempts": delivery.attempts,
                    "channel": delivery.channel,
                    "last_error": delivery.last_error,
                    "sent_at": delivery.sent_at,
                }
            )
        views.append(view)
    return views


# --- upgrading an outbox created by an earlier version ----------------------------------------


def upgrade_outbox_table(connection: Connection) -> None:
    """Bring a `notification_outbox` created before `kind` and `reference` to the current shape.

    `create_all` never alters an existing table, and the old table has a unique constraint on
    `idempotency_key` alone, which would refuse every call that notifies several people. Runs in
    the caller's transaction, before `create_all`; a table that has `kind` is already current.
    """
    table = Base.metadata.tables[OutboxNotification.__tablename__]
    inspector = inspect(connection)
    if not inspector.has_table(table.name):
        return
    if "kind" in {column["name"] for column in inspector.get_columns(table.name)}:
        return
    legacy_columns = "notification_id, idempotency_key, recipient, subject, body, status, created_at"
    if connection.dialect.name == "sqlite":
        # SQLite cannot drop a constraint: rebuild the table and copy the rows across.
        connection.execute(text("ALTER TABLE notification_outbox RENAME TO notification_outbox_legacy"))
        table.create(connection)
        connection.execute(
            text(
                f"INSERT INTO notification_outbox ({legacy_columns}, kind) "
                f"SELECT {legacy_columns}, 'notification' FROM notification_outbox_legacy"
            )
        )
        connection.execute(text("DROP TABLE notification_outbox_legacy"))
        return
    connection.execute(
        text(
            "ALTER TABLE notification_outbox "
            "ADD COLUMN kind VARCHAR(32) NOT NULL DEFAULT 'notification', "
            f"ADD COLUMN reference VARCHAR({REFERENCE_MAX_LENGTH})"
        )
    )
    for constraint in inspector.get_unique_constraints(table.name):
        if constraint["column_names"] == ["idempotency_key"] and constraint["name"]:
            connection.execute(
                text(f'ALTER TABLE notification_outbox DROP CONSTRAINT "{constraint["name"]}"')
            )
    for unique in table.constraints:
        if isinstance(unique, UniqueConstraint):
            connection.execute(AddConstraint(unique))
    for index in table.indexes:
        connection.execute(CreateIndex(index))


def sweep_delivered(session: Session, created_before: datetime) -> int:
    """Delete sent and dead rows (and their deliveries) queued before `created_before`."""
    ids = session.scalars(
        select(OutboxNotification.notification_id).where(
            OutboxNotification.status.in_(("sent", "dead")), OutboxNotification.created_at < created_before
        )
    ).all()
    if ids:
        session.execute(delete(NotificationDelivery).where(NotificationDelivery.notification_id.in_(ids)))
        session.execute(delete(OutboxNotification).where(OutboxNotification.notification_id.in_(ids)))
    return len(ids)
