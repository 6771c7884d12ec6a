"""`AgentTask`: the article's generic agent, declared with the public API (app/agent.py).

INITIAL -> FETCH_CONTEXT -> ANALYZE -> PLAN -> [WAIT_APPROVAL] -> EXECUTE -> VERIFY -> COMPLETE |
FAILED, one task per object key. A plan that calls any tool with side effects stops at the
WAIT_APPROVAL gate until a human approves exactly that plan; a read-only plan goes straight on.
"""

from __future__ import annotations

from decimal import Decimal

from app.agent import Agent, Budget, Gate, Machine
from app.agents.agent_task import steps
from app.agents.agent_task.llm import ANALYZE, PLAN, VERIFY
from app.agents.agent_task.models import AgentTaskData, RunAgentTask

MACHINE = Machine.declare(
    "AgentTask",
    initial="INITIAL",
    transitions={
        "INITIAL": ["FETCH_CONTEXT", "FAILED"],
        "FETCH_CONTEXT": ["ANALYZE", "FAILED"],
        "ANALYZE": ["PLAN", "FAILED"],
        "PLAN": ["WAIT_APPROVAL", "EXECUTE", "FAILED"],
        "WAIT_APPROVAL": ["EXECUTE", "FAILED"],
        "EXECUTE": ["VERIFY", "FAILED"],
        # A failed verification replans, at most AGENT_MAX_REPLANS times, then fails.
        "VERIFY": ["COMPLETE", "PLAN", "FAILED"],
    },
    terminal=["COMPLETE", "FAILED"],
    failure="FAILED",
    gates={"WAIT_APPROVAL": Gate(approve="EXECUTE", reject="FAILED", timeout="FAILED")},
    budget_gate=True,
    descriptions={
        "FETCH_CONTEXT": "tool: user history",
        "ANALYZE": "LLM",
        "PLAN": "LLM: typed tool calls",
        "EXECUTE": "tools, idempotent",
        "VERIFY": "LLM: success, reason; replans on failure",
    },
)

AGENT = Agent(
    machine=MACHINE,
    description="The generic agent: fetch context, analyze, plan, execute idempotent tools, verify.",
    input_type=RunAgentTask,
    data_type=AgentTaskData,
    start=lambda request: AgentTaskData(user_id=request.user_id, task=request.task),
    steps={
        "INITIAL": steps.initial,
        "FETCH_CONTEXT": steps.fetch_context,
        "ANALYZE": steps.analyze,
        "PLAN": steps.plan,
        "EXECUTE": steps.execute,
        "VERIFY": steps.verify,
    },
    approvals={"WAIT_APPROVAL": steps.approval_of_plan},
    tools=frozenset({"lookup_user_history", "create_ticket", "send_notification", "add_user_note"}),
    # Every task's limits (its input may lower them): at a limit it waits at BUDGET for a human.
    budget=Budget(max_tokens=200_000, max_cost_usd=Decimal("2.00"), max_tool_calls=25),
    llm_tasks=(ANALYZE, PLAN, VERIFY),
)
