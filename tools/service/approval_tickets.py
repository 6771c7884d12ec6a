"""Approval tickets: the tool service's record of a human-in-the-loop gate, and its messages.

The agent service parks a task at an approval gate and, through journaled tool calls, opens a
ticket here (`request_approval`, which notifies every approver), reminds people before the
deadline (`remind_approval`) and closes the ticket when the gate ends (`close_approval`, which
tells every approver it is gone), so no approver is left looking at a request nobody waits for.

The gate itself (the awakeable, the timer, who decided) lives in the agent service; a ticket is
what people and dispatchers see. Its messages go through the outbox (tools/service/outbox.py),
in the same transaction as the ticket and the Idempotency-Key.

A ticket is also the tool service's own record of a decision: one that names its `subject`
(`expense:EXP-…`) and was closed `approved` is the evidence `record_expense` requires before it
books that expense as approved by a person (tools/domains/expense/ledger.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import JSON, Connection, Index, String, Text, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from common.db import UTCDateTime
from common.ids import APPROVAL_TICKET_PREFIX
from tools.service.db import Base
from tools.service.definition import Tool, ToolArgs, ToolCall, ToolError, ToolResult
from tools.service.outbox import Message, fit_subject, queue_messages

ApprovalStatus = Literal["open", "approved", "rejected", "expired"]
ApprovalOutcome = Literal["approved", "rejected", "expired"]

HASH_PATTERN = r"^[0-9a-f]{64}$"  # sha256 hex, as the agent service computes approval hashes
PERSON_MAX_LENGTH = 128
MAX_PEOPLE = 10
TEXT_MAX_LENGTH = 2000
TICKET_ID_MAX_LENGTH = 64
# What a ticket approves, as "{kind}:{id}" (e.g. "expense:EXP-0123456789ab").
SUBJECT_MAX_LENGTH = 128
SUBJECT_PATTERN = r"^[a-z_]+:[A-Za-z0-9_.:-]+$"
LIST_LIMIT = 100


def _distinct(people: list[str]) -> list[str]:
    # Each person gets one message per call (the outbox is unique per key and recipient), and a
    # repeated name is a configuration mistake worth hearing about rather than silently merged.
    repeated = sorted({person for person in people if people.count(person) > 1})
    if repeated:
        raise ValueError(f"must name each person once; repeated: {', '.join(repeated)}")
    return people


def _in_utc(value: datetime) -> datetime:
    # Stored in UTC; a date at the edge of the calendar could not be, so refuse it here (422)
    # rather than fail later in the database layer (500).
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


Person = Annotated[str, Field(min_length=1, max_length=PERSON_MAX_LENGTH)]
People = Annotated[list[Person], Field(min_length=1, max_length=MAX_PEOPLE), AfterValidator(_distinct)]
TicketId = Annotated[str, Field(min_length=1, max_length=TICKET_ID_MAX_LENGTH)]
Subject = Annotated[
    str,
    Field(
        max_length=SUBJECT_MAX_LENGTH,
        pattern=SUBJECT_PATTERN,
        description='What the ticket approves, as "{kind}:{id}", e.g. "expense:EXP-0123456789ab"',
    ),
]


class ApprovalTicket(Base):
    __tablename__ = "approval_tickets"
    __table_args__ = (
        # At most one OPEN ticket per gate (agent, task, what is being approved), enforced by the
        # database: two requests under different keys racing past the lookup cannot both open one.
        # Closed tickets are left out, so the same gate may be asked again after it ended.
        Index(
            "uq_approval_tickets_open_gate",
            "agent",
            "task_id",
            "approval_hash",
            unique=True,
            sqlite_where=text("status = 'open'"),
            postgresql_where=text("status = 'open'"),
        ),
        Index("ix_approval_tickets_task_id", "task_id"),
    )

    # "APR-" + 12 hex of sha256(Idempotency-Key): a re-execution produces the same id.
    ticket_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # The second guard behind the idempotency store: one ticket per key.
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    agent: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[str] = mapped_column(String(256))
    approval_hash: Mapped[str] = mapped_column(String(64))
    summary: Mapped[str] = mapped_column(Text)
    approvers: Mapped[list[str]] = mapped_column(JSON)
    deadline: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))
    reminders: Mapped[int]
    decided_by: Mapped[str | None] = mapped_column(String(PERSON_MAX_LENGTH))
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What the ticket approves ("expense:EXP-…"); NULL for gates that name no subject, and for
    # tickets written before the column existed (see upgrade_approval_tickets_table).
    subject: Mapped[str | None] = mapped_column(String(SUBJECT_MAX_LENGTH))


# --- arguments and results ------------------------------------------------------------------


class RequestApprovalArgs(ToolArgs):
    agent: str = Field(min_length=1, max_length=64)
    task_id: str = Field(min_length=1, max_length=256)
    approval_hash: str = Field(pattern=HASH_PATTERN)
    summary: str = Field(min_length=1, max_length=TEXT_MAX_LENGTH)
    approvers: People
    # No "must be in the future": a retry of a journaled call may arrive after the deadline, and
    # refusing it would fail the gate instead of recording it (the agent's timer expires it).
    deadline: Annotated[AwareDatetime, AfterValidator(_in_utc)]
    # What is approved, for a gate whose approval another tool checks (record_expense requires a
    # ticket with the subject "expense:{expense_id}").
    subject: Subject | None = None


class RemindApprovalArgs(ToolArgs):
    approval_ticket_id: TicketId
    # Not only the approvers: a reminder may also go to an escalation contact.
    recipients: People
    message: str = Field(min_length=1, max_length=TEXT_MAX_LENGTH)


class CloseApprovalArgs(ToolArgs):
    approval_ticket_id: TicketId
    outcome: ApprovalOutcome
    decided_by: Person | None = None
    comment: str | None = Field(None, max_length=TEXT_MAX_LENGTH)


class ApprovalRequested(ToolResult):
    approval_ticket_id: str
    status: Literal["open"]
    # Who this call notified: every approver for a new ticket, nobody when the gate's open ticket
    # already existed (its approvers were notified by the call that opened it).
    notified: list[str]


class ApprovalReminded(ToolResult):
    approval_ticket_id: str
    reminders: int
    notified: list[str]


class ApprovalClosed(ToolResult):
    approval_ticket_id: str
    status: ApprovalOutcome


class ApprovalTicketView(ToolResult):
    """An approval ticket as the read-only inspection endpoints show it."""

    # The column is `ticket_id`; shown under the name the tools take and return.
    approval_ticket_id: str = Field(validation_alias="ticket_id")
    idempotency_key: str
    agent: str
    task_id: str
    approval_hash: str
    summary: str
    approvers: list[str]
    deadline: datetime
    status: ApprovalStatus
    reminders: int
    decided_by: str | None
    comment: str | None
    created_at: datetime
    closed_at: datetime | None
    subject: str | None


class ApprovalTicketQuery(BaseModel):
    """The filters of `GET /approval-tickets`; an unknown parameter is refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    agent: str | None = Field(None, min_length=1, max_length=64)
    task_id: str | None = Field(None, min_length=1, max_length=256)
    status: ApprovalStatus | None = None


