"""Money at the tool service's boundary: amounts as decimal strings, never floats, and currencies."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated

from pydantic import Field, PlainSerializer, PlainValidator, WithJsonSchema

CURRENCY_PATTERN = r"^[A-Z]{3}$"
# Digits, at most two decimals: no exponent, sign, NaN or thousands separator to misread.
AMOUNT_PATTERN = r"^(0|[1-9][0-9]{0,6})(\.[0-9]{1,2})?$"
MAX_AMOUNT = Decimal("1000000")
CENT = Decimal("0.01")


def format_amount(amount: Decimal) -> str:
    """An amount as the API shows it: a string with exactly two decimals ("18.50")."""
    return f"{amount.quantize(CENT):f}"


def _to_amount(value: object) -> Decimal:
    # A string, never a JSON number: a float cannot even hold 0.10, and money must not drift.
    if not isinstance(value, str):
        raise ValueError('must be a decimal string such as "12.34", not a number')
    if not re.fullmatch(AMOUNT_PATTERN, value):
        raise ValueError('must be a decimal string with at most two decimals, such as "12.34"')
    amount = Decimal(value).quantize(CENT)
    if amount <= 0:
        raise ValueError("must be greater than 0")
    if amount > MAX_AMOUNT:
        raise ValueError(f"must be at most {MAX_AMOUNT}")
    return amount


Amount = Annotated[
    Decimal,
    PlainValidator(_to_amount),
    PlainSerializer(format_amount, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": AMOUNT_PATTERN, "examples": ["18.50"]}),
]
Currency = Annotated[str, Field(pattern=CURRENCY_PATTERN, description="ISO 4217 code, e.g. USD")]
