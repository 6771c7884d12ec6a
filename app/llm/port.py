"""The model port: one structured call, an agent's declared LLM task and its input to its output.

An agent declares each LLM step as an `LlmTask`: a name, an input and an output pydantic type,
the instructions and the prompt for a real model, and a deterministic offline behaviour. Every
model implements the one call `structured(task, request)`; only the output (our own small type)
is journaled, never the prompt or a provider's response object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, Field

from app.outage import Unreachable

InT = TypeVar("InT", bound=BaseModel)
OutT = TypeVar("OutT", bound=BaseModel)


class ModelOutputError(Exception):
    """The model answered, but not with a usable structured output (transient: Restate retries).

    Raised when the answer has no tool call for the task, was cut at `max_tokens`, fails the output
    type's validation, or fails the task's own `check` (e.g. a plan naming a tool not offered).
    """


class ModelUnavailableError(Unreachable):
    """The model a task is pinned to cannot be reached from this process now (transient: retried)."""


class UnknownToolError(ModelOutputError):
    """The output names a tool the request did not offer."""


@dataclass(frozen=True)
class LlmTask(Generic[InT, OutT]):
    """One LLM step of an agent, declared once: typed input and output, prompts, offline behaviour.

    `instructions` is the system prompt's task-specific part (the adapter adds the rule that data
    is never instructions, and how to answer); `prompt` renders the user message from the input,
    with `app.llm.prompting.section` for anything that is data. `offline` is what the offline
    model answers: deterministic, no network. `schema` may narrow the output schema for one request
    (e.g. to the tools offered); `check` may refuse an output that validates but cannot be used.
    """

    name: str
    input_type: type[InT]
    output_type: type[OutT]
    instructions: str
    prompt: Callable[[InT], str]
    offline: Callable[[InT], OutT]
    description: str = ""
    # The forced tool's name; default `submit_{name}`.
    tool: str = ""
    schema: Callable[[InT], dict[str, Any]] | None = None
    check: Callable[[InT, OutT], None] | None = None

    @property
    def tool_name(self) -> str:
        return self.tool or f"submit_{self.name}"


@dataclass(frozen=True)
class Answer(Generic[OutT]):
    """A model's structured output and the tokens it took, as the provider counted them (or, for
    the offline model, an estimate)."""

    output: OutT
    input_tokens: int
    output_tokens: int
    estimated: bool = False
    # Why the model stopped, and the provider's id of the response (None where there is none).
    finish_reason: str | None = None
    response_id: str | None = None


class Usage(BaseModel):
    """What one LLM step used, journaled with its result (a replay never counts it again): the
    tokens, and their cost at the price table in force when the call was made."""

    step: str = ""
    model: str
    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)
    # US dollars; None when the price table has no price for the model.
    cost_usd: Decimal | None = None
    # The offline model's estimate (about 4 characters a token), not a provider's count.
    estimated: bool = False
    # Why the model stopped ("tool_use", ...) and the provider's response id, for the call's span.
    finish_reason: str | None = None
    response_id: str | None = None


T = TypeVar("T")


@dataclass(frozen=True)
class Metered(Generic[T]):
    """A journaled step's value and what it used: the engine journals the value as the step's
    result and the usage beside it (app/runtime/engine.py, `Stamped.usage`)."""

    value: T
    usage: Usage


class LanguageModel(Protocol):
    """What the agents need from a model; `AnthropicModel` and `OfflineModel` implement it.

    `structured` raises `restate.TerminalError` for permanent failures (a request the provider will
    never accept) and any other exception for transient ones, which Restate retries.
    """

    @property
    def name(self) -> str: ...

    @property
    def offline(self) -> bool: ...

    async def structured(self, task: LlmTask[InT, OutT], request: InT) -> Answer[OutT]: ...
