"""AgentTask's three LLM tasks, declared once each: typed input and output, prompts, offline rules."""

from __future__ import annotations

import json
from typing import Any

from app.agents.agent_task import offline
from app.agents.agent_task.models import (
    Analysis,
    AnalyzeInput,
    ExecutedCall,
    Plan,
    PlanInput,
    UserContext,
    Verification,
    VerifyInput,
)
from app.llm import LlmTask, UnknownToolError
from app.llm.prompting import inline_refs, section

# Prompt-size guards: the most recent history events kept, and the size of one tool result.
MAX_HISTORY_EVENTS = 20
MAX_RESULT_CHARS = 4000


def _context_data(context: UserContext) -> dict[str, Any]:
    events = context.events[-MAX_HISTORY_EVENTS:]
    return {"user_id": context.user_id, "recent_events": [event.model_dump() for event in events]}


def _result_data(call: ExecutedCall) -> dict[str, Any]:
    result_text = json.dumps(call.result, ensure_ascii=False, sort_keys=True, default=str)
    result: Any = call.result
    if len(result_text) > MAX_RESULT_CHARS:
        result = {"truncated_result": result_text[:MAX_RESULT_CHARS]}
    return {"tool": call.tool, "args": call.args, "result": result}


def _analyze_prompt(request: AnalyzeInput) -> str:
    return "\n\n".join(
        [
            "Analyse this request.",
            section("task", request.task),
            section("user_context", _context_data(request.context)),
            "Call submit_analysis with your analysis.",
        ]
    )


def _plan_prompt(request: PlanInput) -> str:
    tools = [
        {
            "name": tool.name,
            "description": tool.description,
            "side_effects": tool.side_effects,
            "args_schema": tool.args_schema,
        }
        for tool in request.tools
    ]
    return "\n\n".join(
        [
            "Plan the tool calls for this request.",
            section("task", request.task),
            section("user_context", _context_data(request.context)),
            section("analysis", request.analysis.model_dump()),
            section("tools", tools),
            *_earlier(request),
            "Call submit_plan with the plan (at most 10 steps, executed in order).",
        ]
    )


def _earlier(request: PlanInput) -> list[str]:
    """Plans already executed that failed verification, and why: the new plan must do better."""
    if not request.earlier_attempts:
        return []
    attempts = [
        {
            "plan": attempt.plan.model_dump(),
            "results": [_result_data(call) for call in attempt.executed],
            "why_it_failed": attempt.verification.reason,
        }
        for attempt in request.earlier_attempts
    ]
    return [
        "These earlier plans were executed and did not accomplish the task:",
        section("earlier_attempts", attempts),
    ]


def _plan_schema(request: PlanInput) -> dict[str, Any]:
    """`Plan`'s schema, with each step's `tool` restricted to the tools offered, if any."""
    schema = inline_refs(Plan.model_json_schema())
    names = sorted({tool.name for tool in request.tools})
    if names:
        schema["properties"]["steps"]["items"]["properties"]["tool"]["enum"] = names
    return schema


def _plan_names_offered_tools(request: PlanInput, plan: Plan) -> None:
    unknown = sorted({step.tool for step in plan.steps} - {tool.name for tool in request.tools})
    if unknown:
        raise UnknownToolError(f"the plan names tools that are not in the catalog: {unknown}")


def _verify_prompt(request: VerifyInput) -> str:
    return "\n\n".join(
        [
            "Verify whether this request was accomplished.",
            section("task", request.task),
            section("plan", request.plan.model_dump()),
            section("results", [_result_data(call) for call in request.results]),
            "Call submit_verification with your verdict.",
        ]
    )


ANALYZE: LlmTask[AnalyzeInput, Analysis] = LlmTask(
    name="analyze",
    input_type=AnalyzeInput,
    output_type=Analysis,
    tool="submit_analysis",
    description="Submit the analysis of the user's request.",
    instructions=(
        "You are the ANALYZE step of an operations agent. Read the user's task and context and "
        "state, briefly, what the user wants, a short snake_case intent label, and what could go "
        "wrong if the agent acts on it."
    ),
    prompt=_analyze_prompt,
    offline=offline.analyze,
)

PLAN: LlmTask[PlanInput, Plan] = LlmTask(
    name="plan",
    input_type=PlanInput,
    output_type=Plan,
    tool="submit_plan",
    description="Submit the plan: the ordered tool calls that accomplish the task.",
    instructions=(
        "You are the PLAN step of an operations agent. Choose the smallest sequence of tool calls, "
        "from the catalog given in <tools>, that accomplishes the user's task; use only tool names "
        "from the catalog and arguments that satisfy each tool's args_schema. Tools with "
        "side_effects true change the world, so plan them only when the task asks for that change. "
        "If no tool serves the task, return an empty list of steps."
    ),
    prompt=_plan_prompt,
    offline=offline.plan,
    schema=_plan_schema,
    check=_plan_names_offered_tools,
)

VERIFY: LlmTask[VerifyInput, Verification] = LlmTask(
    name="verify",
    input_type=VerifyInput,
    output_type=Verification,
    tool="submit_verification",
    description="Submit whether the executed calls accomplish the task, and why.",
    instructions=(
        "You are the VERIFY step of an operations agent. Decide whether the executed tool calls and "
        "their results accomplish the user's task. success is true only if they do; an empty plan "
        "or a missing or failed result means they do not. Give the reason in one or two sentences."
    ),
    prompt=_verify_prompt,
    offline=offline.verify,
)