# --- the tools ------------------------------------------------------------------------------


def request_approval(call: ToolCall, args: RequestApprovalArgs) -> ApprovalRequested:
    existing = _open_ticket(call.session, args)
    if existing is not None:
        # The gate already has an open ticket (asked under another key, e.g. by an earlier visit
        # of the state): answer with it and notify nobody again.
        return _already_open(existing, args)
    ticket = ApprovalTicket(
        ticket_id=call.derived_id(APPROVAL_TICKET_PREFIX),
        idempotency_key=call.idempotency_key,
        agent=args.agent,
        task_id=args.task_id,
        approval_hash=args.approval_hash,
        summary=args.summary,
        approvers=list(args.approvers),
        deadline=args.deadline,
        status="open",
        reminders=0,
        created_at=call.now,
        subject=args.subject,
    )
    try:
        with call.session.begin_nested():
            call.session.add(ticket)
            call.session.flush()
    except IntegrityError:
        # A concurrent request opened the gate's ticket after our lookup. PostgreSQL reports the
        # unique violation only once that transaction committed, so its ticket is visible now.
        # (SQLite serialises writers at BEGIN, so it never gets here.)
        existing = _open_ticket(call.session, args)
        if existing is None:
            raise
        return _already_open(existing, args)
    deadline = _stamp(ticket.deadline)
    approves = f"Approves: {ticket.subject}\n" if ticket.subject else ""
    queue_messages(
        call,
        "approval_request",
        ticket.ticket_id,
        [
            Message(
                recipient=approver,
                subject=fit_subject(f"Approval needed: {ticket.agent} {ticket.task_id}"),
                body=(
                    f"{ticket.summary}\n\n"
                    f"Please approve or reject before {deadline}.\n"
                    f"{approves}"
                    f"Approval ticket: {ticket.ticket_id}\n"
                    f"Approval hash: {ticket.approval_hash}"
                ),
            )
            for approver in ticket.approvers
        ],
    )
    return ApprovalRequested(approval_ticket_id=ticket.ticket_id, status="open", notified=ticket.approvers)


