"""What model calls cost: the price table of settings (`MODEL_PRICES`, US dollars per million
tokens per model), applied inside the journaled step, so a task's spend is what the prices were
when each call was made, whatever they are when it replays."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from app.llm.port import Answer, Usage
from app.settings import ModelPrice

PER_TOKENS = Decimal(1_000_000)


def usage_of(model: str, answer: Answer[Any], prices: Mapping[str, ModelPrice]) -> Usage:
    """The answer's tokens, priced; an unpriced model's cost is None (known unknown, not 0)."""
    price = prices.get(model)
    cost = None
    if price is not None:
        cost = (price.input * answer.input_tokens + price.output * answer.output_tokens) / PER_TOKENS
    return Usage(
        model=model,
        input_tokens=answer.input_tokens,
        output_tokens=answer.output_tokens,
        cost_usd=cost,
        estimated=answer.estimated,
        finish_reason=answer.finish_reason,
        response_id=answer.response_id,
    )
