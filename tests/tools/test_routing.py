"""The routing policy (approver directory and rules in tables) and `route_expense`, on SQLite
and PostgreSQL."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from tests.tools.calls import call_tool, count_rows, new_expense
from tools.domains.expense.expenses import CATEGORIES
from tools.domains.expense.routing import DEFAULT_RULES, Approver, RoutingRule, matching_rule
from tools.service.idempotency import IdempotencyKey


def _session(client) -> Session:
    return Session(client.app.state.engine)


# (category, amount, currency) -> (approver, escalation approver, rule)
POLICY_TABLE = [
    ("meals", "18.50", "USD", "team-lead", "finance-manager", "meals-up-to-200"),
    ("meals", "200.00", "USD", "team-lead", "finance-manager", "meals-up-to-200"),
    ("meals", "200.01", "USD", "finance-director", "cfo", "over-category-limit"),
    ("travel", "980.00", "USD", "travel-manager", "finance-director", "travel-up-to-1000"),
    ("travel", "1000.00", "USD", "travel-manager", "finance-director", "travel-up-to-1000"),
    ("travel", "1000.01", "USD", "finance-director", "cfo", "over-category-limit"),
    ("lodging", "420.00", "USD", "travel-manager", "finance-director", "lodging-up-to-1000"),
    ("lodging", "2500.00", "USD", "finance-director", "cfo", "over-category-limit"),
    ("software", "1999.99", "USD", "it-manager", "finance-director", "software-up-to-2000"),
    ("training", "2000.00", "USD", "it-manager", "finance-director", "training-up-to-2000"),
    ("training", "2000.01", "USD", "finance-director", "cfo", "over-category-limit"),
    ("office_supplies", "500.00", "USD", "office-manager", "finance-manager", "office-supplies-up-to-500"),
    ("office_supplies", "500.01", "USD", "finance-director", "cfo", "over-category-limit"),
    ("other", "75.00", "USD", "finance-manager", "finance-director", "other-up-to-1000"),
    ("other", "1000.01", "USD", "finance-director", "cfo", "over-category-limit"),
    ("software", "10000.00", "USD", "finance-director", "cfo", "over-category-limit"),
    ("software", "10000.01", "USD", "cfo", None, "over-10000"),
    ("meals", "1000000.00", "USD", "cfo", None, "over-10000"),
    ("meals", "18.50", "EUR", "finance-director", "cfo", "other-currency"),
    ("travel", "50000.00", "JPY", "finance-director", "cfo", "other-currency"),
]


def test_the_policy_routes_each_category_and_amount(client):
    with _session(client) as session:
        for category, amount, currency, approver, escalation, rule_name in POLICY_TABLE:
            rule = matching_rule(session, category, Decimal(amount), currency)

            assert rule is not None, (category, amount, currency)
            assert (rule.approver, rule.escalation_approver, rule.rule) == (
                approver,
                escalation,
                rule_name,
            ), (
                category,
                amount,
                currency,
            )


def test_every_category_has_its_own_rule_and_every_approver_is_in_the_directory(client):
    with _session(client) as session:
        rules = list(session.scalars(select(RoutingRule)))
        approvers = set(session.scalars(select(Approver.name)))

    assert {rule.category for rule in rules} == {*CATEGORIES, "*"}
    assert len(rules) == len(DEFAULT_RULES)
    assert {rule.approver for rule in rules} | {rule.escalation_approver for rule in rules} - {
        None
    } <= approvers


@pytest.mark.parametrize(
    ("category", "amount", "expected"),
    [
        (
            "meals",
            "18.50",
            {"approvers": ["team-lead"], "escalation_approver": "finance-manager", "rule": "meals-up-to-200"},
        ),
        (
            "lodging",
            "420.00",
            {
                "approvers": ["travel-manager"],
                "escalation_approver": "finance-director",
                "rule": "lodging-up-to-1000",
            },
        ),
        ("other", "12000.00", {"approvers": ["cfo"], "escalation_approver": None, "rule": "over-10000"}),
    ],
)
def test_route_expense_answers_approvers_escalation_and_rule(client, category, amount, expected):
    expense_id = new_expense(client, amount)

    response = call_tool(
        client,
        "route_expense",
        {"expense_id": expense_id, "category": category, "amount": amount, "currency": "USD"},
        f"t:ROUTE.0:{category}",
    )

    assert response.status_code == 200, response.text
    assert response.json() == expected


def test_route_expense_routes_the_claim_not_another_amount(client):
    expense_id = new_expense(client, "2500.00")

    # A smaller amount would reach a cheaper approver: refused.
    response = call_tool(
        client,
        "route_expense",
        {"expense_id": expense_id, "category": "travel", "amount": "25.00", "currency": "USD"},
        "k-route-less",
    )

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "amount_mismatch"
    assert error["details"]["claimed"] == {"amount": "2500.00", "currency": "USD"}


@pytest.mark.parametrize(
    ("body", "status_code", "code"),
    [
        ({"category": "gifts"}, 422, "validation_error"),
        ({"amount": 18.5}, 422, "validation_error"),
        ({"amount": "18.505"}, 422, "validation_error"),
        ({"currency": "usd"}, 422, "validation_error"),
        ({"expense_id": "EXP-0123456789ab"}, 404, "unknown_expense"),
        ({"currency": "EUR"}, 422, "amount_mismatch"),
    ],
)
def test_route_expense_refusals(client, body, status_code, code):
    expense_id = new_expense(client)
    args = {"expense_id": expense_id, "category": "meals", "amount": "18.50", "currency": "USD", **body}

    response = call_tool(client, "route_expense", args, "k-route-bad")

    assert response.status_code == status_code, response.text
    assert response.json()["error"]["code"] == code


def test_an_amount_sent_as_a_number_is_refused_with_a_clear_message(client):
    args = {"expense_id": new_expense(client), "category": "meals", "amount": 18.5, "currency": "USD"}

    error = call_tool(client, "route_expense", args, "k-route-number").json()["error"]

    assert error["details"][0]["loc"] == ["amount"]
    assert "decimal string" in error["details"][0]["msg"]


def test_a_policy_without_a_catch_all_is_a_500_that_stores_nothing(client):
    expense_id = new_expense(client, "50000.00")
    with _session(client) as session, session.begin():
        session.execute(delete(RoutingRule).where(RoutingRule.category == "*"))
    args = {"expense_id": expense_id, "category": "meals", "amount": "50000.00", "currency": "USD"}

    response = call_tool(client, "route_expense", args, "k-route-no-rule")

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "no_routing_rule"
    assert "catch-all" in response.json()["error"]["message"]
    assert count_rows(client, IdempotencyKey, key="k-route-no-rule") == 0


def test_a_restart_keeps_the_operators_policy(make_client):
    client = make_client()
    with _session(client) as session, session.begin():
        session.execute(
            update(RoutingRule).where(RoutingRule.rule == "meals-up-to-200").values(max_amount=Decimal("50"))
        )
        session.execute(delete(RoutingRule).where(RoutingRule.rule == "training-up-to-2000"))

    restarted = make_client()  # seeds again at startup

    assert count_rows(restarted, RoutingRule) == len(DEFAULT_RULES) - 1
    with _session(restarted) as session:
        assert matching_rule(session, "meals", Decimal("60"), "USD").rule == "over-category-limit"  # type: ignore[union-attr]
        assert matching_rule(session, "training", Decimal("60"), "USD").rule == "over-category-limit"  # type: ignore[union-attr]
    assert count_rows(restarted, Approver) == 7
