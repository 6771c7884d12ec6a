"""What a task may spend, what it has spent, and the budget gate that stops it in between.

Each agent declares default limits (tokens, cost, tool calls, wall-clock time); a task's input
may lower them (`"budget": {...}` beside the agent's own fields), never raise them. Before every
LLM or tool step the engine checks the task's spend, as journaled, against its limits; a step that
would go over them never starts: the task moves to the declared `BUDGET` state, a gate that asks
a human to extend the budget (the task resumes the state it was stopped in) or to stop it (FAILED,
`budget_stopped`). Spend is added up from journaled usage, so a replay or a crash never counts
it twice, and the check sees exactly what was spent.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.llm import Usage
from app.runtime.machine import BUDGET as BUDGET_STATE

__all__ = ["BUDGET_STATE", "Budget", "BudgetExceeded", "BudgetStop", "Limit", "Spend"]

Limit = Literal["tokens", "cost", "tool_calls", "seconds"]


class Spend(BaseModel):
    """What a task has used so far: its model calls' tokens and cost, and its tool calls (the
    gate's own calls, to ask and to close, are not the task's work and are not counted)."""

    llm_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal("0")
    # Model calls the price table had no price for: their cost is not in cost_usd.
    unpriced_calls: int = 0
    tool_calls: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def plus(self, usage: Sequence[Usage], tool_calls: int) -> Spend:
        if not usage and not tool_calls:
            return self
        return Spend(
            llm_calls=self.llm_calls + len(usage),
            input_tokens=self.input_tokens + sum(u.input_tokens for u in usage),
            output_tokens=self.output_tokens + sum(u.output_tokens for u in usage),
            cost_usd=self.cost_usd + sum((u.cost_usd for u in usage if u.cost_usd is not None), Decimal("0")),
            unpriced_calls=self.unpriced_calls + sum(1 for u in usage if u.cost_usd is None),
            tool_calls=self.tool_calls + tool_calls,
        )


class Budget(BaseModel):
    """A task's limits; None is no limit."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(None, ge=0, description="input + output tokens of every model call")
    max_cost_usd: Decimal | None = Field(None, ge=0, description="US dollars at the price table")
    max_tool_calls: int | None = Field(None, ge=0, description="tool calls of the task's own steps")
    max_seconds: float | None = Field(None, gt=0, description="wall-clock time since the task was created")

    def lowered_by(self, asked: Budget | None) -> Budget:
        """These limits, lowered by a task's input wherever it asks for less (never raised)."""
        if asked is None:
            return self
        merged = {}
        for name in type(self).model_fields:
            mine, theirs = getattr(self, name), getattr(asked, name)
            merged[name] = theirs if mine is None else mine if theirs is None else min(mine, theirs)
        return Budget(**merged)

    def reached(self, spend: Spend, elapsed: float, next_step: Literal["llm", "tool"]) -> Limit | None:
        """The limit the next step would go over, if any: a tool call past the last allowed one;
        a model call once the tokens or cost are used up (what a call will use is known only
        after it); any step once the time is up."""
        if self.max_seconds is not None and elapsed >= self.max_seconds:
            return "seconds"
        if (
            next_step == "tool"
            and self.max_tool_calls is not None
            and spend.tool_calls >= self.max_tool_calls
        ):
            return "tool_calls"
        if next_step == "llm":
            if self.max_tokens is not None and spend.tokens >= self.max_tokens:
                return "tokens"
            if self.max_cost_usd is not None and spend.cost_usd >= self.max_cost_usd:
                return "cost"
        return None

    def extended(self, limit: Limit, spend: Spend, elapsed: float) -> Budget:
        """The budget a human's "extend" gives: the limit that was reached, doubled (at least
        twice what is spent of it, and never less than one more step); time, see below."""
        if limit == "tool_calls":
            return self.model_copy(
                update={"max_tool_calls": max(2 * (self.max_tool_calls or 0), spend.tool_calls + 1)}
            )
        if limit == "tokens":
            return self.model_copy(
                update={"max_tokens": max(2 * (self.max_tokens or 0), 2 * spend.tokens, 1)}
            )
        if limit == "cost":
            floor = Decimal("0.01")
            return self.model_copy(
                update={"max_cost_usd": max(2 * (self.max_cost_usd or 0), 2 * spend.cost_usd, floor)}
            )
        # Time: as much again as the limit, from the moment of the decision (a human may take
        # longer to decide than the task had).
        return self.model_copy(update={"max_seconds": elapsed + (self.max_seconds or 60.0)})

    def describe(self, limit: Limit, spend: Spend, elapsed: float) -> str:
        if limit == "tool_calls":
            return f"{spend.tool_calls} of {self.max_tool_calls} tool calls made"
        if limit == "tokens":
            return f"{spend.tokens:,} of {self.max_tokens:,} tokens used"
        if limit == "cost":
            return f"${spend.cost_usd} of ${self.max_cost_usd} spent"
        return f"{elapsed:.0f} of {self.max_seconds:.0f} seconds gone"


class BudgetStop(BaseModel):
    """Where a task was stopped by its budget, and why: the state the gate's "extend" resumes."""

    state: str
    limit: Limit
    reason: str


class BudgetExceeded(BaseException):
    """Raised before a step that would go over the budget. A BaseException, so an agent's own
    `except Exception` in a step never swallows it; the engine turns it into the gate."""

    def __init__(self, limit: Limit, reason: str) -> None:
        super().__init__(reason)
        self.limit = limit
        self.reason = reason