def remind_approval(call: ToolCall, args: RemindApprovalArgs) -> ApprovalReminded:
    ticket = _locked_ticket(call.session, args.approval_ticket_id)
    if ticket.status != "open":
        raise _closed(ticket, "reminded")
    ticket.reminders += 1
    deadline = _stamp(ticket.deadline)
    queue_messages(
        call,
        "approval_reminder",
        ticket.ticket_id,
        [
            Message(
                recipient=recipient,
                subject=fit_subject(f"Reminder: approval needed: {ticket.agent} {ticket.task_id}"),
                body=(
                    f"{args.message}\n\n"
                    f"Please approve or reject before {deadline}.\n"
                    f"Approval ticket: {ticket.ticket_id}\n"
                    f"Approval hash: {ticket.approval_hash}"
                ),
            )
            for recipient in args.recipients
        ],
    )
    return ApprovalReminded(
        approval_ticket_id=ticket.ticket_id, reminders=ticket.reminders, notified=list(args.recipients)
    )


def close_approval(call: ToolCall, args: CloseApprovalArgs) -> ApprovalClosed:
    ticket = _locked_ticket(call.session, args.approval_ticket_id)
    if ticket.status != "open":
        if ticket.status == args.outcome:
            # Closed the same way before (under another key): the gate's end is already recorded
            # and announced; the first close's decider and comment stand.
            return ApprovalClosed(approval_ticket_id=ticket.ticket_id, status=args.outcome)
        raise _closed(ticket, args.outcome)
    ticket.status = args.outcome
    ticket.decided_by = args.decided_by
    ticket.comment = args.comment
    ticket.closed_at = call.now
    queue_messages(
        call,
        "approval_closed",
        ticket.ticket_id,
        [
            Message(
                recipient=approver,
                subject=fit_subject(f"Approval {args.outcome}: {ticket.agent} {ticket.task_id}"),
                body=_closing_body(ticket),
            )
            for approver in ticket.approvers
        ],
    )
    return ApprovalClosed(approval_ticket_id=ticket.ticket_id, status=args.outcome)


def _already_open(existing: ApprovalTicket, args: RequestApprovalArgs) -> ApprovalRequested:
    """The answer for a gate that has its open ticket; 409 when that ticket approves another
    subject than the request names (answering with it would approve something else)."""
    if existing.subject != args.subject:
        raise ToolError(
            409,
            "approval_subject_mismatch",
            f"The gate's open approval ticket {existing.ticket_id!r} approves "
            f"{_subject_text(existing.subject)}, not {_subject_text(args.subject)}.",
            {
                "approval_ticket_id": existing.ticket_id,
                "subject": existing.subject,
                "requested_subject": args.subject,
            },
        )
    return ApprovalRequested(approval_ticket_id=existing.ticket_id, status="open", notified=[])


def _subject_text(subject: str | None) -> str:
    return "no named subject" if subject is None else repr(subject)


def _open_ticket(session: Session, args: RequestApprovalArgs) -> ApprovalTicket | None:
    return session.scalars(
        select(ApprovalTicket).where(
            ApprovalTicket.agent == args.agent,
            ApprovalTicket.task_id == args.task_id,
            ApprovalTicket.approval_hash == args.approval_hash,
            ApprovalTicket.status == "open",
        )
    ).one_or_none()


def _locked_ticket(session: Session, ticket_id: str) -> ApprovalTicket:
    # Locked until the call commits: a reminder and a close of the same ticket under different
    # keys serialise, so a reminder never goes out for a ticket that was closed meanwhile.
    ticket = session.scalars(
        select(ApprovalTicket).where(ApprovalTicket.ticket_id == ticket_id).with_for_update()
    ).one_or_none()
    if ticket is None:
        raise ToolError(
            404,
            "unknown_approval_ticket",
            f"There is no approval ticket with id {ticket_id!r}.",
            {"approval_ticket_id": ticket_id},
        )
    return ticket


