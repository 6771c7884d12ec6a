"""`AgentTask`: the generic agent of the article as a declared machine in a Restate virtual object.

INITIAL -> FETCH_CONTEXT -> ANALYZE -> PLAN -> [WAIT_APPROVAL] -> EXECUTE -> VERIFY -> COMPLETE |
FAILED, one task per object key. A plan that calls any tool with side effects stops at the
WAIT_APPROVAL gate until a human approves exactly that plan; a read-only plan goes straight on.
Each state's LLM call or tool call is one journaled step with a stable name, so a crashed worker
resumes at the exact step and never repeats a finished call.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field
from restate import ObjectContext, ObjectSharedContext, TerminalError
from restate.serde import BytesSerde

from app.approvals.deciding import decide_with_proof
from app.approvals.models import ApprovalRequest, GateReply, ProvenDecision
from app.approvals.waiting import GATE_TOOLS
from app.engine import (
    READ_RUN_OPTIONS,
    AgentEngine,
    Next,
    StepContext,
    TaskError,
    TaskView,
    agent_object,
    parse_input,
)
from app.llm import build_model
from app.llm.port import (
    Analysis,
    AnalyzeInput,
    ExecutedCall,
    LanguageModel,
    Plan,
    PlanInput,
    UserContext,
    Verification,
    VerifyInput,
)
from app.machine import Gate, Machine
from app.settings import get_settings
from app.tool_client import ToolCatalog, fetch_catalog

AGENT_TASK = Machine.declare(
    "AgentTask",
    initial="INITIAL",
    transitions={
        "INITIAL": ["FETCH_CONTEXT", "FAILED"],
        "FETCH_CONTEXT": ["ANALYZE", "FAILED"],
        "ANALYZE": ["PLAN", "FAILED"],
        "PLAN": ["WAIT_APPROVAL", "EXECUTE", "FAILED"],
        "WAIT_APPROVAL": ["EXECUTE", "FAILED"],
        "EXECUTE": ["VERIFY", "FAILED"],
        "VERIFY": ["COMPLETE", "FAILED"],
    },
    terminal=["COMPLETE", "FAILED"],
    failure="FAILED",
    gates={"WAIT_APPROVAL": Gate(approve="EXECUTE", reject="FAILED", timeout="FAILED")},
    descriptions={
        "FETCH_CONTEXT": "tool: user history",
        "ANALYZE": "LLM",
        "PLAN": "LLM: typed tool calls",
        "EXECUTE": "tools, idempotent",
        "VERIFY": "LLM: success, reason",
    },
)


class RunAgentTask(BaseModel):
    """The `run` handler's input."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    user_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.@:-]+$")
    task: str = Field(min_length=1, max_length=4000)


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


@lru_cache(maxsize=1)
def _model() -> LanguageModel:
    return build_model(get_settings())


async def initial(step: StepContext[AgentTaskData]) -> Next:
    return Next(target="FETCH_CONTEXT")


async def fetch_context(step: StepContext[AgentTaskData]) -> Next:
    found = await step.call_tool("lookup_user_history", {"user_id": step.data.user_id})
    step.data.context = UserContext.model_validate(found.result)
    return Next(target="ANALYZE", note=f"{len(step.data.context.events)} history events")


async def analyze(step: StepContext[AgentTaskData]) -> Next:
    assert step.data.context is not None
    request = AnalyzeInput(task=step.data.task, context=step.data.context)
    step.data.analysis = await step.run("llm analyze", _model().analyze, Analysis, request)
    return Next(target="PLAN", note=step.data.analysis.intent)


