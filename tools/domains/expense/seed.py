"""Demo expenses, submitted through a running tool service's real `POST /expenses`.

    python -m tools.domains.expense.seed --url http://127.0.0.1:9090

(with the expense surfaces' credential in $EXPENSES_API_TOKEN; without it, the development
token, which only a service with ENV=development accepts) prints one JSON line per expense
(`expense_id`, `label`, `amount`, `merchant`). Four samples cover the ExpenseReport agent's
paths: a small lunch (auto-approved), a hotel stay and a flight (approval needed), and a taxi
ride claimed at 94.20 whose receipt, correctly printed, says 64.20 (VERIFY must catch it).
Everything but the dates is fixed, so OCR reads the same every run. The dates are days before
today (UTC, as of the import of this module), because the service refuses a claim older than
EXPENSE_MAX_AGE_DAYS; each submission carries an Idempotency-Key made of its label and its date,
so seeding twice on one day creates nothing new.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import httpx

from tools.domains.expense.expenses import Category
from tools.domains.expense.receipts import receipt_totals, render_receipt
from tools.service.money import format_amount
from tools.service.settings import DEV_EXPENSES_API_TOKEN

DEFAULT_URL = "http://127.0.0.1:9090"
# Versioned: if a sample's content ever changes, its new submission gets a new key instead of a
# 422 for reusing the old one.
SEED_KEY_PREFIX = "seed-v1:"


def days_ago(days: int) -> dt.date:
    """The UTC date `days` before today (the service measures a claim's age in UTC too)."""
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)


@dataclass(frozen=True)
class SampleExpense:
    """A claim and the receipt behind it."""

    label: str
    employee_id: str
    merchant: str
    address: str
    date: dt.date
    items: tuple[tuple[str, Decimal], ...]
    tax_rate: Decimal
    # What the employee claims; equal to the receipt's total except in the mismatch sample.
    claimed_amount: Decimal
    # The category a sensible classifier picks (the agent's LLM decides; tests compare).
    category: Category
    description: str
    currency: str = "USD"

    @property
    def idempotency_key(self) -> str:
        # With the date: a sample submitted on another day is another claim (another receipt).
        return f"{self.date.isoformat()}:{self.label}"

    @property
    def receipt_total(self) -> Decimal:
        return receipt_totals(self.items, self.tax_rate)[2]

    def receipt(self) -> bytes:
        return render_receipt(self.merchant, self.date, list(self.items), self.tax_rate, address=self.address)


SAMPLES: tuple[SampleExpense, ...] = (
    SampleExpense(
        label="small-lunch",
        employee_id="u-1",
        merchant="Blue Bottle Cafe",
        address="300 Webster St, Oakland CA",
        date=days_ago(27),
        items=(("Avocado toast", Decimal("11.50")), ("Cold brew coffee", Decimal("5.55"))),
        tax_rate=Decimal("0.085"),
        claimed_amount=Decimal("18.50"),
        category="meals",
        description="Working lunch with a customer (Acme Corp) after the quarterly review.",
    ),
    SampleExpense(
        label="hotel-stay",
        employee_id="u-2",
        merchant="Hilton Garden Inn",
        address="1 Congress St, Boston MA",
        date=days_ago(31),
        items=(("King room, 2 nights", Decimal("330.00")), ("Parking, 2 days", Decimal("45.00"))),
        tax_rate=Decimal("0.12"),
        claimed_amount=Decimal("420.00"),
        category="lodging",
        description="Hotel stay, two nights in Boston for the customer visit at Acme Corp.",
    ),
    SampleExpense(
        label="conference-flight",
        employee_id="u-2",
        merchant="Lufthansa",
        address="Venloer Str. 151, Cologne",
        date=days_ago(8),
        items=(("Flight FRA-SFO, economy", Decimal("815.00")), ("Seat reservation", Decimal("60.00"))),
        tax_rate=Decimal("0.12"),
        claimed_amount=Decimal("980.00"),
        category="travel",
        description="Flight to the PyData conference in San Francisco, where I am a speaker.",
    ),
    SampleExpense(
        label="mismatch-taxi",
        employee_id="u-1",
        merchant="Yellow Cab Co",
        address="1200 W Lake St, Chicago IL",
        date=days_ago(29),
        items=(
            ("Metered fare", Decimal("52.70")),
            ("Airport surcharge", Decimal("5.50")),
            ("Tip", Decimal("6.00")),
        ),
        tax_rate=Decimal("0"),
        claimed_amount=Decimal("94.20"),  # the receipt says 64.20
        category="travel",
        description="Taxi from O'Hare airport to the customer's office.",
    ),
)


@dataclass(frozen=True)
class SeededExpense:
    """A sample as the service stored it."""

    expense_id: str
    label: str
    amount: str
    merchant: str
    category: Category
    receipt_total: str
    date: dt.date


class SeedError(Exception):
    """The service refused a sample."""


def submit_sample(
    client: httpx.Client, sample: SampleExpense, idempotency_key: str, receipt: bytes | None = None
) -> str:
    """Submit one sample as an employee would (`POST /expenses`, its rendered receipt attached, or
    `receipt` if given); returns the stored expense's id."""
    response = client.post(
        "/expenses",
        data={
            "employee_id": sample.employee_id,
            "amount": format_amount(sample.claimed_amount),
            "currency": sample.currency,
            "date": sample.date.isoformat(),
            "merchant": sample.merchant,
            "description": sample.description,
        },
        files={"receipt": (f"{sample.label}.png", receipt or sample.receipt(), "image/png")},
        headers={"Idempotency-Key": idempotency_key},
    )
    if response.status_code not in (200, 201):
        raise SeedError(
            f"POST /expenses for {sample.label!r} answered {response.status_code}: {response.text}"
        )
    expense_id: str = response.json()["expense_id"]
    return expense_id


def seed_expenses(client: httpx.Client, batch: str = "") -> list[SeededExpense]:
    """Submit every sample through `client` (base URL: the tool service); idempotent per `batch`.

    The same batch yields the same expenses again; another batch (a test's own) yields new ones.
    """
    seeded: list[SeededExpense] = []
    for sample in SAMPLES:
        key = f"{SEED_KEY_PREFIX}{batch}{':' if batch else ''}{sample.idempotency_key}"
        seeded.append(
            SeededExpense(
                expense_id=submit_sample(client, sample, key),
                label=sample.label,
                amount=format_amount(sample.claimed_amount),
                merchant=sample.merchant,
                category=sample.category,
                receipt_total=format_amount(sample.receipt_total),
                date=sample.date,
            )
        )
    return seeded


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.domains.expense.seed",
        description="Submit the demo expenses to a running tool service.",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("TOOLS_URL", DEFAULT_URL),
        help=f"the tool service (default: $TOOLS_URL or {DEFAULT_URL})",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default: 30)")
    options = parser.parse_args(argv)
    # From the environment, never the command line (which every local user can read).
    token = os.environ.get("EXPENSES_API_TOKEN") or DEV_EXPENSES_API_TOKEN
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=options.url, timeout=options.timeout, headers=headers) as client:
            seeded = seed_expenses(client)
    except (httpx.HTTPError, SeedError) as exc:
        sys.stderr.write(f"seeding {options.url} failed: {exc}\n")
        return 1
    for expense in seeded:
        line = {
            "expense_id": expense.expense_id,
            "label": expense.label,
            "amount": expense.amount,
            "merchant": expense.merchant,
        }
        sys.stdout.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