def _closed(ticket: ApprovalTicket, attempted: str) -> ToolError:
    return ToolError(
        409,
        "approval_ticket_closed",
        f"The approval ticket {ticket.ticket_id!r} is already {ticket.status}; it cannot be {attempted}.",
        {"approval_ticket_id": ticket.ticket_id, "status": ticket.status},
    )


def _closing_body(ticket: ApprovalTicket) -> str:
    assert ticket.closed_at is not None
    closed_at = _stamp(ticket.closed_at)
    if ticket.status == "expired":
        ending = f"expired at {closed_at} without a decision"
    else:
        by = f" by {ticket.decided_by}" if ticket.decided_by else ""
        ending = f"was {ticket.status}{by} at {closed_at}"
    comment = f"\n\nComment: {ticket.comment}" if ticket.comment else ""
    return (
        f"The approval request for {ticket.agent} {ticket.task_id} {ending}.{comment}\n\n"
        f"Nothing is waiting for your decision any more.\n"
        f"Approval ticket: {ticket.ticket_id}"
    )


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat()


# --- upgrading a table created by an earlier version ---------------------------------------


def upgrade_approval_tickets_table(connection: Connection) -> None:
    """Add `subject` to an `approval_tickets` created before it existed (nullable: the tickets of
    earlier gates name no subject, so they approve no expense). Runs in the caller's transaction,
    before `create_all`; a table that has the column is left alone."""
    table = Base.metadata.tables[ApprovalTicket.__tablename__]
    inspector = inspect(connection)
    if not inspector.has_table(table.name):
        return
    if "subject" in {column["name"] for column in inspector.get_columns(table.name)}:
        return
    # The same statement on SQLite and PostgreSQL: a nullable column without a default.
    connection.execute(text(f"ALTER TABLE approval_tickets ADD COLUMN subject VARCHAR({SUBJECT_MAX_LENGTH})"))


# --- inspection -----------------------------------------------------------------------------


def list_approval_tickets(
    session: Session,
    *,
    agent: str | None = None,
    task_id: str | None = None,
    status: ApprovalStatus | None = None,
    limit: int = LIST_LIMIT,
) -> list[ApprovalTicketView]:
    """The newest tickets first, optionally of one agent, task or status (inspection)."""
    statement = select(ApprovalTicket)
    if agent is not None:
        statement = statement.where(ApprovalTicket.agent == agent)
    if task_id is not None:
        statement = statement.where(ApprovalTicket.task_id == task_id)
    if status is not None:
        statement = statement.where(ApprovalTicket.status == status)
    rows = session.scalars(
        statement.order_by(ApprovalTicket.created_at.desc(), ApprovalTicket.ticket_id).limit(limit)
    )
    return [ApprovalTicketView.model_validate(row, from_attributes=True) for row in rows]


def get_approval_ticket(session: Session, ticket_id: str) -> ApprovalTicketView | None:
    row = session.get(ApprovalTicket, ticket_id)
    return None if row is None else ApprovalTicketView.model_validate(row, from_attributes=True)


TOOLS: tuple[Tool[Any, Any], ...] = (
    Tool(
        name="request_approval",
        description=(
            "Approval gates only: open the approval ticket of a gate and notify each approver. "
            "A gate (agent, task_id, approval_hash) has at most one open ticket; asking again "
            "returns it and notifies nobody (409 if it names another subject). `subject` names "
            'what is approved, e.g. "expense:EXP-0123456789ab": record_expense books a human '
            "approval only against an approved ticket of that expense."
        ),
        side_effects=True,
        args_model=RequestApprovalArgs,
        result_model=ApprovalRequested,
        run=request_approval,
    ),
    Tool(
        name="remind_approval",
        description=(
            "Approval gates only: remind people of an open approval ticket before its deadline. "
            "404 for an unknown ticket, 409 for a closed one."
        ),
        side_effects=True,
        args_model=RemindApprovalArgs,
        result_model=ApprovalReminded,
        run=remind_approval,
    ),
    Tool(
        name="close_approval",
        description=(
            "Approval gates only: close an approval ticket as approved, rejected or expired and "
            "tell each approver. Closing it again the same way is a no-op; another way is 409."
        ),
        side_effects=True,
        args_model=CloseApprovalArgs,
        result_model=ApprovalClosed,
        run=close_approval,
    ),
)
