"""ExpenseReport's offline behaviour: keyword rules for the classification, deterministic."""

from __future__ import annotations

import re

from app.agents.expense_report.models import Classification, ClassifyInput, ExpenseCategory

_WORD = re.compile(r"[a-z0-9]+")

# Classification keywords, matched as whole words of the merchant, the receipt's merchant and the
# description. One category with two or more hits is confident; one hit less so; a tie or no hit
# goes to a human (low confidence).
_CATEGORY_WORDS: tuple[tuple[ExpenseCategory, frozenset[str]], ...] = (
    (
        "travel",
        frozenset({"flight", "airline", "airlines", "lufthansa", "taxi", "cab", "uber", "train", "airport"}),
    ),
    ("lodging", frozenset({"hotel", "inn", "motel", "lodging", "airbnb", "hostel", "stay"})),
    ("meals", frozenset({"lunch", "dinner", "breakfast", "cafe", "restaurant", "coffee", "meal", "bistro"})),
    ("software", frozenset({"software", "license", "licence", "subscription", "saas", "cloud"})),
    ("office_supplies", frozenset({"paper", "toner", "printer", "stationery", "supplies", "pens"})),
    ("training", frozenset({"course", "training", "workshop", "certification", "seminar"})),
)


def classify(request: ClassifyInput) -> Classification:
    """The category with the most keyword hits; confident with two or more, a human's call on a tie."""
    text = " ".join([request.merchant, request.receipt_merchant or "", request.description]).lower()
    words = set(_WORD.findall(text))
    hits = [(category, len(words & keys)) for category, keys in _CATEGORY_WORDS if words & keys]
    if not hits:
        return Classification(category="other", confidence=0.3, rationale="no category keyword matched")
    best = max(count for _, count in hits)
    leaders = [category for category, count in hits if count == best]
    if len(leaders) > 1:
        return Classification(
            category=leaders[0],
            confidence=0.5,
            rationale=f"keywords of several categories matched equally: {', '.join(leaders)}",
        )
    confidence = 0.9 if best >= 2 else 0.75
    return Classification(
        category=leaders[0],
        confidence=confidence,
        rationale=f"{best} {leaders[0]} keyword(s) in the merchant or description",
    )
