"""`send_notification`: queue a message for the user in the service's outbox."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tools.service.definition import Tool, ToolArgs, ToolCall, ToolResult
from tools.service.outbox import RECIPIENT_MAX_LENGTH, SUBJECT_MAX_LENGTH, OutboxNotification


class SendNotificationArgs(ToolArgs):
    recipient: str = Field(min_length=1, max_length=RECIPIENT_MAX_LENGTH)
    subject: str = Field(min_length=1, max_length=SUBJECT_MAX_LENGTH)
    body: str = Field(max_length=5000)


class NotificationQueued(ToolResult):
    notification_id: str
    status: Literal["queued"]


def send_notification(call: ToolCall, args: SendNotificationArgs) -> NotificationQueued:
    notification = OutboxNotification(
        notification_id=call.derived_id("NTF"),
        idempotency_key=call.idempotency_key,
        kind="notification",
        reference=None,
        recipient=args.recipient,
        subject=args.subject,
        body=args.body,
        status="queued",
        created_at=call.now,
    )
    call.session.add(notification)
    return NotificationQueued(notification_id=notification.notification_id, status="queued")


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
