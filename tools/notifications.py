"""Notifications: `send_notification` writes to a transactional outbox; it never sends itself.

Sending from inside the request would make the email and the database disagree after a crash
(sent but not recorded, or recorded but not sent). The outbox row commits together with the
Idempotency-Key, and a separate dispatcher delivers queued rows at least once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field
from sqlalchemy import String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from tools.db import Base, UTCDateTime
from tools.definition import Tool, ToolArgs, ToolCall, ToolResult


class OutboxNotification(Base):
    __tablename__ = "notification_outbox"

    # "NTF-" + 12 hex of sha256(Idempotency-Key): a re-execution produces the same id.
    notification_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # The second guard behind the idempotency store: one notification per key.
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    recipient: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SendNotificationArgs(ToolArgs):
    recipient: str = Field(min_length=1, max_length=320)
    subject: str = Field(min_length=1, max_length=200)
    body: str = Field(max_length=5000)


class NotificationQueued(ToolResult):
    notification_id: str
    status: Literal["queued"]


class NotificationView(ToolResult):
    """An outbox row as the read-only inspection endpoint shows it."""

    notification_id: str
    idempotency_key: str
    recipient: str
    subject: str
    body: str
    status: str
    created_at: datetime


def send_notification(call: ToolCall, args: SendNotificationArgs) -> NotificationQueued:
    notification = OutboxNotification(
        notification_id=call.derived_id("NTF"),
        idempotency_key=call.idempotency_key,
        recipient=args.recipient,
        subject=args.subject,
        body=args.body,
        status="queued",
        created_at=call.now,
    )
    call.session.add(notification)
    return NotificationQueued(notification_id=notification.notification_id, status="queued")


def list_notifications(session: Session, limit: int = 100) -> list[NotificationView]:
    """The newest outbox rows first (inspection for operators and tests)."""
    rows = session.scalars(
        select(OutboxNotification)
        .order_by(OutboxNotification.created_at.desc(), OutboxNotification.notification_id)
        .limit(limit)
    )
    return [NotificationView.model_validate(row, from_attributes=True) for row in rows]


TOOLS: tuple[Tool[Any, Any], ...] = (
    Tool(
        name="send_notification",
        description=(
            "Queue a notification (email-like: recipient, subject, body) in the outbox for delivery."
        ),
        side_effects=True,
        args_model=SendNotificationArgs,
        result_model=NotificationQueued,
        run=send_notification,
    ),
)
