"""The model port: the small pydantic types that cross the journal and the interface every model implements.

Only these types are journaled (results, never prompts or provider SDK objects), so a replay never
depends on a provider's response format and the journal stays small.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, get_args

from pydantic import BaseModel, ConfigDict, Field


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HistoryEvent(_Wire):
    """One item of a user's history, as the `lookup_user_history` tool returns it."""

    kind: str
    summary: str
    at: str


class UserContext(_Wire):
    user_id: str
    events: list[HistoryEvent] = Field(default_factory=list)


class ToolSpec(_Wire):
    """A tool as the tool service's catalog (`GET /tools`) describes it.

    Fields the catalog adds later are ignored, so the tool service can grow without breaking us.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    description: str
    side_effects: bool
    args_schema: dict[str, Any]


class AnalyzeInput(_Wire):
    task: str
    context: UserContext


class Analysis(_Wire):
    summary: str = Field(description="One or two sentences: what the user wants.")
    intent: str = Field(description="A short snake_case label for the kind of request.")
    risks: list[str] = Field(default_factory=list, description="What could go wrong, if anything.")


class PlanInput(_Wire):
    task: str
    context: UserContext
    analysis: Analysis
    tools: list[ToolSpec]


class PlannedCall(_Wire):
    tool: str = Field(description="The name of a tool from the catalog.")
    args: dict[str, Any] = Field(description="Arguments matching the tool's args_schema.")
    reason: str = Field(description="Why this call serves the task.")


class Plan(_Wire):
    steps: list[PlannedCall] = Field(default_factory=list, max_length=10)


class ExecutedCall(_Wire):
    tool: str
    args: dict[str, Any]
    result: dict[str, Any]
    idempotency_key: str | None = Field(None, description="The key the call was made under.")


class VerifyInput(_Wire):
    task: str
    plan: Plan
    results: list[ExecutedCall]


class Verification(_Wire):
    success: bool = Field(description="True only if the results accomplish the task.")
    reason: str = Field(description="Why the task is or is not accomplished.")


ExpenseCategory = Literal["travel", "meals", "lodging", "software", "office_supplies", "training", "other"]
EXPENSE_CATEGORIES: tuple[str, ...] = get_args(ExpenseCategory)


class ClassifyInput(_Wire):
    """An expense to classify: the claim and what the receipt says (OCR)."""

    merchant: str
    description: str
    amount: str
    currency: str
    receipt_merchant: str | None = None


class Classification(_Wire):
    category: ExpenseCategory = Field(description="The spend category, from the fixed list.")
    confidence: float = Field(ge=0.0, le=1.0, description="How sure the classification is, 0 to 1.")
    rationale: str = Field(description="One sentence: why this category.")


class LanguageModel(Protocol):
    """What the agents need from a model; `AnthropicModel` and `OfflineModel` implement it.

    Methods raise `restate.TerminalError` for permanent failures (a request the provider will never
    accept) and any other exception for transient ones, which Restate retries.
    """

    @property
    def name(self) -> str: ...

    @property
    def offline(self) -> bool: ...

    async def analyze(self, request: AnalyzeInput) -> Analysis: ...

    async def plan(self, request: PlanInput) -> Plan: ...

    async def verify(self, request: VerifyInput) -> Verification: ...

    async def classify(self, request: ClassifyInput) -> Classification: ...
