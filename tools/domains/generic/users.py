"""Users and their history: `lookup_user_history` (read-only) and `add_user_note`.

Also the demo data (users u-1 and u-2 with a few history events) seeded at service start, so the
generic agent has something to fetch in a fresh database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import Field
from sqlalchemy import Index, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from common.db import UTCDateTime
from tools.service.db import Base, seed_where_missing
from tools.service.definition import Tool, ToolArgs, ToolCall, ToolError, ToolResult

HISTORY_LIMIT = 20
USER_ID_MAX_LENGTH = 100


class User(Base):
    __tablename__ = "users"

    user_id: Mapped[str] = mapped_column(String(USER_ID_MAX_LENGTH), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))


class UserHistoryEvent(Base):
    __tablename__ = "user_history"
    __table_args__ = (Index("ix_user_history_user_id_at", "user_id", "at"),)

    # Derived from the Idempotency-Key for notes (fixed for seed rows), so a re-execution cannot
    # append the same note twice.
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(USER_ID_MAX_LENGTH))
    kind: Mapped[str] = mapped_column(String(50))
    summary: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The second guard: one row per Idempotency-Key (NULL for rows no tool call created).
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)


class LookupUserHistoryArgs(ToolArgs):
    user_id: str = Field(min_length=1, max_length=USER_ID_MAX_LENGTH)


class HistoryEvent(ToolResult):
    kind: str
    summary: str
    at: datetime


class UserHistory(ToolResult):
    user_id: str
    events: list[HistoryEvent]


class AddUserNoteArgs(ToolArgs):
    user_id: str = Field(min_length=1, max_length=USER_ID_MAX_LENGTH)
    note: str = Field(min_length=1, max_length=5000)


class NoteAdded(ToolResult):
    user_id: str
    event_at: datetime


def lookup_user_history(call: ToolCall, args: LookupUserHistoryArgs) -> UserHistory:
    # An unknown user simply has no history: the agent asks "what happened to this user", and
    # "nothing" is a valid answer, not a failure.
    rows = call.session.scalars(
        select(UserHistoryEvent)
        .where(UserHistoryEvent.user_id == args.user_id)
        .order_by(UserHistoryEvent.at.desc(), UserHistoryEvent.event_id.desc())
        .limit(HISTORY_LIMIT)
    )
    return UserHistory(
        user_id=args.user_id,
        events=[HistoryEvent(kind=row.kind, summary=row.summary, at=row.at) for row in rows],
    )


def add_user_note(call: ToolCall, args: AddUserNoteArgs) -> NoteAdded:
    # Writing to a user that does not exist is a definite answer, stored like a success.
    if call.session.get(User, args.user_id) is None:
        raise ToolError(
            422, "unknown_user", f"There is no user with id {args.user_id!r}.", {"user_id": args.user_id}
        )
    call.session.add(
        UserHistoryEvent(
            event_id=call.derived_id("NOTE"),
            user_id=args.user_id,
            kind="note",
            summary=args.note,
            at=call.now,
            idempotency_key=call.idempotency_key,
        )
    )
    return NoteAdded(user_id=args.user_id, event_at=call.now)


TOOLS: tuple[Tool[Any, Any], ...] = (
    Tool(
        name="lookup_user_history",
        description=(
            "Read a user's recent history (newest first, at most 20 events). "
            "An unknown user has an empty history."
        ),
        side_effects=False,
        args_model=LookupUserHistoryArgs,
        result_model=UserHistory,
        run=lookup_user_history,
    ),
    Tool(
        name="add_user_note",
        description="Append a note to a user's history.",
        side_effects=True,
        args_model=AddUserNoteArgs,
        result_model=NoteAdded,
        run=add_user_note,
    ),
)


# --- demo data -------------------------------------------------------------------------------

DEMO_USERS: tuple[tuple[str, str, str], ...] = (
    ("u-1", "Ada Lovelace", "ada@example.com"),
    ("u-2", "Grace Hopper", "grace@example.com"),
)

# (event_id, user_id, kind, summary, at)
DEMO_HISTORY: tuple[tuple[str, str, str, str, datetime], ...] = (
    ("seed-u-1-1", "u-1", "signup", "Created an account", datetime(2025, 1, 6, 9, 0, tzinfo=UTC)),
    (
        "seed-u-1-2",
        "u-1",
        "order",
        "Ordered 3 notebooks (order #1001)",
        datetime(2025, 2, 3, 14, 30, tzinfo=UTC),
    ),
    (
        "seed-u-1-3",
        "u-1",
        "support",
        "Reported that order #1001 arrived damaged",
        datetime(2025, 2, 10, 8, 15, tzinfo=UTC),
    ),
    ("seed-u-2-1", "u-2", "signup", "Created an account", datetime(2025, 3, 1, 11, 0, tzinfo=UTC)),
    (
        "seed-u-2-2",
        "u-2",
        "payment",
        "Card payment failed for invoice INV-77",
        datetime(2025, 3, 15, 17, 45, tzinfo=UTC),
    ),
)


def _insert_missing_demo_rows(session: Session) -> None:
    user_ids = [user_id for user_id, _, _ in DEMO_USERS]
    known_users = set(session.scalars(select(User.user_id).where(User.user_id.in_(user_ids))))
    session.add_all(
        User(user_id=user_id, display_name=name, email=email)
        for user_id, name, email in DEMO_USERS
        if user_id not in known_users
    )
    event_ids = [event_id for event_id, *_ in DEMO_HISTORY]
    known_events = set(
        session.scalars(select(UserHistoryEvent.event_id).where(UserHistoryEvent.event_id.in_(event_ids)))
    )
    session.add_all(
        UserHistoryEvent(event_id=event_id, user_id=user_id, kind=kind, summary=summary, at=at)
        for event_id, user_id, kind, summary, at in DEMO_HISTORY
        if event_id not in known_events
    )


def seed_demo_users(sessions: sessionmaker[Session]) -> None:
    """Insert the demo users and their history where missing; safe to call at every start."""
    seed_where_missing(sessions, _insert_missing_demo_rows)
