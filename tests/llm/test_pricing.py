"""What model calls cost: the price table (defaults and MODEL_PRICES), the usage of one call,
and the offline model's estimate."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import BaseModel, ValidationError

from app.llm.port import Answer
from app.llm.pricing import usage_of
from app.settings import ModelPrice, Settings, parse_model_prices


class Count(BaseModel):
    letters: int


def test_a_call_costs_its_tokens_at_the_models_price() -> None:
    prices = {"m": ModelPrice(input=Decimal("3"), output=Decimal("15"))}
    usage = usage_of("m", Answer(output=Count(letters=1), input_tokens=1_000, output_tokens=200), prices)
    # 1,000 x $3 / 1M + 200 x $15 / 1M
    assert usage.cost_usd == Decimal("0.006")
    assert (usage.model, usage.input_tokens, usage.output_tokens, usage.estimated) == ("m", 1_000, 200, False)


def test_a_model_without_a_price_has_an_unknown_cost_not_a_free_one() -> None:
    usage = usage_of("unpriced", Answer(output=Count(letters=1), input_tokens=5, output_tokens=5), {})
    assert usage.cost_usd is None


def test_the_price_table_has_defaults_that_settings_override_and_extend() -> None:
    table = parse_model_prices(
        '{"claude-sonnet-4-5": {"input": 2, "output": 10}, "mine": {"input": "0.5", "output": 1}}'
    )
    assert table["claude-sonnet-4-5"] == ModelPrice(input=Decimal(2), output=Decimal(10))
    assert table["mine"].input == Decimal("0.5")
    assert table["offline"] == ModelPrice(input=Decimal(0), output=Decimal(0))
    assert parse_model_prices("")["claude-haiku-4-5"].output == Decimal(5)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "MODEL_PRICES is not JSON"),
        ('{"m": {"input": -1, "output": 1}}', "m.input"),
        ('{"m": {"input": 1}}', "m.output"),
        ('{"m": 3}', "per million tokens"),
    ],
)
def test_a_bad_price_table_is_refused_naming_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_model_prices(text)
    with pytest.raises(ValidationError, match="MODEL_PRICES"):
        Settings(_env_file=None, ENV="development", MODEL_PRICES=text)
