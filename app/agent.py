"""The public API for writing an agent: one declaration, from which the runtime builds the rest.

An agent is one folder under `app/agents/` (or any module named in `AGENT_MODULES`) whose package
exposes `AGENT = Agent(...)`: its machine, its input and data models, a step function per working
state, the approval content of each gate, the tools it may use, and its LLM tasks. The virtual
object and its `run` / `status` / `decide` handlers are generated here, and registration is
derived (app/agents/__init__.py): the service, the webhook, `agentctl`, the diagrams and the inbox
know every registered agent. docs/writing-an-agent.md walks through one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar

import restate
from pydantic import BaseModel
from restate import ObjectContext, ObjectSharedContext, TerminalError
from restate.serde import BytesSerde

from app.gates.deciding import decide_with_proof
from app.gates.models import ApprovalRequest, GateReply, ProvenDecision
from app.llm import LlmTask
from app.runtime.budget import Budget
from app.runtime.engine import (
    AgentEngine,
    ApprovalFn,
    Next,
    StepContext,
    StepFn,
    TaskError,
    TaskView,
    agent_object,
    parse_input,
    split_budget,
)
from app.runtime.machine import Gate, Machine
from app.runtime.refusals import RefusedStart, forget_refused_start

__all__ = [
    "Agent",
    "ApprovalRequest",
    "Budget",
    "Gate",
    "LlmTask",
    "Machine",
    "Next",
    "StepContext",
    "TaskError",
    "TaskView",
]

InputT = TypeVar("InputT", bound=BaseModel)
# How long Restate answers a repeated status call (same Idempotency-Key) with the same answer.
STATUS_RETENTION = timedelta(minutes=1)
D = TypeVar("D", bound=BaseModel)


@dataclass(frozen=True)
class Agent(Generic[InputT, D]):
    """An agent, declared as data. Building it checks the declaration (a step per working state,
    an approval per gate) and generates its Restate virtual object."""

    machine: Machine
    description: str
    input_type: type[InputT]
    data_type: type[D]
    # The task's first data, from its validated input.
    start: Callable[[InputT], D]
    steps: Mapping[str, StepFn[D]]
    approvals: Mapping[str, ApprovalFn[D]] = field(default_factory=dict)
    # The tools its steps call. The tool service grants each agent its own toolset and refuses any
    # other tool; this list documents the agent's side of that contract.
    tools: frozenset[str] = frozenset()
    llm_tasks: tuple[LlmTask[Any, Any], ...] = ()
    # Default limits of each task (tokens, cost, tool calls, time); a task's input may lower them.
    # Any limit needs the machine's BUDGET gate (Machine.declare(budget_gate=True)) to stop at.
    budget: Budget = field(default_factory=Budget)
    engine: AgentEngine[D] = field(init=False, repr=False, compare=False)
    virtual_object: restate.VirtualObject = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        engine = AgentEngine(self.machine, self.data_type, self.steps, self.approvals, self.budget)
        object.__setattr__(self, "engine", engine)
        object.__setattr__(self, "virtual_object", _virtual_object(self))

    @property
    def name(self) -> str:
        return self.machine.name


def _virtual_object(agent: Agent[Any, Any]) -> restate.VirtualObject:
    """The agent's virtual object with its three public handlers (design.md's contract)."""
    obj = agent_object(agent.name, agent.description)
    engine = agent.engine

    def start_input(raw: bytes) -> tuple[Any, Budget | None]:
        """The run's input, validated, and the budget it asks for (`"budget"` beside the agent's own
        fields); bad input is a refused start (nothing written yet)."""
        try:
            own, budget = split_budget(raw)
            return parse_input(own, agent.input_type), budget
        except TerminalError as bad:
            raise RefusedStart(bad.message, status_code=bad.status_code) from None

    @obj.handler(input_serde=BytesSerde())
    async def run(ctx: ObjectContext, raw: bytes) -> TaskView:
        """Start (or resume) the task keyed by this object and drive it to a terminal state."""
        try:
            request, budget = start_input(raw)
            return await engine.start_or_resume(ctx, request, agent.start(request), budget)
        except RefusedStart as refused:
            # Refused before anything was written: not even its Idempotency-Key is kept.
            forget_refused_start(ctx, agent.name, refused)
            raise

    # A read that clients poll: nothing of it is worth keeping (Restate would keep each call's
    # answer and journal as long as the run's, days, under the key it gives a call without one).
    @obj.handler(kind="shared", journal_retention=timedelta(0), idempotency_retention=STATUS_RETENTION)
    async def status(ctx: ObjectSharedContext) -> TaskView:
        """Where the task is now, its history, its approvals and how it ended; works while `run` waits."""
        return await engine.status(ctx)

    @obj.handler(kind="shared", input_serde=BytesSerde())
    async def decide(ctx: ObjectSharedContext, raw: bytes) -> GateReply:
        """Approve or reject what the task waits on, with the approvals surface's proof (401 without
        it); 409 if it is not waiting or the hash is stale, 403 if the approver may not decide it."""
        return await decide_with_proof(ctx, agent.name, parse_input(raw, ProvenDecision))

    return obj
