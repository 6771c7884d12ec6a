"""Routing: who approves an expense, from an approver directory and a policy kept in tables.

The policy is data an operator can change without a deploy (`routing_rules`), not code: the rules
that could apply to an expense (its category's and the catch-all "*" ones) are tried in priority
order, lowest first, and the first whose limit the amount fits decides. A limit is in the rule's
currency; a rule without a limit applies to any amount, and one without a currency to any
currency (there are no exchange rates here, so other currencies go to finance).

The defaults are seeded at startup into an empty policy only: once the table has rules, they are
the operator's, and a rule they deleted or edited stays that way across restarts.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Numeric, String, func, or_, select
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from tools.domains.expense.expenses import (
    Category,
    ExpenseId,
    check_claim,
    find_expense,
)
from tools.service.db import Base, seed_where_missing
from tools.service.definition import Tool, ToolArgs, ToolCall, ToolFailure, ToolResult
from tools.service.money import Amount, Currency

ANY_CATEGORY = "*"
APPROVER_MAX_LENGTH = 128


class Approver(Base):
    __tablename__ = "approvers"

    name: Mapped[str] = mapped_column(String(APPROVER_MAX_LENGTH), primary_key=True)
    role: Mapped[str] = mapped_column(String(200))


class RoutingRule(Base):
    __tablename__ = "routing_rules"
    __table_args__ = (
        # A limit without a currency would compare yen with dollars.
        CheckConstraint("max_amount IS NULL OR currency IS NOT NULL", name="ck_routing_rules_limit_currency"),
    )

    # The rule's name, shown in the routing answer so an approver can see why it was asked.
    rule: Mapped[str] = mapped_column(String(64), primary_key=True)
    # A category, or "*" for every category.
    category: Mapped[str] = mapped_column(String(32))
    # The currency of max_amount; NULL: the rule applies to every currency.
    currency: Mapped[str | None] = mapped_column(String(3))
    # The largest amount the rule covers; NULL: no limit.
    max_amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    approver: Mapped[str] = mapped_column(ForeignKey("approvers.name"))
    escalation_approver: Mapped[str | None] = mapped_column(ForeignKey("approvers.name"))
    priority: Mapped[int]


class RouteExpenseArgs(ToolArgs):
    expense_id: ExpenseId
    category: Category
    amount: Amount
    currency: Currency


class ExpenseRoute(ToolResult):
    approvers: list[str]
    # Reminded before the deadline, and allowed to decide after the reminder; None: nobody.
    escalation_approver: str | None
    rule: str


def route_expense(call: ToolCall, args: RouteExpenseArgs) -> ExpenseRoute:
    # Routed on the claim as recorded: an amount that shrank on its way through the agent must
    # not reach a cheaper approver.
    check_claim(find_expense(call.session, args.expense_id), args.amount, args.currency)
    rule = matching_rule(call.session, args.category, args.amount, args.currency)
    if rule is None:
        # The policy is broken, not the request: a 500, so the agent retries once it is fixed,
        # and nothing is stored under the key.
        raise ToolFailure(
            "no_routing_rule",
            f"No routing rule covers {args.category} at {args.amount} {args.currency}; "
            f"the routing_rules table needs a catch-all rule (category {ANY_CATEGORY!r}, no limit).",
        )
    return ExpenseRoute(
        approvers=[rule.approver], escalation_approver=rule.escalation_approver, rule=rule.rule
    )


def matching_rule(session: Session, category: str, amount: Decimal, currency: str) -> RoutingRule | None:
    """The first rule, by priority then name, that covers this category, amount and currency."""
    candidates = session.scalars(
        select(RoutingRule)
        .where(RoutingRule.category.in_([category, ANY_CATEGORY]))
        .where(or_(RoutingRule.currency.is_(None), RoutingRule.currency == currency))
        .order_by(RoutingRule.priority, RoutingRule.rule)
    )
    for rule in candidates:
        if rule.max_amount is None or amount <= rule.max_amount:
            return rule
    return None


TOOLS: tuple[Tool[Any, Any], ...] = (
    Tool(
        name="route_expense",
        description=(
            "Who must approve an expense of this category and amount (the claim's), per the routing "
            "policy: the approvers, an escalation approver (or null) and the rule that decided."
        ),
        side_effects=False,
        args_model=RouteExpenseArgs,
        result_model=ExpenseRoute,
        run=route_expense,
    ),
)


# --- the default directory and policy -------------------------------------------------------

DEFAULT_APPROVERS: tuple[tuple[str, str], ...] = (
    ("team-lead", "Team lead"),
    ("travel-manager", "Travel manager"),
    ("it-manager", "IT manager"),
    ("office-manager", "Office manager"),
    ("finance-manager", "Finance manager"),
    ("finance-director", "Finance director"),
    ("cfo", "Chief financial officer"),
)

# (rule, category, currency, max_amount, approver, escalation_approver, priority)
DEFAULT_RULES: tuple[tuple[str, str, str | None, Decimal | None, str, str | None, int], ...] = (
    ("travel-up-to-1000", "travel", "USD", Decimal("1000"), "travel-manager", "finance-director", 100),
    ("lodging-up-to-1000", "lodging", "USD", Decimal("1000"), "travel-manager", "finance-director", 100),
    ("meals-up-to-200", "meals", "USD", Decimal("200"), "team-lead", "finance-manager", 100),
    ("software-up-to-2000", "software", "USD", Decimal("2000"), "it-manager", "finance-director", 100),
    ("training-up-to-2000", "training", "USD", Decimal("2000"), "it-manager", "finance-director", 100),
    (
        "office-supplies-up-to-500",
        "office_supplies",
        "USD",
        Decimal("500"),
        "office-manager",
        "finance-manager",
        100,
    ),
    ("other-up-to-1000", "other", "USD", Decimal("1000"), "finance-manager", "finance-director", 100),
    # Above its category's limit, up to 10,000.
    ("over-category-limit", ANY_CATEGORY, "USD", Decimal("10000"), "finance-director", "cfo", 900),
    ("over-10000", ANY_CATEGORY, "USD", None, "cfo", None, 950),
    # No exchange rates here: another currency is for finance to convert and judge.
    ("other-currency", ANY_CATEGORY, None, None, "finance-director", "cfo", 990),
)


def _insert_missing_policy(session: Session) -> None:
    # Directory entries are harmless to restore, and the default rules reference them.
    known_approvers = set(session.scalars(select(Approver.name)))
    session.add_all(
        Approver(name=name, role=role) for name, role in DEFAULT_APPROVERS if name not in known_approvers
    )
    session.flush()
    if session.scalar(select(func.count()).select_from(RoutingRule)):
        return
    session.add_all(
        RoutingRule(
            rule=rule,
            category=category,
            currency=currency,
            max_amount=max_amount,
            approver=approver,
            escalation_approver=escalation,
            priority=priority,
        )
        for rule, category, currency, max_amount, approver, escalation, priority in DEFAULT_RULES
    )


def seed_routing_policy(sessions: sessionmaker[Session]) -> None:
    """Insert missing default approvers, and the default rules into an empty policy; safe to call
    at every start."""
    seed_where_missing(sessions, _insert_missing_policy)
