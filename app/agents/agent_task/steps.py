"""AgentTask's step functions and the approval content of its gate."""

from __future__ import annotations

from restate import TerminalError

from app.agent import ApprovalRequest, Next, StepContext, TaskError
from app.agents.agent_task.llm import ANALYZE, PLAN, VERIFY
from app.agents.agent_task.models import (
    AgentTaskData,
    AnalyzeInput,
    Attempt,
    ExecutedCall,
    PlanInput,
    ReplanPolicy,
    UserContext,
    VerifyInput,
)
from app.gates.waiting import GATE_TOOLS
from app.runtime.engine import READ_RUN_OPTIONS
from app.runtime.tool_client import ToolCatalog, fetch_catalog
from app.settings import get_settings


async def initial(step: StepContext[AgentTaskData]) -> Next:
    return Next(target="FETCH_CONTEXT")


async def fetch_context(step: StepContext[AgentTaskData]) -> Next:
    found = await step.call_tool("lookup_user_history", {"user_id": step.data.user_id})
    step.data.context = UserContext.model_validate(found.result)
    return Next(target="ANALYZE", note=f"{len(step.data.context.events)} history events")


async def analyze(step: StepContext[AgentTaskData]) -> Next:
    assert step.data.context is not None
    request = AnalyzeInput(task=step.data.task, context=step.data.context)
    step.data.analysis = await step.llm(ANALYZE, request)
    return Next(target="PLAN", note=step.data.analysis.intent)


async def plan(step: StepContext[AgentTaskData]) -> Next:
    assert step.data.context is not None and step.data.analysis is not None
    catalog = (
        await step.run("tool catalog", fetch_catalog, ToolCatalog, step.agent, options=READ_RUN_OPTIONS)
    ).without(GATE_TOOLS)
    request = PlanInput(
        task=step.data.task,
        context=step.data.context,
        analysis=step.data.analysis,
        tools=catalog.tools,
        earlier_attempts=step.data.attempts,
    )
    planned = await step.llm(PLAN, request)
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
    details = {
        "user_id": step.data.user_id,
        "task": step.data.task,
        "plan": step.data.plan.model_dump(mode="json"),
    }
    replanned = ""
    if step.data.attempts:
        # A new plan after a failed verification: the approver sees why the last one failed.
        last = step.data.attempts[-1].verification.reason
        replanned = f" Replanned ({len(step.data.attempts)}) after: {last[:200]}."
        details["replanned_after"] = [attempt.verification.reason for attempt in step.data.attempts]
    return ApprovalRequest(
        summary=(
            f"{step.data.user_id} asked: {step.data.task[:200]}. "
            f"Plan: {len(step.data.plan.steps)} tool call(s): {calls}; "
            f"with side effects: {', '.join(step.data.side_effect_tools)}.{replanned}"
        ),
        details=details,
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


async def read_replan_policy() -> ReplanPolicy:
    """Runs only inside a journaled step: a restart with other settings never changes a replan."""
    return ReplanPolicy(max_replans=get_settings().agent_max_replans)


async def verify(step: StepContext[AgentTaskData]) -> Next:
    assert step.data.plan is not None
    request = VerifyInput(task=step.data.task, plan=step.data.plan, results=step.data.executed)
    verdict = await step.llm(VERIFY, request)
    step.data.verification = verdict
    if not verdict.success:
        policy = await step.run("replan policy", read_replan_policy, ReplanPolicy)
        if len(step.data.attempts) < policy.max_replans:
            # Back to PLAN with what went wrong: the new plan gets fresh keys (a new visit) and,
            # if it acts on the world, its own approval.
            step.data.attempts.append(
                Attempt(plan=step.data.plan, executed=step.data.executed, verification=verdict)
            )
            step.data.plan, step.data.executed, step.data.side_effect_tools = None, [], []
            replan = f"replan {len(step.data.attempts)} of {policy.max_replans}"
            return Next(target="PLAN", note=f"{replan}: {verdict.reason}")
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
