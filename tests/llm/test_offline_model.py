"""OfflineModel: answers any task with the task's own offline behaviour, validated like a real answer.

The agents' offline rules are tested with the agents (tests/agents/*/test_offline.py).
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import BaseModel, Field, ValidationError

from app.llm.offline_model import OfflineModel
from app.llm.port import LlmTask
from app.llm.pricing import usage_of
from app.settings import parse_model_prices

pytestmark = pytest.mark.anyio


class Word(BaseModel):
    text: str


class Count(BaseModel):
    letters: int = Field(ge=0)


def count_prompt(request: Word) -> str:
    return f"Count the letters of {request.text}."


def count_letters(request: Word) -> Count:
    return Count(letters=len(request.text))


def count_nonsense(request: Word) -> Count:
    return Count.model_construct(letters=-1)  # skips validation, as a buggy offline rule might


COUNT: LlmTask[Word, Count] = LlmTask(
    name="count",
    input_type=Word,
    output_type=Count,
    instructions="Count the letters.",
    prompt=count_prompt,
    offline=count_letters,
)


def test_identity() -> None:
    model = OfflineModel()
    assert model.name == "offline"
    assert model.offline is True


async def test_answers_with_the_tasks_offline_behaviour() -> None:
    assert (await OfflineModel().structured(COUNT, Word(text="restate"))).output == Count(letters=7)


async def test_an_offline_answer_that_is_not_a_valid_output_is_refused() -> None:
    broken = LlmTask(
        name="count",
        input_type=Word,
        output_type=Count,
        instructions="Count the letters.",
        prompt=count_prompt,
        offline=count_nonsense,
    )

    with pytest.raises(ValidationError):
        await OfflineModel().structured(broken, Word(text="restate"))


async def test_the_offline_model_estimates_its_tokens_and_costs_nothing() -> None:
    answer = await OfflineModel().structured(COUNT, Word(text="restate"))
    assert answer.estimated
    assert answer.input_tokens == (len(COUNT.instructions) + len(count_prompt(Word(text="restate")))) // 4
    assert answer.output_tokens == max(1, len('{"letters":7}') // 4)
    usage = usage_of(OfflineModel.NAME, answer, parse_model_prices(""))
    assert usage.cost_usd == Decimal(0) and usage.estimated
