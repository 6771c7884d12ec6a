"""Tickets: `create_ticket`, the side effect the generic agent uses to hand work to people."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field
from sqlalchemy import String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from common.db import UTCDateTime
from tools.service.db import Base
from tools.service.definition import Tool, ToolArgs, ToolCall, ToolResult

Priority = Literal["low", "normal", "high"]


class Ticket(Base):
    __tablename__ = "tickets"

    # "TCK-" + 12 hex of sha256(Idempotency-Key): a re-execution produces the same id.
    ticket_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # The second guard behind the idempotency store: one ticket per key, enforced by the database.
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    priority: Mapped[str] = mapped_column(String(16))
    requester: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CreateTicketArgs(ToolArgs):
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(max_length=5000)
    priority: Priority = "normal"
    requester: str = Field(min_length=1, max_length=200)


class TicketCreated(ToolResult):
    ticket_id: str
    status: Literal["open"]


class TicketView(ToolResult):
    """A ticket as the read-only inspection endpoint shows it."""

    ticket_id: str
    idempotency_key: str
    title: str
    body: str
    priority: str
    requester: str
    status: str
    created_at: datetime


def create_ticket(call: ToolCall, args: CreateTicketArgs) -> TicketCreated:
    ticket = Ticket(
        ticket_id=call.derived_id("TCK"),
        idempotency_key=call.idempotency_key,
        title=args.title,
        body=args.body,
        priority=args.priority,
        requester=args.requester,
        status="open",
        created_at=call.now,
    )
    call.session.add(ticket)
    return TicketCreated(ticket_id=ticket.ticket_id, status="open")


def list_tickets(session: Session, limit: int = 100) -> list[TicketView]:
    """The newest tickets first (inspection for operators and tests)."""
    rows = session.scalars(select(Ticket).order_by(Ticket.created_at.desc(), Ticket.ticket_id).limit(limit))
    return [TicketView.model_validate(row, from_attributes=True) for row in rows]


TOOLS: tuple[Tool[Any, Any], ...] = (
    Tool(
        name="create_ticket",
        description="Open a support ticket for a person to act on. Returns the ticket id.",
        side_effects=True,
        args_model=CreateTicketArgs,
        result_model=TicketCreated,
        run=create_ticket,
    ),
)
