"""The expense agent's pure rules: the receipt check and the auto-approval policy."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from app.agents.expense_report.models import Classification, ExpenseClaim, ExpensePolicy
from app.agents.expense_report.steps import auto_approvable, compare_receipt

CLAIM = ExpenseClaim(
    expense_id="EXP-1",
    employee_id="e-1",
    amount="94.20",
    currency="USD",
    date="2026-11-02",
    merchant="Yellow Cab Co",
    description="Taxi to the airport",
)
POLICY = ExpensePolicy(
    total_tolerance="0.05",
    auto_approve_max_amount="50.00",
    auto_approve_categories=["meals", "office_supplies"],
    auto_approve_min_confidence=0.8,
)


def reading(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "readable": True,
        "merchant": "Yellow Cab Co",
        "date": "2026-11-02",
        "total": "94.20",
        "consistent": True,
    }
    return {**base, **overrides}


def test_matching_receipt_passes() -> None:
    check = compare_receipt(CLAIM, reading(), Decimal("0.05"))
    assert check.problems == [] and check.total_matches and check.date_matches


def test_total_within_the_tolerance_matches() -> None:
    assert compare_receipt(CLAIM, reading(total="94.24"), Decimal("0.05")).problems == []


def test_total_beyond_the_tolerance_is_a_mismatch_naming_both_amounts() -> None:
    check = compare_receipt(CLAIM, reading(total="64.20"), Decimal("0.05"))
    assert check.problems == ["the receipt total 64.20 does not match the claimed 94.20 USD"]
    assert check.readable and not check.total_matches


def test_other_date_is_a_mismatch() -> None:
    check = compare_receipt(CLAIM, reading(date="2026-10-02"), Decimal("0.05"))
    assert check.problems == ["the receipt date 2026-10-02 does not match the claimed date 2026-11-02"]


def test_unread_date_is_not_held_against_the_claim() -> None:
    check = compare_receipt(CLAIM, reading(date=None), Decimal("0.05"))
    assert check.problems == [] and check.date_matches is None


UNREADABLE = [reading(readable=False, total=None), reading(total=None), reading(total="n/a")]


@pytest.mark.parametrize("bad", UNREADABLE)
def test_unreadable_receipt_is_refused(bad: dict[str, Any]) -> None:
    check = compare_receipt(CLAIM, bad, Decimal("0.05"))
    assert not check.readable
    assert check.problems[0].startswith("the receipt could not be read")


def classified(category: str, confidence: float) -> Classification:
    return Classification(category=category, confidence=confidence, rationale="r")


def claim(amount: str) -> ExpenseClaim:
    return CLAIM.model_copy(update={"amount": amount})


@pytest.mark.parametrize(
    ("amount", "category", "confidence", "auto"),
    [
        ("18.50", "meals", 0.9, True),
        ("50.00", "office_supplies", 0.8, True),
        ("50.01", "meals", 0.99, False),  # over the amount
        ("18.50", "travel", 0.99, False),  # not a low-risk category
        ("18.50", "meals", 0.79, False),  # not confident enough
    ],
)
def test_auto_approval_needs_small_amount_low_risk_category_and_confidence(
    amount: str, category: str, confidence: float, auto: bool
) -> None:
    assert auto_approvable(claim(amount), classified(category, confidence), POLICY) is auto
