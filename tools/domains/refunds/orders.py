"""Orders and refunds: `get_order`, `check_refund_policy` (both read-only) and `issue_refund`.

The policy is the tool service's, never the agent's: a full refund within 30 days of purchase,
half the price within 60, nothing after. `issue_refund` pays out only what the policy allows,
once per order, and only against an approval ticket of that order (`subject: refund:{order_id}`)
closed `approved` by the approver it names: the agent's word is never the evidence.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import Field
from sqlalchemy import Date, ForeignKey, Numeric, String, Text, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from common.db import UTCDateTime
from tools.service.approval_tickets import ApprovalTicket, TicketId
from tools.service.db import Base, seed_where_missing
from tools.service.definition import Tool, ToolArgs, ToolCall, ToolError, ToolResult
from tools.service.money import Amount, format_amount

ORDER_ID_PATTERN = r"^ORD-[0-9]{4,10}$"
APPROVER_PATTERN = r"^[A-Za-z0-9_.@:+-]+$"
FULL_REFUND_DAYS = 30
HALF_REFUND_DAYS = 60
CENT = Decimal("0.01")


class Order(Base):
    __tablename__ = "orders"

    order_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    customer: Mapped[str] = mapped_column(String(128))
    item: Mapped[str] = mapped_column(Text)
    total: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    currency: Mapped[str] = mapped_column(String(3))
    purchased_on: Mapped[date] = mapped_column(Date)


class Refund(Base):
    __tablename__ = "refunds"

    # "RF-" + 12 hex of sha256(Idempotency-Key): a re-execution produces the same id.
    refund_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # One refund per order: the domain's own guard, whatever key a request comes with.
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.order_id"), unique=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    currency: Mapped[str] = mapped_column(String(3))
    approved_by: Mapped[str] = mapped_column(String(128))
    approval_ticket_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OrderArgs(ToolArgs):
    order_id: str = Field(pattern=ORDER_ID_PATTERN)


class OrderRecord(ToolResult):
    order_id: str
    customer: str
    item: str
    total: str
    currency: str
    purchased_on: date
    refunded: bool


class PolicyArgs(ToolArgs):
    order_id: str = Field(pattern=ORDER_ID_PATTERN)
    amount: Amount


class PolicyVerdict(ToolResult):
    allowed: bool
    # The most the policy refunds for this order today ("0.00": nothing).
    max_amount: str
    rule: str
    reason: str


class IssueRefundArgs(ToolArgs):
    order_id: str = Field(pattern=ORDER_ID_PATTERN)
    amount: Amount
    approved_by: str = Field(min_length=1, max_length=128, pattern=APPROVER_PATTERN)
    approval_ticket_id: TicketId


class RefundIssued(ToolResult):
    refund_id: str
    order_id: str
    amount: str
    currency: str
    # True when the order had been refunded before (under another key): nothing was paid again.
    already_refunded: bool


def refund_subject(order_id: str) -> str:
    """The subject an approval ticket of a refund names (request_approval's `subject`)."""
    return f"refund:{order_id}"


def policy_limit(order: Order, today: date) -> tuple[Decimal, str]:
    """Pure: the most the policy refunds for `order` on `today`, and the rule that says so."""
    age = (today - order.purchased_on).days
    if age <= FULL_REFUND_DAYS:
        return order.total, f"full refund within {FULL_REFUND_DAYS} days"
    if age <= HALF_REFUND_DAYS:
        return (order.total / 2).quantize(CENT), f"half refund within {HALF_REFUND_DAYS} days"
    return Decimal("0.00"), f"no refund after {HALF_REFUND_DAYS} days"


def _order(session: Session, order_id: str, *, for_update: bool = False) -> Order:
    statement = select(Order).where(Order.order_id == order_id)
    if for_update:
        statement = statement.with_for_update(key_share=True)
    order = session.scalars(statement).one_or_none()
    if order is None:
        raise ToolError(404, "unknown_order", f"There is no order {order_id!r}.", {"order_id": order_id})
    return order


def _refund_of(session: Session, order_id: str) -> Refund | None:
    return session.scalars(select(Refund).where(Refund.order_id == order_id)).one_or_none()


def get_order(call: ToolCall, args: OrderArgs) -> OrderRecord:
    order = _order(call.session, args.order_id)
    return OrderRecord(
        order_id=order.order_id,
        customer=order.customer,
        item=order.item,
        total=format_amount(order.total),
        currency=order.currency,
        purchased_on=order.purchased_on,
        refunded=_refund_of(call.session, order.order_id) is not None,
    )


def check_refund_policy(call: ToolCall, args: PolicyArgs) -> PolicyVerdict:
    order = _order(call.session, args.order_id)
    limit, rule = policy_limit(order, call.now.date())
    if _refund_of(call.session, order.order_id) is not None:
        return PolicyVerdict(
            allowed=False, max_amount="0.00", rule="one refund per order", reason="already refunded"
        )
    allowed = args.amount <= limit and args.amount > 0
    reason = (
        f"{format_amount(args.amount)} is within the limit"
        if allowed
        else f"{format_amount(args.amount)} exceeds the limit of {format_amount(limit)} {order.currency}"
    )
    return PolicyVerdict(allowed=allowed, max_amount=format_amount(limit), rule=rule, reason=reason)


def issue_refund(call: ToolCall, args: IssueRefundArgs) -> RefundIssued:
    # Locked until commit: two requests for one order under different keys serialise here.
    order = _order(call.session, args.order_id, for_update=True)
    _check_approval(call.session, order, args)
    limit, rule = policy_limit(order, call.now.date())
    existing = _refund_of(call.session, order.order_id)
    if existing is not None:
        return _issued(existing, already_refunded=True)
    if args.amount > limit or args.amount <= 0:
        raise ToolError(
            403,
            "refund_over_policy",
            f"{format_amount(args.amount)} {order.currency} is over the policy's "
            f"{format_amount(limit)} for {order.order_id} ({rule}).",
            {"order_id": order.order_id, "max_amount": format_amount(limit), "rule": rule},
        )
    refund = Refund(
        refund_id=call.derived_id("RF"),
        order_id=order.order_id,
        idempotency_key=call.idempotency_key,
        amount=args.amount,
        currency=order.currency,
        approved_by=args.approved_by,
        approval_ticket_id=args.approval_ticket_id,
        created_at=call.now,
    )
    try:
        with call.session.begin_nested():
            call.session.add(refund)
            call.session.flush()
    except IntegrityError:
        # A writer that did not take the order's lock refunded it after our lookup (PostgreSQL).
        existing = _refund_of(call.session, order.order_id)
        if existing is None:
            raise
        return _issued(existing, already_refunded=True)
    return _issued(refund, already_refunded=False)


def _check_approval(session: Session, order: Order, args: IssueRefundArgs) -> None:
    """403 unless the named ticket approved a refund of this order, decided by `approved_by`."""
    ticket = session.get(ApprovalTicket, args.approval_ticket_id)
    subject = refund_subject(order.order_id)
    if ticket is None or ticket.subject != subject or ticket.status != "approved":
        raise ToolError(
            403,
            "approval_not_recorded",
            f"No approved ticket {args.approval_ticket_id!r} of {subject!r}: nothing approved this refund.",
            {"order_id": order.order_id, "approval_ticket_id": args.approval_ticket_id},
        )
    if ticket.decided_by != args.approved_by:
        raise ToolError(
            403,
            "approval_not_recorded",
            f"The ticket {ticket.ticket_id!r} was approved by {ticket.decided_by!r}, "
            f"not {args.approved_by!r}.",
            {"order_id": order.order_id, "decided_by": ticket.decided_by},
        )


def _issued(refund: Refund, *, already_refunded: bool) -> RefundIssued:
    return RefundIssued(
        refund_id=refund.refund_id,
        order_id=refund.order_id,
        amount=format_amount(refund.amount),
        currency=refund.currency,
        already_refunded=already_refunded,
    )


TOOLS: tuple[Tool[Any, Any], ...] = (
    Tool(
        name="get_order",
        description=(
            "Read an order: customer, item, total (a decimal string), currency, purchase date, refunded."
        ),
        side_effects=False,
        args_model=OrderArgs,
        result_model=OrderRecord,
        run=get_order,
    ),
    Tool(
        name="check_refund_policy",
        description=(
            "Whether the refund policy allows refunding this amount for the order today, the most it "
            "allows (max_amount) and the rule that decided."
        ),
        side_effects=False,
        args_model=PolicyArgs,
        result_model=PolicyVerdict,
        run=check_refund_policy,
    ),
    Tool(
        name="issue_refund",
        description=(
            "Pay a refund, once per order, within the policy, against the approved ticket of the "
            "refund (subject refund:{order_id}) decided by approved_by."
        ),
        side_effects=True,
        args_model=IssueRefundArgs,
        result_model=RefundIssued,
        run=issue_refund,
    ),
)

# (order id, customer, item, total, days before today it was bought)
DEMO_ORDERS: tuple[tuple[str, str, str, str, int], ...] = (
    ("ORD-1001", "c-ada", "Noise-cancelling headphones", "120.00", 10),
    ("ORD-1002", "c-grace", "Standing desk", "400.00", 45),
    ("ORD-1003", "c-alan", "Mechanical keyboard", "90.00", 90),
)


def seed(sessions: sessionmaker[Session]) -> None:
    """Insert the demo orders where missing (dated relative to today); safe at every start."""
    today = datetime.now(UTC).date()
    seed_where_missing(sessions, lambda session: _insert_missing(session, today))


def _insert_missing(session: Session, today: date) -> None:
    known = set(session.scalars(select(Order.order_id)))
    session.add_all(
        Order(
            order_id=order_id,
            customer=customer,
            item=item,
            total=Decimal(total),
            currency="USD",
            purchased_on=today - timedelta(days=days),
        )
        for order_id, customer, item, total, days in DEMO_ORDERS
        if order_id not in known
    )
