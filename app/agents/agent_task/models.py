"""AgentTask's input, its task data and the typed input and output of each of its LLM tasks."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.runtime.tool_client import ToolSpec


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunAgentTask(BaseModel):
    """The `run` handler's input."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    user_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.@:-]+$")
    task: str = Field(min_length=1, max_length=4000)


class HistoryEvent(_Wire):
    """One item of a user's history, as the `lookup_user_history` tool returns it."""

    kind: str
    summary: str
    at: str


class UserContext(_Wire):
    user_id: str
    events: list[HistoryEvent] = Field(default_factory=list)


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
    # Plans that were executed and failed verification, oldest first: what the new plan must fix.
    earlier_attempts: list[Attempt] = Field(default_factory=list)


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


class Attempt(_Wire):
    """A plan that was executed and failed its verification, kept for the next plan and the audit."""

    plan: Plan
    executed: list[ExecutedCall]
    verification: Verification


class ReplanPolicy(BaseModel):
    """How often a failed verification may send the task back to PLAN (read once, journaled)."""

    max_replans: int


PlanInput.model_rebuild()


class AgentTaskData(BaseModel):
    """What the task has learnt and done so far; small, our own types only."""

    user_id: str
    task: str
    context: UserContext | None = None
    analysis: Analysis | None = None
    plan: Plan | None = None
    side_effect_tools: list[str] = Field(default_factory=list)
    executed: list[ExecutedCall] = Field(default_factory=list)
    verification: Verification | None = None
    attempts: list[Attempt] = Field(default_factory=list)
