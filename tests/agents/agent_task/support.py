"""Shared AgentTask test data: the shipped tool catalog and a user with some history."""

from __future__ import annotations

from app.agents.agent_task.models import HistoryEvent, UserContext
from app.runtime.tool_client import ToolSpec


def shipped_catalog() -> list[ToolSpec]:
    """The catalog the tool service ships (`GET /tools`), as the brief describes it."""
    return [
        ToolSpec(
            name="lookup_user_history",
            description="Read the user's recent history.",
            side_effects=False,
            args_schema={
                "type": "object",
                "properties": {"user_id": {"type": "string"}},
                "required": ["user_id"],
            },
        ),
        ToolSpec(
            name="create_ticket",
            description="Open a support ticket.",
            side_effects=True,
            args_schema={
                "type": "object",
                "properties": {
                    "title": {"type": "string", "minLength": 1, "maxLength": 200},
                    "body": {"type": "string", "maxLength": 5000},
                    "priority": {"enum": ["low", "normal", "high"]},
                    "requester": {"type": "string"},
                },
                "required": ["title", "requester"],
            },
        ),
        ToolSpec(
            name="send_notification",
            description="Send the user a notification.",
            side_effects=True,
            args_schema={
                "type": "object",
                "properties": {
                    "recipient": {"type": "string"},
                    "subject": {"type": "string", "minLength": 1, "maxLength": 200},
                    "body": {"type": "string", "maxLength": 5000},
                },
                "required": ["recipient", "subject"],
            },
        ),
        ToolSpec(
            name="add_user_note",
            description="Add a note to the user's record.",
            side_effects=True,
            args_schema={
                "type": "object",
                "properties": {"user_id": {"type": "string"}, "note": {"type": "string"}},
                "required": ["user_id", "note"],
            },
        ),
    ]


def user_context(user_id: str = "user-42") -> UserContext:
    return UserContext(
        user_id=user_id,
        events=[
            HistoryEvent(kind="login", summary="Logged in from a new device", at="2024-05-01T09:00:00Z"),
            HistoryEvent(
                kind="payment_failed", summary="Card declined for order 981", at="2024-05-03T12:30:00Z"
            ),
            HistoryEvent(kind="profile_update", summary="Changed e-mail address", at="2024-05-02T08:15:00Z"),
        ],
    )