async def plan(step: StepContext[AgentTaskData]) -> Next:
    assert step.data.context is not None and step.data.analysis is not None
    catalog = (
        await step.run("tool catalog", fetch_catalog, ToolCatalog, step.agent, options=READ_RUN_OPTIONS)
    ).without(GATE_TOOLS)
    request = PlanInput(
        task=step.data.task, context=step.data.context, analysis=step.data.analysis, tools=catalog.tools
    )
    planned = await step.run("llm plan", _model().plan, Plan, request)
    unknown = sorted({call.tool for call in planned.steps} - catalog.names())
    if unknown:
        raise TerminalError(f"the plan names tools the tool service does not offer: {unknown}")
    step.data.plan = planned
    # The catalog says which tools act on the world; only those need a human's approval.
    step.data.side_effect_tools = sorted(
        {call.tool for call in planned.steps if (spec := catalog.get(call.tool)) and spec.side_effects}
    )
    if step.data.side_effect_tools:
        return Next(target="WAIT_APPROVAL", note=f"{len(planned.steps)} tool calls, approval needed")
    return Next(target="EXECUTE", note=f"{len(planned.steps)} tool calls, read-only")


def approval_of_plan(step: StepContext[AgentTaskData]) -> ApprovalRequest:
    """What the approver sees and approves: exactly the planned calls, arguments included."""
    assert step.data.plan is not None
    calls = ", ".join(call.tool for call in step.data.plan.steps)
    return ApprovalRequest(
        summary=(
            f"{step.data.user_id} asked: {step.data.task[:200]}. "
            f"Plan: {len(step.data.plan.steps)} tool call(s): {calls}; "
            f"with side effects: {', '.join(step.data.side_effect_tools)}."
        ),
        details={
            "user_id": step.data.user_id,
            "task": step.data.task,
            "plan": step.data.plan.model_dump(mode="json"),
        },
    )


async def execute(step: StepContext[AgentTaskData]) -> Next:
    assert step.data.plan is not None
    for call in step.data.plan.steps[len(step.data.executed) :]:
        done = await step.call_tool(call.tool, call.args)
        step.data.executed.append(
            ExecutedCall(
                tool=call.tool, args=call.args, result=done.result, idempotency_key=done.idempotency_key
            )
        )
    return Next(target="VERIFY")


async def verify(step: StepContext[AgentTaskData]) -> Next:
    assert step.data.plan is not None
    request = VerifyInput(task=step.data.task, plan=step.data.plan, results=step.data.executed)
    verdict = await step.run("llm verify", _model().verify, Verification, request)
    step.data.verification = verdict
    if not verdict.success:
        return Next(
            target="FAILED",
            error=TaskError(state="VERIFY", code="verification_failed", message=verdict.reason),
        )
    return Next(
        target="COMPLETE",
        result={
            "summary": step.data.analysis.summary if step.data.analysis else "",
            "tool_calls": len(step.data.executed),
            "verification": verdict.reason,
        },
    )


ENGINE = AgentEngine(
    AGENT_TASK,
    AgentTaskData,
    {
        "INITIAL": initial,
        "FETCH_CONTEXT": fetch_context,
        "ANALYZE": analyze,
        "PLAN": plan,
        "EXECUTE": execute,
        "VERIFY": verify,
    },
    approvals={"WAIT_APPROVAL": approval_of_plan},
)


agent_task = agent_object(
    "AgentTask", "The generic agent: fetch context, analyze, plan, execute idempotent tools, verify."
)


@agent_task.handler(input_serde=BytesSerde())
async def run(ctx: ObjectContext, raw: bytes) -> TaskView:
    """Start (or resume) the task keyed by this object and drive it to COMPLETE or FAILED."""
    request = parse_input(raw, RunAgentTask)
    data = AgentTaskData(user_id=request.user_id, task=request.task)
    return await ENGINE.start_or_resume(ctx, request, data, _model().name)


@agent_task.handler(kind="shared")
async def status(ctx: ObjectSharedContext) -> TaskView:
    """Where the task is now, its history and how it ended; works while `run` is busy."""
    return await ENGINE.status(ctx)


@agent_task.handler(kind="shared", input_serde=BytesSerde())
async def decide(ctx: ObjectSharedContext, raw: bytes) -> GateReply:
    """Approve or reject the plan this task waits on, with the approvals surface's proof (401 without
    it); 409 if it is not waiting or the hash is stale, 403 if the approver may not decide it."""
    return await decide_with_proof(ctx, AGENT_TASK.name, parse_input(raw, ProvenDecision))
